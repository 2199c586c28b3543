"""The docs cannot drift from the code: every shell command they show runs, or its options exist.

Commands that are quick and read-only run for real (`data check`, `models list`, `tools scan`, …). Those
that train, deploy or write run as `--help`, and every `--option` the docs write must be in that help.
The generated pages (troubleshooting, tools) must be current.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from conftest import ROOT
from dmforge.troubleshooting import refusals, troubleshooting_markdown

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
# Subcommands quick and harmless enough to run as the docs write them.
RUN_AS_WRITTEN = {("--help",), ("data", "check"), ("data", "preview"), ("models", "list"), ("versions",)}
RUN_AS_WRITTEN |= {("tools", "scan"), ("tools", "docs")}
GROUPS = {"data", "tools", "models"}
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def documented_commands() -> list[tuple[str, str]]:
    """(file, command line) for every line of every ```bash block in the README and docs/."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                command = line.split("  #")[0].strip()  # an aligned comment after the command
                if command and not command.startswith("#"):
                    found.append((doc.relative_to(ROOT).as_posix(), command))
    return found


def run(argv: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@cache
def help_text(*argv: str) -> str:
    result = run([*argv, "--help"])
    assert result.returncode == 0, f"{' '.join(argv)} --help failed: {result.stderr}"
    return result.stdout


def _subcommand(words: list[str]) -> tuple[str, ...]:
    if not words:
        return ("--help",)
    if words[0] in GROUPS and len(words) > 1:
        return (words[0], words[1])
    return (words[0],)


def _check_options(line: str, help_output: str) -> None:
    for option in OPTION.findall(line):
        assert option in help_output, f"`{line}` uses {option}, which the command does not have"


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    files = {f for f, _ in COMMANDS}
    assert {"README.md", "docs/usage.md", "docs/integration.md", "docs/hardware.md"} <= files


@pytest.mark.parametrize(("doc", "line"), COMMANDS, ids=[f"{f}: {c}" for f, c in COMMANDS])
def test_every_documented_command_runs_or_has_its_options(doc, line):
    words = shlex.split(line)
    program, args = words[0], words[1:]
    if program == "./test.sh":  # the test runner itself: its arguments go to pytest
        assert os.access(ROOT / "test.sh", os.X_OK)
        _check_options(line, run([sys.executable, "-m", "pytest", "--help"]).stdout)
    elif program == "./train.sh":
        _check_options(line, help_text("bash", str(ROOT / "train.sh")))
    elif program == ".venv/bin/dmforge":
        sub = _subcommand([w for w in args if not w.startswith("-")][:2] if args[:1] != ["--help"] else [])
        placeholder = any(c in line for c in "<[|") or "--app" in line
        if sub in RUN_AS_WRITTEN and not placeholder:
            result = run([sys.executable, "-m", "dmforge", *args])
            assert result.returncode == 0, f"`{line}` failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            assert "Traceback" not in result.stderr
        else:
            _check_options(line, help_text(sys.executable, "-m", "dmforge", *sub))
    elif program == ".venv/bin/accelerate":
        if args[:1] == ["launch"]:  # `accelerate launch -m dmforge finetune ...`: dmforge's own options
            module = args.index("-m")
            _check_options(" ".join(args[module + 2 :]), help_text(sys.executable, "-m", "dmforge", args[module + 2]))
        else:
            help_text(str(BIN / "accelerate"), *args)
    elif program == ".venv/bin/python" and args and args[0].startswith("bench/"):
        _check_options(line, help_text(sys.executable, str(ROOT / args[0])))
    else:
        pytest.fail(f"{doc}: `{line}` is a command this test does not know how to check; teach it")


def test_npm_and_pnpm_run_train_is_the_pipeline():
    scripts = json.loads((ROOT / "package.json").read_text())["scripts"]
    assert scripts["train"] == "./train.sh"


def test_troubleshooting_lists_every_refusal_and_is_current():
    page = troubleshooting_markdown()
    assert (ROOT / "docs" / "troubleshooting.md").read_text() == page, (
        "docs/troubleshooting.md is stale: run `.venv/bin/python -m dmforge.troubleshooting`"
    )
    found = refusals()
    assert len(found) > 80
    assert all(" ".join(r.message.split()).replace("|", "\\|") in page for r in found)
    assert "`tool-unknown`" in page and "Exit codes" in page


def test_the_readme_links_every_guide():
    readme = (ROOT / "README.md").read_text()
    for guide in ("docs/usage.md", "docs/hardware.md", "docs/integration.md", "docs/troubleshooting.md"):
        assert f"({guide})" in readme, guide
