"""README's package listing is the tree, and no module outside backends/ branches on the profile."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "healthmate_features"


def _readme_tree() -> set[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```text\nhealthmate_features/\n(.*?)```", text, flags=re.S)
    assert block, "README has no ```text block listing healthmate_features/"
    paths, stack = set(), []
    for line in block.group(1).splitlines():
        name = line.strip().split()[0]
        depth = (len(line) - len(line.lstrip())) // 2 - 1
        del stack[depth:]
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
            paths.add("/".join([*stack, "__init__.py"]))
        else:
            paths.add("/".join([*stack, name]))
    return paths


def test_readme_lists_exactly_the_package_modules():
    actual = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}
    listed = _readme_tree()
    assert sorted(actual - listed) == [], "modules missing from README's layout block"
    assert sorted(listed - actual) == [], "README's layout block lists modules that do not exist"


def test_every_profile_has_exactly_one_backend():
    from healthmate_features.backends import BACKENDS
    from healthmate_features.config import PROFILES

    assert tuple(BACKENDS) == PROFILES


def test_no_module_outside_backends_branches_on_the_profile():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] == "backends":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(
                isinstance(side, ast.Attribute) and side.attr == "profile" for side in [node.left, *node.comparators]
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], "compare the profile only in backends/ (use backend_for(settings))"
