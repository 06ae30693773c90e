"""The README's tested code examples (marked `<!-- tested ... -->`) run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"<!-- tested[^>]*-->\n```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no tested python example"
    for code in blocks:
        scope = {}
        exec(compile(code, str(README), "exec"), scope)
    assert "loss" in scope and scope["loss"].requires_grad
