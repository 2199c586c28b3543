"""Every tool call the scenarios make, with its file and line: the input of `dmforge tools scan`, `add` and `docs`.

The corpus is read with the scenario parser itself (so a call is what training would see), but every
file is read even when it has errors: a file whose only error is an unknown tool is exactly the file a
new tool comes from.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dmforge.scenarios.check import find_files
from dmforge.scenarios.diagnostics import DiagnosticLog
from dmforge.scenarios.parser import parse_scenario
from dmforge.scenarios.reader import DEFAULT_MAX_FILE_BYTES, read_scenario_file
from dmforge.tools.registry import Registry, check_call
from dmforge.tools.syntax import ToolCall


@dataclass(frozen=True)
class CallUse:
    call: ToolCall
    file: str
    line: int

    @property
    def place(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class CorpusCalls:
    """The calls of a scenario corpus, by tool name, in file and line order."""

    files: int = 0
    uses: dict[str, list[CallUse]] = field(default_factory=dict)
    turns: Counter[str] = field(default_factory=Counter)  # DM turns that call each tool: its training examples

    def unregistered(self, registry: Registry) -> dict[str, list[CallUse]]:
        return {name: uses for name, uses in sorted(self.uses.items()) if name not in registry.tools}

    def misfits(self, registry: Registry) -> dict[str, list[tuple[CallUse, list[str]]]]:
        """For each registered tool, the uses its entry refuses, with why."""
        found: dict[str, list[tuple[CallUse, list[str]]]] = {}
        for name, uses in sorted(self.uses.items()):
            if name not in registry.tools:
                continue
            bad = [(use, problems) for use in uses if (problems := check_call(use.call, registry))]
            if bad:
                found[name] = bad
        return found


def scan_corpus(paths: list[Path], registry: Registry, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> CorpusCalls:
    """Every well-formed call in the DM turns of the scenario files under `paths`."""
    files, _ = find_files(paths)
    corpus = CorpusCalls(files=len(files))
    for file in files:
        text, _ = read_scenario_file(file.path, max_bytes)
        if text is None:  # unreadable: `dmforge data check` says why
            continue
        try:
            # Only the calls are wanted; the diagnostics (kept to a handful) are `data check`'s business.
            scenario, _ = parse_scenario(
                text, str(file.path), file.id, file.default_category, registry, DiagnosticLog(1)
            )
        except Exception:  # a parser bug is reported by `data check` as an internal error on this file
            continue
        for turn in scenario.dm_turns:
            corpus.turns.update({call.name for call in turn.calls})
            for call, line in zip(turn.calls, turn.call_lines, strict=True):
                corpus.uses.setdefault(call.name, []).append(CallUse(call, str(file.path), line))
    return corpus
