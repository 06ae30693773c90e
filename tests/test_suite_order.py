"""The suite's run order (tests/conftest.py): long modules first, every module kept whole."""

from types import SimpleNamespace

from tests.conftest import _long_first


def _item(nodeid, *marks):
    return SimpleNamespace(nodeid=nodeid, keywords=dict.fromkeys(marks, True))


def test_multiprocess_then_slow_modules_first_each_module_whole():
    items = [
        _item("tests/a.py::test_1"),
        _item("tests/b.py::test_1"),
        _item("tests/b.py::test_2", "slow"),  # one slow test moves its whole module
        _item("tests/c.py::test_1", "slow", "multiprocess"),
        _item("tests/a.py::test_2"),  # modules are contiguous after the sort, in first-seen order
        _item("tests/d.py::test_1[x]"),
        _item("tests/c.py::test_2"),
    ]
    _long_first(items)
    assert [it.nodeid for it in items] == [
        "tests/c.py::test_1", "tests/c.py::test_2",
        "tests/b.py::test_1", "tests/b.py::test_2",
        "tests/a.py::test_1", "tests/a.py::test_2",
        "tests/d.py::test_1[x]",
    ]
