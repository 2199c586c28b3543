"""Every problem dmforge can find in a scenario, with a stable code, a severity and a fix.

The catalog is the single place a code is defined: the reader only says *which* code fired
and fills in the details, so the wording of hints stays consistent and `docs/diagnostics.md`
can be checked against it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Rule:
    code: str
    severity: Severity
    summary: str
    hint: str


_RULES = [
    # Reading the file
    Rule(
        "file-unreadable",
        Severity.ERROR,
        "the file cannot be read",
        "Check that the path exists and that you have permission to read it.",
    ),
    Rule(
        "file-empty",
        Severity.ERROR,
        "the file is empty",
        "Write a scenario into it (see the example in the scenario format) or delete the file.",
    ),
    Rule(
        "file-not-utf8",
        Severity.ERROR,
        "the file is not valid UTF-8",
        "Re-save the file as UTF-8 (in most editors: Save As → Encoding → UTF-8).",
    ),
    Rule(
        "file-too-large",
        Severity.ERROR,
        "the file is larger than the size limit",
        "Split it into several scenarios, or raise `data.max_file_bytes` in your dmforge config.",
    ),
    Rule(
        "path-outside-scenarios",
        Severity.ERROR,
        "a symbolic link in the scenarios folder leads outside it; it was not read",
        "Copy the file into the scenarios folder instead of linking to it, or check the other folder by naming it.",
    ),
    # Header
    Rule(
        "header-missing-key",
        Severity.ERROR,
        "a required header key is missing",
        "Add a `Key: value` line before the first `## ` section.",
    ),
    Rule(
        "header-empty-value",
        Severity.ERROR,
        "a header key has no value",
        "Write a value after the colon, or remove the line if the key is optional.",
    ),
    Rule(
        "header-unknown-key",
        Severity.WARNING,
        "a header key dmforge does not know",
        "Known keys are Role, World, Location, Party, Category, Tags, Level and Notes; "
        "fix the spelling, or keep it as metadata and ignore this warning.",
    ),
    Rule(
        "header-duplicate-key",
        Severity.WARNING,
        "a header key is given twice",
        "Keep one of the lines; dmforge uses the last one.",
    ),
    Rule(
        "header-bad-role",
        Severity.ERROR,
        "the Role is not Dungeon Master",
        "dmforge trains a Dungeon Master model: write `Role: Dungeon Master`.",
    ),
    Rule(
        "header-bad-level",
        Severity.WARNING,
        "the Level is not a number from 1 to 20",
        "Write the party's level as a whole number, e.g. `Level: 3`.",
    ),
    Rule(
        "header-stray-text",
        Severity.WARNING,
        "text before the first section that is not a header line",
        "Move the text into a section, or turn it into a `Key: value` header line (e.g. `Notes: ...`).",
    ),
    Rule(
        "front-matter-invalid",
        Severity.ERROR,
        "the YAML front matter cannot be read",
        "Fix the YAML between the `---` lines: one `key: value` per line.",
    ),
    Rule(
        "front-matter-too-large",
        Severity.ERROR,
        "the YAML front matter is larger than the size limit",
        "Keep the front matter to the header keys (Role, World, Location, Party, ...); "
        "move long text into the scenario's sections.",
    ),
    Rule(
        "front-matter-unclosed",
        Severity.ERROR,
        "the YAML front matter has no closing `---`",
        "Add a line with `---` after the last header key.",
    ),
    # Sections and turn order
    Rule(
        "section-unknown",
        Severity.ERROR,
        "a `## ` heading that is not a known section",
        "Use one of SYSTEM, User, DM or TOOLCALL (or an alias such as Player, GM, Roll).",
    ),
    Rule(
        "section-too-many",
        Severity.ERROR,
        "a file with more sections than the limit",
        "One file is one scenario of a few dozen turns: split the file into several scenarios.",
    ),
    Rule(
        "section-empty",
        Severity.ERROR,
        "a section with no text",
        "Write the turn's text under the heading, or remove the heading.",
    ),
    Rule(
        "system-misplaced",
        Severity.ERROR,
        "the SYSTEM section comes after a turn",
        "Move the SYSTEM section above the first User or DM turn.",
    ),
    Rule("system-duplicate", Severity.ERROR, "more than one SYSTEM section", "Merge them into one SYSTEM section."),
    Rule(
        "turn-repeated",
        Severity.ERROR,
        "two turns of the same kind in a row",
        "Merge the two sections into one, or add the missing turn between them.",
    ),
    Rule(
        "turn-trailing-user",
        Severity.WARNING,
        "the file ends with a User turn, which is dropped",
        "Add the DM's reply after it, or delete the last User turn.",
    ),
    Rule(
        "scenario-no-dm-turn",
        Severity.ERROR,
        "the scenario has no DM turn",
        "Add at least one `## DM` section: the DM's replies are what the model learns.",
    ),
    # Tool calls in DM text
    Rule(
        "call-unclosed-bracket",
        Severity.ERROR,
        "a `[` with no matching `]` on the same line",
        "Close the bracket, e.g. `[roll: perception]`; a tool call must fit on one line.",
    ),
    Rule(
        "call-too-many",
        Severity.ERROR,
        "a DM turn with more square brackets than the limit",
        "A DM reply makes a few tool calls: split the turn, or remove the brackets that are not calls.",
    ),
    Rule(
        "call-malformed",
        Severity.ERROR,
        "bracketed text that starts like a tool call but does not parse",
        "Write `[name]` or `[name: positional, key=value]`: positional values first, then key=value pairs.",
    ),
    Rule(
        "call-not-a-call",
        Severity.WARNING,
        "bracketed text in a DM turn that is not a tool call",
        "The app reads every bracket in a DM reply as a tool call: reword it without square brackets, "
        "or write a real call such as `[roll: perception]`.",
    ),
    Rule(
        "tool-unknown",
        Severity.ERROR,
        "a tool name that is not in the tool registry",
        "Fix the name, or register the tool: `dmforge tools scan` proposes an entry from its uses and "
        "`dmforge tools add NAME` writes it into your registry.",
    ),
    Rule(
        "tool-bad-arguments",
        Severity.ERROR,
        "a tool call's arguments do not fit the registry",
        "Fix the argument as the message says; `dmforge data check --json` lists every place.",
    ),
    # TOOLCALL sections
    Rule(
        "toolcall-orphan",
        Severity.ERROR,
        "a TOOLCALL section that does not follow a DM turn with tool calls",
        "Put the TOOLCALL right after the DM turn that makes the calls, or remove it.",
    ),
    Rule(
        "toolcall-bad-line",
        Severity.ERROR,
        "a TOOLCALL line that is not `[call] => result`",
        "Write one line per call: the call exactly as the DM wrote it, `=>` (or `->`, `→`), the result.",
    ),
    Rule(
        "toolcall-mismatch",
        Severity.ERROR,
        "a TOOLCALL line names a different call than the DM made",
        "Copy the call exactly as the DM wrote it, in the same order as in the DM turn.",
    ),
    Rule(
        "toolcall-missing-result",
        Severity.ERROR,
        "a call in the DM turn has no result in the TOOLCALL section",
        "Add a `[call] => result` line for every call the DM turn makes, in order.",
    ),
    Rule(
        "toolcall-no-continuation",
        Severity.ERROR,
        "a TOOLCALL section that no DM turn follows",
        "Add a `## DM` section after it in which the DM uses the result.",
    ),
    # Dataset build
    Rule(
        "scenario-duplicate",
        Severity.WARNING,
        "the scenario is an exact duplicate of another file",
        "Delete one of the copies; dmforge keeps only the first.",
    ),
    Rule(
        "diagnostics-truncated",
        Severity.WARNING,
        "more diagnostics were found than are listed",
        "Fix the problems listed and check again to see the rest; the error and warning counts include them all.",
    ),
    Rule(
        "internal-error",
        Severity.ERROR,
        "dmforge failed on this file",
        "This is a bug in dmforge: please report it with the file attached. The other files were read.",
    ),
]

RULES: dict[str, Rule] = {rule.code: rule for rule in _RULES}


class Diagnostic(BaseModel):
    """One problem, located precisely enough that an editor can jump to it."""

    code: str
    severity: Severity
    file: str
    line: int
    message: str
    hint: str
    subject: str | None = None  # what the problem is about, for grouping (e.g. the unknown tool's name)

    def render(self) -> str:
        return f"{self.file}:{self.line}: {self.severity.value} [{self.code}] {self.message} — {self.hint}"


# Messages quote the file's own text; a quote of a megabyte-long line would make every report unreadable.
MAX_MESSAGE = 500
MAX_SUBJECT = 100
TRUNCATED = "diagnostics-truncated"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def diagnose(
    code: str, file: str | Path, line: int, message: str, hint: str | None = None, subject: str | None = None
) -> Diagnostic:
    """Build a diagnostic for a catalogued code; `hint` overrides the catalog's when it can be more exact."""
    rule = RULES[code]
    return Diagnostic(
        code=code,
        severity=rule.severity,
        file=str(file),
        line=max(line, 1),
        message=_clip(message, MAX_MESSAGE),
        hint=_clip(hint or rule.hint, MAX_MESSAGE),
        subject=None if subject is None else _clip(subject, MAX_SUBJECT),
    )


