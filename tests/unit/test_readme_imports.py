"""Every import in README's Python examples works (the examples themselves need a built repo)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_import_in_the_readme_python_blocks_resolves():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    blocks += re.findall(r"<<'PY'\n(.*?)\nPY", README.read_text(), flags=re.S)
    imports = [
        ast.unparse(node)
        for block in blocks
        for node in ast.walk(ast.parse(block))
        if isinstance(node, (ast.Import, ast.ImportFrom))
    ]
    assert any("healthmate_features" in line for line in imports)
    for line in imports:
        exec(line, {})  # noqa: S102  (our own README's import lines)
