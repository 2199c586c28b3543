"""docs/troubleshooting.md, generated from the code itself so that it cannot drift from what dmforge says.

Two lists exist in the code already: the scenario checker's rules (scenarios/diagnostics.py: a code, a
severity, what it means and how to fix it) and every refusal, a `raise DmforgeError(...)` whose message
says the cause and the fix in one paragraph (the project's rule for errors). The refusals are read from
the source with `ast`, so a new one appears in the guide the day it is written: the parts of a message
filled in at run time are shown as `‹name›`.

    python -m dmforge.troubleshooting            # rewrite docs/troubleshooting.md
    python -m dmforge.troubleshooting --check    # exit 1 when the committed file is stale
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

from dmforge.scenarios.diagnostics import RULES

PACKAGE = Path(__file__).parent
DOC = Path("docs") / "troubleshooting.md"
# The pipeline's stages, in the order a run meets them, and the folders their refusals live in.
STAGES = {
    "config.py": "Configuration",
    "models": "Base models and hardware",
    "scenarios": "Scenarios",
    "tools": "Tools and the tool registry",
    "dataset": "Building the dataset",
    "training": "Training",
    "export": "GGUF export and verification",
    "evaluation": "Evaluation and playtest",
    "registry": "Versions and the quality gate",
    "deploy": "Deploying into the app",
}
GENERAL = "Files, locks and interruptions"


@dataclass(frozen=True)
class Refusal:
    stage: str
    where: str  # module:function
    message: str
    exit_code: int


def _template(node: ast.expr) -> str | None:
    """The message with run-time parts as ‹name›; None when it is not built from literals in place."""
    match node:
        case ast.Constant(value=str() as text):
            return text
        case ast.JoinedStr(values=parts):
            out = []
            for part in parts:
                if isinstance(part, ast.Constant):
                    out.append(str(part.value))
                elif isinstance(part, ast.FormattedValue):
                    out.append(f"‹{_label(part.value)}›")
            return "".join(out)
        case ast.BinOp(left=left, op=ast.Add(), right=right):
            a, b = _template(left), _template(right)
            return None if a is None and b is None else (a or "‹…›") + (b or "‹…›")
        case ast.IfExp(body=body, orelse=orelse):  # the first branch stands for both
            return _template(body) or _template(orelse)
    return None


def _label(node: ast.expr) -> str:
    """A short name for a run-time value: `run_dir`, `path.name`, `exc`; calls and expressions become `…`."""
    text = ast.unparse(node)
    if len(text) <= 30 and all(c.isalnum() or c in "._" for c in text):
        return text
    return "…"


def _stage(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return STAGES.get(relative.parts[0], GENERAL)


def refusals(package: Path = PACKAGE) -> list[Refusal]:
    """Every `raise DmforgeError(...)` in dmforge, with its message template and exit code."""
    found: list[Refusal] = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text("utf-8"))
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        owner = {id(child): f.name for f in functions for child in ast.walk(f)}
        for node in sorted(ast.walk(tree), key=lambda n: getattr(n, "lineno", 0)):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            call = node.exc
            if not (isinstance(call.func, ast.Name) and call.func.id == "DmforgeError") or not call.args:
                continue
            message = _template(call.args[0])
            if message is None:  # a message passed through (e.g. a check's own sentence): documented where made
                continue
            code = next((k.value for k in call.keywords if k.arg == "exit_code"), None)
            exit_code = code.value if isinstance(code, ast.Constant) else 1
            module = path.relative_to(package.parent).with_suffix("").as_posix().replace("/", ".")
            found.append(Refusal(_stage(path), f"{module}:{owner.get(id(node), '<module>')}", message, exit_code))
    return found


def troubleshooting_markdown() -> str:
    lines = [
        "# Troubleshooting",
        "",
        "Generated from dmforge's own code by `python -m dmforge.troubleshooting`; a test fails when it is stale.",
        "Every problem dmforge can name is here: first the scenario checker's diagnostics, then every refusal,",
        "stage by stage, with the message dmforge prints. Each message says what went wrong and what to do;",
        "`‹name›` marks a part filled in when it happens (a path, a number, a tool's name).",
        "",
        "Exit codes: 0 success; 1 a problem in your data or files; 2 a usage problem (a path, an option); 3 the",
        "quality gate kept the app's current version; 130 interrupted (Ctrl-C). dmforge never prints a",
        "traceback for these: if you ever see one, it is a bug in dmforge, and the message says where its log is.",
        "",
        "## Scenario diagnostics",
        "",
        "`dmforge data check` (and the first stage of `./train.sh`) reports these with the file and line.",
        "Errors stop the pipeline; warnings do not.",
        "",
        "| code | severity | what it means | how to fix it |",
        "|---|---|---|---|",
    ]
    for rule in RULES.values():
        lines.append(f"| `{rule.code}` | {rule.severity.value} | {rule.summary} | {rule.hint} |")
    by_stage: dict[str, list[Refusal]] = {}
    for refusal in refusals():
        by_stage.setdefault(refusal.stage, []).append(refusal)
    order = [*STAGES.values(), GENERAL]
    for stage in sorted(by_stage, key=order.index):
        lines += ["", f"## {stage}", ""]
        for refusal in by_stage[stage]:
            message = " ".join(refusal.message.split()).replace("|", "\\|")
            lines += [f"- {message}  ", f"  <sub>exit {refusal.exit_code} · `{refusal.where}`</sub>"]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    text = troubleshooting_markdown()
    if "--check" in argv:
        current = DOC.read_text("utf-8") if DOC.is_file() else None
        if current != text:
            print(f"{DOC} is stale: run `python -m dmforge.troubleshooting`")
            return 1
        return 0
    from dmforge.files import write_text

    write_text(DOC, text)
    print(f"Wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