def count(diagnostics: list[Diagnostic], severity: Severity) -> int:
    """How many problems of `severity` are listed; a truncation summary stands for others and is not one."""
    return sum(1 for d in diagnostics if d.severity is severity and d.code != TRUNCATED)


class DiagnosticLog:
    """The diagnostics of one file, or of one run, as they are found; at most `limit` of them are kept.

    A megabyte of broken lines can hold half a million problems: listing them all helps no one and
    costs memory, so past the limit a diagnostic is only counted by code (and, through `add`, never
    even built). Errors are kept before warnings so that a file with an error still shows one, and
    `seen` counts everything so that the error and warning totals stay exact.

    `caps` can keep fewer of one severity while the log fills: a file checked when the run's list is
    already full of warnings need not build any.
    """

    def __init__(self, limit: int | None = None, caps: dict[Severity, int] | None = None) -> None:
        self.limit = limit
        self.seen: Counter[Severity] = Counter()  # every problem found, kept or not
        self.cut: Counter[str] = Counter()  # problems found but not kept, by code
        self.first_cut_line: int | None = None
        self._kept: dict[Severity, list[tuple[int, Diagnostic]]] = {Severity.ERROR: [], Severity.WARNING: []}
        self._caps: dict[Severity, int | None] = {s: (caps or {}).get(s, limit) for s in Severity}
        self._order = 0

    def _has_room(self, severity: Severity) -> bool:
        cap = self._caps[severity]
        return cap is None or len(self._kept[severity]) < cap

    def _count_cut(self, code: str, line: int) -> None:
        self.cut[code] += 1
        if self.first_cut_line is None or line < self.first_cut_line:
            self.first_cut_line = max(line, 1)

    def room(self, severity: Severity) -> int | None:
        """How many more diagnostics of `severity` could still be listed (None: any number)."""
        if self.limit is None:
            return None
        errors = len(self._kept[Severity.ERROR])
        if severity is Severity.ERROR:
            return max(self.limit - errors, 0)
        # Errors come first in the end, so a warning is listed only below the errors and warnings so far.
        return max(self.limit - errors - len(self._kept[Severity.WARNING]), 0)

    def append(self, diagnostic: Diagnostic) -> None:
        summary = diagnostic.code == TRUNCATED  # stands for others: neither counted nor itself counted as cut
        if not summary:
            self.seen[diagnostic.severity] += 1
        if self._has_room(diagnostic.severity):
            self._kept[diagnostic.severity].append((self._order, diagnostic))
            self._order += 1
        elif not summary:
            self._count_cut(diagnostic.code, diagnostic.line)

    def add(
        self, code: str, file: str | Path, line: int, message: str, hint: str | None = None, subject: str | None = None
    ) -> None:
        """`append(diagnose(...))`, without building the diagnostic when it would not be kept."""
        severity = RULES[code].severity
        cap = self._caps[severity]
        if cap is None or len(self._kept[severity]) < cap:
            self.append(diagnose(code, file, line, message, hint, subject))
            return
        # The hot path of a file with a million broken lines: count, and nothing else (inlined).
        self.seen[severity] += 1
        self.cut[code] += 1
        if self.first_cut_line is None or line < self.first_cut_line:
            self.first_cut_line = max(line, 1)

    def kept(self) -> list[Diagnostic]:
        """The diagnostics to list, in the order found: every kept error, then warnings up to the limit."""
        errors, warnings = self._kept[Severity.ERROR], self._kept[Severity.WARNING]
        if self.limit is not None and len(errors) + len(warnings) > self.limit:
            room = max(self.limit - len(errors), 0)
            for _, d in warnings[room:]:
                if d.code != TRUNCATED:
                    self._count_cut(d.code, d.line)
            warnings = warnings[:room]
            self._kept[Severity.WARNING] = warnings
        return [d for _, d in sorted(errors + warnings, key=lambda pair: pair[0])]

    def has_errors(self) -> bool:
        return self.seen[Severity.ERROR] > 0


def cut_summary(cut: Counter[str], limit: str) -> str:
    """`12,000 header-stray-text, 3 call-malformed`: what a truncation summary says was cut."""
    total = sum(cut.values())
    codes = ", ".join(f"{n:,} {code}" for code, n in cut.most_common())
    return f"{total:,} more diagnostic(s) were found but are not listed ({limit}): {codes}"


def cut_counts(cut: Counter[str], severity: Severity) -> int:
    """How many of the problems that were cut have `severity`."""
    return sum(n for code, n in cut.items() if code != TRUNCATED and RULES[code].severity is severity)
