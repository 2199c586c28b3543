"""The code's shape, as the README's layout promises it: short functions, and rooms that say what they are for.

A function over 80 lines hides a second idea; a package without a first sentence makes a newcomer read
its files to learn what it holds. Both drift silently unless something fails when they do.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "dmforge"
MAX_FUNCTION_LINES = 80


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_no_function_in_src_is_over_80_lines():
    long = [
        f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted(SRC.rglob("*.py"))
        for node in _functions(path)
        if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, "split these into named steps:\n" + "\n".join(long)


def test_every_package_says_what_it_is_for_in_its_first_sentence():
    packages = sorted(p for p in SRC.iterdir() if (p / "__init__.py").is_file())
    assert {p.name for p in packages} >= {
        "scenarios", "tools", "dataset", "contract", "models", "training",
        "evaluation", "export", "deploy", "registry", "cli",
    }  # fmt: skip
    for package in packages:
        docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text("utf-8")))
        assert docstring and docstring.split("\n\n")[0].rstrip().endswith((".", ":")), package.name
