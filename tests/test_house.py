"""House rules that a linter does not check: every function fits on one screen (80 lines at most)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 80
# the procedural scene drawing of the built-in data set reads best as one painting per function
EXEMPT = {"data/synthetic.py"}


def _long_functions(folder: Path) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        if path.relative_to(folder).as_posix() in EXEMPT:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = node.end_lineno - first + 1  # type: ignore[operator]
                if lines > MAX_LINES:
                    found.append(f"{path.relative_to(folder)}:{node.lineno} {node.name} is {lines} lines")
    return found


def test_every_function_in_the_package_is_at_most_80_lines():
    assert _long_functions(ROOT / "src" / "unetkit") == []


def test_the_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert _long_functions(tmp_path) == [f"m.py:5 long is {MAX_LINES + 1} lines"]
