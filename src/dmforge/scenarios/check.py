"""Check a set of scenario files and folders: read each one alone, then report on all of them.

One broken file never stops the others: each file is read in isolation, and even a bug in
dmforge becomes a diagnostic on that file rather than a crash.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dmforge.errors import DmforgeError
from dmforge.scenarios.diagnostics import (
    TRUNCATED,
    Diagnostic,
    DiagnosticLog,
    Severity,
    count,
    cut_counts,
    cut_summary,
    diagnose,
)
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


MAX_DIAGNOSTICS_PER_FILE = 50  # a broken file's first fifty problems say what is wrong with it
MAX_DIAGNOSTICS_PER_RUN = 2000  # a few hundred broken files, listed in a report of about a megabyte


def _is_scenario(name: str) -> bool:
    # README.md is documentation for the folder; only Markdown files are scenarios.
    return name.endswith(".md") and name.lower() != "readme.md"


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _walk(root: Path) -> tuple[list[Path], list[Diagnostic]]:
    """The scenario files under `root`, and a diagnostic for each symbolic link that was not followed.

    A link is never followed into a folder: a link to a folder inside `root` would read its files twice
    (and a link to an ancestor, forever), and one to a folder outside would read files that are not
    scenarios and quote them in diagnostics. A link to a file inside `root` is read like the file.
    """
    real_root = root.resolve()
    files: list[Path] = []
    refused: list[Diagnostic] = []
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            refused.append(diagnose("file-unreadable", folder, 1, f"cannot list the folder: {exc.strerror or exc}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):  # editor or VCS state
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                try:
                    target = path.resolve(strict=True)
                except (OSError, RuntimeError):  # a missing target, or a loop of links
                    if _is_scenario(entry.name):
                        refused.append(
                            diagnose(
                                "file-unreadable",
                                path,
                                1,
                                "the symbolic link leads nowhere (a loop or a missing target)",
                            )
                        )
                    continue
                if not _inside(target, real_root):
                    if target.is_dir() or _is_scenario(entry.name):
                        what = "folder" if target.is_dir() else "file"
                        refused.append(
                            diagnose(
                                "path-outside-scenarios",
                                path,
                                1,
                                f"this {what} is a symbolic link to a place outside {root}; it was not read",
                            )
                        )
                    continue
                if target.is_file() and _is_scenario(entry.name):
                    files.append(path)
                continue  # a linked folder inside the root: its files are read where they really are
            if entry.is_dir(follow_symlinks=False):
                folders.append(path)
            elif entry.is_file(follow_symlinks=False) and _is_scenario(entry.name):
                files.append(path)
    return sorted(files), sorted(refused, key=lambda d: d.file)


def find_files(paths: list[Path]) -> tuple[list[ScenarioFile], list[Diagnostic]]:
    """Expand folders into their `.md` files, sorted so that every run reads them in the same order,
    and report the symbolic links that lead out of a folder (their content is never read)."""
    found: list[ScenarioFile] = []
    refused: list[Diagnostic] = []
    for path in paths:
        if path.is_dir():
            files, links = _walk(path)
            found += [ScenarioFile(p, path) for p in files]
            refused += links
        elif path.is_file():
            # A file named alone is read as given (even through a link: naming it is consent), as if its
            # folder's parent were the scenarios root, so `combat/x.md` gets the same category as when
            # its whole folder is checked.
            found.append(ScenarioFile(path, path.parent.parent if path.parent != path.parent.parent else path.parent))
        else:
            raise DmforgeError(
                f"{path} does not exist. Pass a scenario file or a folder of them "
                "(the sample corpus is data/scenarios).",
                exit_code=2,
            )
    return found, refused


def collect_files(paths: list[Path]) -> list[ScenarioFile]:
    """The scenario files in `paths` (see `find_files`)."""
    return find_files(paths)[0]


@dataclass
class CheckReport:
    files: int = 0
    scenarios: list[Scenario] = field(default_factory=list)  # parsed without errors, duplicates removed
    diagnostics: list[Diagnostic] = field(default_factory=list)  # at most MAX_DIAGNOSTICS_PER_RUN, and summaries
    cut: Counter[str] = field(default_factory=Counter)  # problems found but not listed, by code

    @property
    def errors(self) -> int:
        """Every error found, listed or not: the verdict and the exit code depend on it."""
        return count(self.diagnostics, Severity.ERROR) + cut_counts(self.cut, Severity.ERROR)

    @property
    def warnings(self) -> int:
        return count(self.diagnostics, Severity.WARNING) + cut_counts(self.cut, Severity.WARNING)

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
            "diagnostics_not_listed": dict(sorted(self.cut.items())),
        }


def check_file(
    file: ScenarioFile,
    registry: Registry,
    max_bytes: int,
    limit: int | None = MAX_DIAGNOSTICS_PER_FILE,
    caps: dict[Severity, int] | None = None,
) -> tuple[Scenario | None, list[Diagnostic], Counter[str]]:
    """The scenario (None when it has errors), the diagnostics to list, and what was found but not listed.

    At most `limit` diagnostics are listed (and at most `caps[severity]` of one severity), errors first,
    then one `diagnostics-truncated` summary.
    """
    text, diags = read_scenario_file(file.path, max_bytes)
    if text is None:
        return None, diags, Counter()
    log = DiagnosticLog(limit, caps)
    try:
        scenario, diags = parse_scenario(text, str(file.path), file.id, file.default_category, registry, log=log)
    except Exception as exc:
        return None, [diagnose("internal-error", file.path, 1, f"{type(exc).__name__}: {exc}")], Counter()
    if log.cut and (caps is None or caps.get(Severity.WARNING, 1) > 0):  # the summary is a warning
        diags.append(
            diagnose(
                TRUNCATED,
                file.path,
                log.first_cut_line or 1,
                cut_summary(log.cut, f"at most {limit} are listed per file"),
            )
        )
    return (None if log.has_errors() else scenario), diags, log.cut


def check_paths(
    paths: list[Path], registry: Registry | None = None, max_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> CheckReport:
    registry = registry or load_registry()
    files, refused = find_files(paths)
    report = CheckReport(files=len(files))
    # The run's list is capped as each file's is: errors are kept before warnings, and every problem is
    # still counted (report.cut), so a thousand broken files give a readable report and the right verdict.
    listed = DiagnosticLog(MAX_DIAGNOSTICS_PER_RUN)
    for d in refused:
        listed.append(d)
    seen: dict[str, Scenario] = {}
    for file in files:
        # What the run can no longer list, the file need not build: once a few hundred broken files
        # have filled the list, the next ones are only counted.
        caps = {s: min(MAX_DIAGNOSTICS_PER_FILE, listed.room(s) or 0) for s in Severity}  # room: never None here
        scenario, diags, cut = check_file(file, registry, max_bytes, caps=caps)
        report.cut.update(cut)
        for d in diags:
            listed.append(d)
        if scenario is None:
            continue
        if scenario.fingerprint in seen:
            first = seen[scenario.fingerprint]
            listed.append(diagnose("scenario-duplicate", file.path, 1, f"this file has the same text as {first.path}"))
            continue
        seen[scenario.fingerprint] = scenario
        report.scenarios.append(scenario)
    if not files and not refused:
        where = ", ".join(str(p) for p in paths)
        raise DmforgeError(
            f"No scenario files (*.md) were found in {where}. Put one Markdown scenario per file there, "
            "in a folder per category (e.g. combat/goblin-ambush.md).",
            exit_code=1,
        )
    report.diagnostics = listed.kept()
    if listed.cut:
        report.cut.update(listed.cut)
        report.diagnostics.append(
            diagnose(
                TRUNCATED,
                ", ".join(str(p) for p in paths),
                1,
                # Everything not listed, including what the files' own summaries stand for: those
                # summaries may themselves be among what the run's cap cut.
                cut_summary(
                    report.cut,
                    f"at most {MAX_DIAGNOSTICS_PER_FILE} per file and {MAX_DIAGNOSTICS_PER_RUN:,} per run are listed",
                )
                + "; check fewer files at a time to see them",
            )
        )
    return report
