"""The one-way data flow of ../shared/DESIGN.md, checked on the code: each room of `ipa` imports only
rooms to its left (plus `ipa.ops`, which imports nothing else of ipa but its kernels)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ipa"
# left to right: the foundations, then the pipeline's flow (prepare -> generate -> select -> train ->
# eval), then what drives it all
ROOMS = ["_C", "kernels", "ops", "hands", "models", "data", "generate", "select", "train", "eval", "demo",
         "bench", "cli"]


def _room(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _ipa_imports(path: Path):
    """(line, room) of every `ipa.<room>` this module imports, at module level or inside functions."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    package = ["ipa", *parts[:-1]]  # what a relative import is relative to
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [f"{module}.{a.name}" for a in node.names] if module == "ipa" else [module]
        else:
            continue
        for name in names:
            dotted = name.split(".")
            if dotted[0] == "ipa" and len(dotted) > 1:
                yield node.lineno, dotted[1]


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.stem in ROOMS)


def test_every_room_is_placed():
    assert {_room(p) for p in MODULES} <= set(ROOMS)


def test_imports_flow_one_way():
    wrong = []
    for path in MODULES:
        room = _room(path)
        for line, target in _ipa_imports(path):
            if target in (room, "ops", "__version__"):
                continue
            if target not in ROOMS or ROOMS.index(target) > ROOMS.index(room):
                wrong.append(f"ipa/{path.relative_to(PACKAGE)}:{line}: the {room!r} room imports ipa.{target}")
    assert not wrong, "imports against the one-way flow:\n" + "\n".join(wrong)
    assert len(MODULES) > 50  # the walk found the package


def test_the_kernels_folder_does_not_shadow_hugging_faces_kernels():
    """Run from the repo root (`python -m ...`, as CI and the README do), `kernels/` is importable as a
    top-level `kernels`: the name of Hugging Face's package, which transformers >= 5.25 imports (it
    then failed on every diffusers model import). The folder hands the name over when that is installed."""
    import subprocess
    import sys

    root = PACKAGE.parent
    code = ("import importlib.metadata as m, kernels\nprint(kernels.__file__)\n"
            "try:\n    m.version('kernels'); print('installed')\nexcept m.PackageNotFoundError:\n    print('absent')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found, hub = proc.stdout.split()
    if hub == "installed":
        assert Path(found).parent != root / "kernels", found
    else:  # nothing to hand over to: the folder itself, which is harmless
        assert Path(found) == root / "kernels" / "__init__.py"
