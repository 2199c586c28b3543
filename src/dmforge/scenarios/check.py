"""Check a set of scenario files and folders: read each one alone, then report on all of them.

One broken file never stops the others: each file is read in isolation, and even a bug in
dmforge becomes a diagnostic on that file rather than a crash.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dmforge.errors import DmforgeError
from dmforge.scenarios.diagnostics import Diagnostic, Severity, count, diagnose
from dmforge.scenarios.model import Scenario
from dmforge.scenarios.parser import parse_scenario
from dmforge.scenarios.reader import DEFAULT_MAX_FILE_BYTES, read_scenario_file
from dmforge.tools.registry import Registry, load_registry


@dataclass(frozen=True)
class ScenarioFile:
    path: Path
    root: Path  # the scenarios root: the default category is the first folder below it

    @property
    def id(self) -> str:
        return self.path.relative_to(self.root).as_posix()

    @property
    def default_category(self) -> str:
        parts = self.path.relative_to(self.root).parts
        return parts[0].lower() if len(parts) > 1 else "general"


def _is_scenario(path: Path, root: Path) -> bool:
    # README.md is documentation for the folder, and dot-folders are editor or VCS state.
    relative = path.relative_to(root).parts
    return path.name.lower() != "readme.md" and not any(p.startswith(".") for p in relative)


def collect_files(paths: list[Path]) -> list[ScenarioFile]:
    """Expand folders into their `.md` files, sorted so that every run reads them in the same order."""
    found: list[ScenarioFile] = []
    for path in paths:
        if path.is_dir():
            found += [
                ScenarioFile(p, path) for p in sorted(path.rglob("*.md")) if _is_scenario(p, path) and p.is_file()
            ]
        elif path.is_file():
            # A file named alone is read as if its folder's parent were the scenarios root,
            # so `combat/x.md` gets the same category as when its whole folder is checked.
            found.append(ScenarioFile(path, path.parent.parent if path.parent != path.parent.parent else path.parent))
        else:
            raise DmforgeError(
                f"{path} does not exist. Pass a scenario file or a folder of them "
                "(the sample corpus is data/scenarios).",
                exit_code=2,
            )
    return found


@dataclass
class CheckReport:
    files: int = 0
    scenarios: list[Scenario] = field(default_factory=list)  # parsed without errors, duplicates removed
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return count(self.diagnostics, Severity.ERROR)

    @property
    def warnings(self) -> int:
        return count(self.diagnostics, Severity.WARNING)

    @property
    def dm_turns(self) -> int:
        return sum(len(s.dm_turns) for s in self.scenarios)

    @property
    def tool_calls(self) -> int:
        return sum(len(s.calls) for s in self.scenarios)

    def calls_by_tool(self) -> dict[str, int]:
        return dict(sorted(Counter(c.name for s in self.scenarios for c in s.calls).items()))

    def scenarios_by_category(self) -> dict[str, int]:
        return dict(sorted(Counter(s.header.category for s in self.scenarios).items()))

    def unknown_tools(self) -> dict[str, list[str]]:
        """Each unregistered tool name with every `file:line` it occurs at, to add it or fix it in one go."""
        places: dict[str, list[str]] = {}
        for d in self.diagnostics:
            if d.code == "tool-unknown" and d.subject:
                places.setdefault(d.subject, []).append(f"{d.file}:{d.line}")
        return dict(sorted(places.items()))

    def to_json(self) -> dict:
        return {
            "files": self.files,
            "scenarios": len(self.scenarios),
            "dm_turns": self.dm_turns,
            "tool_calls": self.tool_calls,
            "errors": self.errors,
            "warnings": self.warnings,
            "tool_calls_by_tool": self.calls_by_tool(),
            "scenarios_by_category": self.scenarios_by_category(),
            "unknown_tools": self.unknown_tools(),
            "diagnostics": [d.model_dump(mode="json") for d in self.diagnostics],
        }


def check_file(file: ScenarioFile, registry: Registry, max_bytes: int) -> tuple[Scenario | None, list[Diagnostic]]:
    text, diags = read_scenario_file(file.path, max_bytes)
    if text is None:
        return None, diags
    try:
        scenario, diags = parse_scenario(text, str(file.path), file.id, file.default_category, registry)
    except Exception as exc:
        return None, [diagnose("internal-error", file.path, 1, f"{type(exc).__name__}: {exc}")]
    has_error = any(d.severity is Severity.ERROR for d in diags)
    return (None if has_error else scenario), diags


def check_paths(
    paths: list[Path], registry: Registry | None = None, max_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> CheckReport:
    registry = registry or load_registry()
    files = collect_files(paths)
    report = CheckReport(files=len(files))
    seen: dict[str, Scenario] = {}
    for file in files:
        scenario, diags = check_file(file, registry, max_bytes)
        report.diagnostics += diags
        if scenario is None:
            continue
        if scenario.fingerprint in seen:
            first = seen[scenario.fingerprint]
            report.diagnostics.append(
                diagnose("scenario-duplicate", file.path, 1, f"this file has the same text as {first.path}")
            )
            continue
        seen[scenario.fingerprint] = scenario
        report.scenarios.append(scenario)
    if not files:
        where = ", ".join(str(p) for p in paths)
        raise DmforgeError(
            f"No scenario files (*.md) were found in {where}. Put one Markdown scenario per file there, "
            "in a folder per category (e.g. combat/goblin-ambush.md).",
            exit_code=1,
        )
    return report
