"""Scenario text → `Scenario` plus every diagnostic, per `shared/spec/scenario-format.md`.

The parser never stops at the first problem: a game master fixing a file wants the whole
list at once. It is tolerant where intent is clear (header spellings, section aliases,
spacing) and precise where it is not.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass

import yaml

from dmforge.scenarios.diagnostics import Diagnostic, DiagnosticLog
from dmforge.scenarios.model import Header, Scenario, ToolResult, Turn, TurnKind
from dmforge.tools.registry import Registry, check_call
from dmforge.tools.syntax import NAME, BracketKind, CallSyntaxError, ToolCall, parse, scan_brackets

REQUIRED_KEYS = ("role", "world", "location", "party")
OPTIONAL_KEYS = ("category", "tags", "level", "notes", "title")
DM_ROLES = {"dungeon master", "dm", "gm", "game master"}

SYSTEM = "system"
SECTION_ALIASES: dict[str, str] = {
    "system": SYSTEM,
    "system prompt": SYSTEM,
    "user": TurnKind.USER,
    "player": TurnKind.USER,
    "players": TurnKind.USER,
    "dm": TurnKind.DM,
    "dungeon master": TurnKind.DM,
    "gm": TurnKind.DM,
    "assistant": TurnKind.DM,
    "narrator": TurnKind.DM,
    "toolcall": TurnKind.TOOLCALL,
    "tool": TurnKind.TOOLCALL,
    "tool call": TurnKind.TOOLCALL,
    "tool result": TurnKind.TOOLCALL,
    "roll": TurnKind.TOOLCALL,
}

# A plain header key: at most three words so that a sentence with a colon is not read as a key.
# Possessive quantifiers: a word never gives characters back, so a failed match costs one pass.
_PLAIN_KEY = re.compile(r"[A-Za-z][\w-]*+(?:[ \t]++[\w-]++){0,2}+")
_FENCE = re.compile(r"^\s*+(```|~~~)")
# The lines that can be a `## ` heading or a code fence, found in the whole text at once.
_CANDIDATE = re.compile(r"^(?:##|[^\S\n]*+(?:```|~~~))", re.MULTILINE)
_SPEAKER = re.compile(r"^(?P<name>[A-Z][\w' .-]{0,40}?):\s+\S")
_ARROWS = ("=>", "->", "→")
# Bounds that keep any input, however hostile, to about a second per megabyte. Each is far above what
# a real scenario holds (the sample corpus: at most 4 brackets in a DM turn, and no front matter at all;
# front matter holds the header keys, a few hundred bytes).
MAX_BRACKETS_PER_TURN = 100
MAX_SECTIONS = 1000  # the corpus's longest scenario has 22 turns; a small model's context holds far fewer
MAX_FRONT_MATTER_BYTES = 64 * 1024
MAX_FRONT_MATTER_DEPTH = 20  # header values are scalars or lists: depth 2
MAX_SUGGESTED = 64  # no misspelling of a short name is this long, and difflib is slow on long text


@dataclass
class _Section:
    name: str
    heading_line: int
    body: list[tuple[int, str]]  # (line number, text)

    @property
    def text(self) -> str:
        return "\n".join(text.rstrip() for _, text in self.body).strip("\n")

    @property
    def first_line(self) -> int:
        """The line of the first non-blank body line: what diagnostics inside the body count from."""
        return next((n for n, text in self.body if text.strip()), self.heading_line)


def _fold(text: str) -> str:
    return " ".join(text.split()).lower()


# The line matchers below were regular expressions whose nested `\s*` and lazy groups backtracked
# catastrophically (`## x` + 800 spaces + `y` took minutes). They are now string methods that look at
# each character a bounded number of times, and accept exactly the spellings the expressions did.


def _section_name(line: str) -> str | None:
    """`## Name`, `## Name:`, `## Name ##` → `Name`; None when the line is not a `## ` heading."""
    if not line.startswith("##") or line.startswith("###"):
        return None
    name = line[2:].strip().rstrip("#").rstrip()
    return name[:-1].rstrip() if name.endswith(":") else name


def _title(text: str) -> str | None:
    """`# Title` or `# Title #` (with `text` stripped) → `Title`; None when it is not a `# ` heading."""
    if not text.startswith("#") or text.startswith("##"):
        return None
    rest = text[1:]
    core = rest.lstrip()
    if not core:
        return rest[-1:] or None  # the expression this replaces matched a lone space as the title
    return core.rstrip().rstrip("#").rstrip() or core[0]


def _header_line(text: str) -> tuple[str, str] | None:
    """`Key: value`, `**Key:** value` or `**Key**: value`, each optionally a `- ` list item → (key, value)."""
    text = text.lstrip()
    if text[:1] in ("-", "*", "+") and text[1:2].isspace():
        text = text[1:].lstrip()
    if text.startswith("**"):
        # The key runs to the first `*` or `:`; then `:**` or `**:` must follow.
        end = len(text)
        for stop in ("*", ":"):
            found = text.find(stop, 2)
            if found != -1:
                end = min(end, found)
        raw = text[2:end]
        if not raw:
            return None
        key = raw.strip() or raw[-1]
        if text.startswith(":", end):
            after = text[end + 1 :].lstrip()
            return (key, after[2:]) if after.startswith("**") else None
        if text.startswith("**", end):
            after = text[end + 2 :].lstrip()
            return (key, after[1:]) if after.startswith(":") else None
        return None
    m = _PLAIN_KEY.match(text)
    if not m:
        return None
    after = text[m.end() :].lstrip()
    return (m.group(), after[1:]) if after.startswith(":") else None


def _close_match(word: str, choices: list[str], cutoff: float) -> str | None:
    """The known name `word` is most likely a misspelling of, if any."""
    if len(word) > MAX_SUGGESTED:
        return None
    close = difflib.get_close_matches(word, choices, n=1, cutoff=cutoff)
    return close[0] if close else None


class _FrontMatterRefused(yaml.MarkedYAMLError):
    """Front matter that is YAML, but YAML that dmforge will not load."""


class _FrontMatterLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` without anchors and aliases, and with a nesting limit.

    Header keys need neither: an alias lets ten lines expand into a billion values (the "billion laughs"),
    and PyYAML's composer recurses once per level, so 5,000 `[` would end in a RecursionError.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _FrontMatterRefused(
                problem="anchors and aliases (`&name`, `*name`) are not allowed in the front matter",
                problem_mark=event.start_mark,
            )
        if self._depth >= MAX_FRONT_MATTER_DEPTH:
            raise _FrontMatterRefused(
                problem=f"the front matter nests lists or mappings more than {MAX_FRONT_MATTER_DEPTH} levels deep",
                problem_mark=event.start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _load_front_matter(text: str, file: str, diags: DiagnosticLog) -> object:
    """The YAML value of the front matter, or None after reporting why it cannot be loaded."""
    size = len(text.encode())
    if size > MAX_FRONT_MATTER_BYTES:
        diags.add(
            "front-matter-too-large",
            file,
            2,
            f"the front matter is {size:,} bytes; the limit is {MAX_FRONT_MATTER_BYTES:,} bytes",
        )
        return None
    try:
        return yaml.load(text, Loader=_FrontMatterLoader) or {}  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark else 1
        hint = None
        if isinstance(exc, _FrontMatterRefused):
            hint = (
                "Write each header key with its value in full, one `key: value` per line, without `&`, `*` or nesting."
            )
        diags.add("front-matter-invalid", file, line, f"YAML error: {getattr(exc, 'problem', exc)}", hint=hint)
    except (ValueError, OverflowError) as exc:
        # SafeLoader's constructors raise these for values that look typed but are not, such as the date
        # `2024-13-45` or an integer of 5,000 digits.
        diags.add("front-matter-invalid", file, 2, f"YAML error: a value cannot be read ({exc})")
    return None


def _split_front_matter(lines: list[str], file: str, diags: DiagnosticLog) -> tuple[dict, dict[str, int], int]:
    """YAML front matter as a dict, each key's line, and the index of the first line after it."""
    if not lines or lines[0].strip() != "---":
        return {}, {}, 0
    for end in range(1, len(lines)):
        if lines[end].strip() in ("---", "..."):
            break
    else:
        diags.add("front-matter-unclosed", file, 1, "the front matter starting on line 1 never ends")
        return {}, {}, len(lines)
    data = _load_front_matter("\n".join(lines[1:end]), file, diags)
    if data is None:
        return {}, {}, end + 1
    if not isinstance(data, dict):
        diags.add("front-matter-invalid", file, 2, "the front matter must be `key: value` lines")
        return {}, {}, end + 1
    key_lines = {}
    for index in range(1, end):
        key, colon, _ = lines[index].partition(":")
        if colon and key.strip() and not key[0].isspace():
            key_lines.setdefault(key.strip().strip("'\""), index + 1)
    return data, key_lines, end + 1


def _yaml_value(key: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        sep = ", " if key == "tags" else "; "
        return sep.join(str(v) for v in value)
    return str(value)


def _split_sections(text: str, lines: list[str], start: int) -> tuple[list[tuple[int, str]], list[_Section]]:
    """The preamble lines and the `## ` sections; headings inside code fences are text.

    Only lines that start with `##` or a fence can change anything, and one regular expression over the
    whole text finds them, so the other lines (nearly all) cost no Python work. Past MAX_SECTIONS headings
    the rest of the file is left in the last section, which is not checked.
    """
    headings: list[tuple[int, str]] = []  # (line index, name)
    in_fence = False
    offset = sum(map(len, lines[:start])) + start  # where line `start` begins in `text`
    index, at = start, offset
    for m in _CANDIDATE.finditer(text, offset):
        index += text.count("\n", at, m.start())
        at = m.start()
        line = lines[index]
        if _FENCE.match(line):
            in_fence = not in_fence
        name = None if in_fence else _section_name(line)
        if name is not None:
            headings.append((index, name))
            if len(headings) > MAX_SECTIONS:
                break
    ends = [i for i, _ in headings[1:]] + [len(lines)]  # each section runs to the next heading
    sections = [
        _Section(name, i + 1, list(zip(range(i + 2, end + 1), lines[i + 1 : end], strict=True)))
        for (i, name), end in zip(headings, ends, strict=False)  # no headings: one end, no section
    ]
    first = headings[0][0] if headings else len(lines)
    return list(zip(range(start + 1, first + 1), lines[start:first], strict=True)), sections


def _read_header(
    fields: dict[str, tuple[str, int]], title: str, category: str, file: str, diags: DiagnosticLog
) -> Header:
    header = Header(title=title, category=category)
    first_line = min((line for _, line in fields.values()), default=1)
    for key in REQUIRED_KEYS:
        if key not in fields:
            diags.add(
                "header-missing-key",
                file,
                first_line,
                f"the header has no `{key.title()}:` line",
                hint=f"Add `{key.title()}: ...` before the first `## ` section (see the scenario format).",
            )
    for key, (value, line) in fields.items():
        value = value.strip()
        if not value and key in (*REQUIRED_KEYS, *OPTIONAL_KEYS):
            diags.add("header-empty-value", file, line, f"`{_clip(key.title())}:` has no value")
            continue
        match key:
            case "role":
                header.role = value
                if _fold(value) not in DM_ROLES:
                    diags.add("header-bad-role", file, line, f"Role is `{_clip(value)}`")
            case "world" | "location" | "party" | "notes":
                setattr(header, key, value)
            case "title":
                header.title = value
            case "category":
                header.category = "-".join(_fold(value).split())
            case "tags":
                header.tags = [t.strip() for t in value.split(",") if t.strip()]
            case "level":
                # isdecimal, not isdigit: int() refuses `²`; and it refuses more than 4,300 digits.
                if value.isdecimal() and len(value) <= 64 and 1 <= int(value) <= 20:
                    header.level = int(value)
                else:
                    diags.add("header-bad-level", file, line, f"Level is `{_clip(value)}`")
            case _:
                header.extra[key] = value
                close = _close_match(key, [*REQUIRED_KEYS, *OPTIONAL_KEYS], cutoff=0.7)
                diags.add(
                    "header-unknown-key",
                    file,
                    line,
                    f"unknown header key `{_clip(key)}`",
                    hint=f"Did you mean `{close.title()}`?" if close else None,
                )
    return header


def _header_from_preamble(
    preamble: list[tuple[int, str]], front: dict, front_lines: dict[str, int], file: str, diags: DiagnosticLog
) -> tuple[dict[str, tuple[str, int]], str | None]:
    fields: dict[str, tuple[str, int]] = {}

    def put(key: str, value: str, line: int) -> None:
        key = _fold(key).replace("_", " ")
        if key in fields:
            diags.add("header-duplicate-key", file, line, f"`{_clip(key.title())}:` is given again")
        fields[key] = (value, line)

    for key, value in front.items():
        put(str(key), _yaml_value(_fold(str(key)), value), front_lines.get(str(key), 2))
    title = None
    for line, text in preamble:
        stripped = text.strip()
        if not stripped:
            continue
        if title is None and stripped[0] == "#" and (heading := _title(stripped)) is not None:
            title = heading
            continue
        pair = _header_line(text) if ":" in text else None  # every header spelling has a colon
        if pair:
            put(*pair, line)
        else:
            diags.add("header-stray-text", file, line, f"`{_clip(stripped)}` is not a `Key: value` header line")
    return fields, title


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _dm_calls(
    section: _Section, text: str, registry: Registry, file: str, diags: DiagnosticLog
) -> tuple[list[ToolCall], list[int]]:
    """The turn's well-formed calls and the file line of each, with a diagnostic for every other bracket."""
    calls, lines = [], []
    base = section.first_line
    # A real DM turn makes a few calls; a hostile one can hold a million brackets, each a diagnostic.
    brackets = text.count("[")
    if brackets > MAX_BRACKETS_PER_TURN:
        diags.add(
            "call-too-many",
            file,
            section.heading_line,
            f"this DM turn has {brackets:,} `[`; the limit is {MAX_BRACKETS_PER_TURN} per turn, "
            f"so only the first {MAX_BRACKETS_PER_TURN} brackets were checked",
        )
    for bracket in scan_brackets(text, limit=MAX_BRACKETS_PER_TURN):
        line = base + bracket.line
        shown = _clip(bracket.text)
        match bracket.kind:
            case BracketKind.CALL:
                assert bracket.call is not None
                calls.append(bracket.call)
                lines.append(line)
                if bracket.call.name not in registry.tools:
                    close = _close_match(bracket.call.name, registry.names(), cutoff=0.6)
                    diags.add(
                        "tool-unknown",
                        file,
                        line,
                        f"`{shown}` calls `{_clip(bracket.call.name)}`, which is not a registered tool",
                        subject=bracket.call.name,
                        hint=(f"Did you mean `{close}`? " if close else "")
                        + f"Registered tools: {', '.join(registry.names())}. Add new tools to the tool registry.",
                    )
                for problem in check_call(bracket.call, registry):
                    diags.add("tool-bad-arguments", file, line, f"`{shown}`: {problem}")
            case BracketKind.MALFORMED:
                diags.add("call-malformed", file, line, f"`{shown}`: {bracket.error}")
            case BracketKind.UNCLOSED:
                diags.add("call-unclosed-bracket", file, line, f"`{shown}` has no closing `]`")
            case BracketKind.NOT_A_CALL:
                name, colon, rest = bracket.text[1:-1].partition(":")
                lowered = f"[{name.strip().lower()}{colon}{rest}]"
                hint = None
                if NAME.fullmatch(name.strip().lower()) and name.strip().lower() in registry.tools:
                    hint = f"Tool names are lowercase: write `{_clip(lowered)}`."
                diags.add("call-not-a-call", file, line, f"`{shown}` is not a tool call", hint=hint)
    return calls, lines


def _toolcall_results(
    section: _Section, made: list[ToolCall], dm_line: int, file: str, diags: DiagnosticLog
) -> list[ToolResult]:
    results: list[ToolResult] = []
    for line, raw in section.body:
        text = raw.strip()
        if not text:
            continue
        if text.startswith(("- ", "* ")):
            text = text[2:].lstrip()
        if not text.startswith("["):
            diags.add("toolcall-bad-line", file, line, f"`{_clip(text)}` is not `[call] => result`")
            continue
        close = text.find("]")
        rest = text[close + 1 :].lstrip() if close != -1 else ""
        arrow = next((a for a in _ARROWS if rest.startswith(a)), None)
        if arrow is None:
            diags.add("toolcall-bad-line", file, line, f"`{_clip(text)}` is not `[call] => result`")
            continue
        result = rest[len(arrow) :].strip()
        try:
            call = parse(text[: close + 1])
        except CallSyntaxError as exc:
            diags.add("toolcall-bad-line", file, line, f"`{_clip(text)}`: {exc}")
            continue
        if not result:
            diags.add("toolcall-bad-line", file, line, f"`{_clip(str(call))}` has no result after `{arrow}`")
            continue
        index = len(results)
        if index >= len(made):
            diags.add(
                "toolcall-mismatch",
                file,
                line,
                f"`{_clip(str(call))}` is result {index + 1}, "
                f"but the DM turn on line {dm_line} makes only {len(made)} call(s)",
            )
        elif call.normalized() != made[index].normalized():
            diags.add(
                "toolcall-mismatch",
                file,
                line,
                f"result {index + 1} is for `{_clip(str(call))}`, but call {index + 1} "
                f"of the DM turn on line {dm_line} is `{_clip(str(made[index]))}`",
            )
        results.append(ToolResult(call, result, line))
    for missing in made[len(results) :]:
        diags.add(
            "toolcall-missing-result",
            file,
            section.heading_line,
            f"the DM turn on line {dm_line} calls `{_clip(str(missing))}`, "
            "but this TOOLCALL section has no result for it",
        )
    return results


def parse_scenario(
    text: str,
    file: str,
    scenario_id: str,
    default_category: str,
    registry: Registry,
    log: DiagnosticLog | None = None,
) -> tuple[Scenario, list[Diagnostic]]:
    """Parse normalized scenario text. The scenario is usable only if no diagnostic is an error.

    The diagnostics go to `log` when given (which may keep only some of them, see `DiagnosticLog`);
    the ones kept are returned, in line order.
    """
    diags = log if log is not None else DiagnosticLog()
    lines = text.split("\n")
    front, front_lines, body_start = _split_front_matter(lines, file, diags)
    preamble, sections = _split_sections(text, lines, body_start)
    fields, title = _header_from_preamble(preamble, front, front_lines, file, diags)
    fallback_title = scenario_id.rsplit("/", 1)[-1].removesuffix(".md").replace("-", " ").replace("_", " ")
    header = _read_header(fields, title or fallback_title, default_category, file, diags)
    scenario = Scenario(
        id=scenario_id,
        path=file,
        header=header,
        fingerprint=hashlib.sha256(text.strip().encode()).hexdigest(),
    )

    if len(sections) > MAX_SECTIONS:
        # Said before the sections' own diagnostics, so that the cap on diagnostics never hides it.
        diags.add(
            "section-too-many",
            file,
            sections[MAX_SECTIONS].heading_line,
            f"the file has more than {MAX_SECTIONS:,} `## ` sections, the limit; "
            "the one on this line and the ones after it were not checked",
        )
    for section in sections[:MAX_SECTIONS]:
        kind = SECTION_ALIASES.get(_fold(section.name))
        body = section.text
        if kind is None:
            close = _close_match(_fold(section.name), list(SECTION_ALIASES), cutoff=0.6)
            diags.add(
                "section-unknown",
                file,
                section.heading_line,
                f"`## {_clip(section.name)}` is not a section",
                hint=(
                    f"Did you mean `## {close.upper() if close in ('dm', 'gm') else close.title()}`? " if close else ""
                )
                + "Sections are SYSTEM, User, DM and TOOLCALL (or their aliases).",
            )
            continue
        if not body.strip():
            diags.add("section-empty", file, section.heading_line, f"`## {_clip(section.name)}` has no text")
            continue
        if kind == SYSTEM:
            if scenario.turns:
                diags.add("system-misplaced", file, section.heading_line, "SYSTEM comes after a turn")
            elif scenario.system is not None:
                diags.add("system-duplicate", file, section.heading_line, "a second SYSTEM section")
            else:
                scenario.system = body
            continue
        _add_turn(scenario, TurnKind(kind), section, body, registry, file, diags)

    _check_ending(scenario, file, diags)
    return scenario, sorted(diags.kept(), key=lambda d: d.line)


def _add_turn(
    scenario: Scenario,
    kind: TurnKind,
    section: _Section,
    body: str,
    registry: Registry,
    file: str,
    diags: DiagnosticLog,
) -> None:
    previous = scenario.turns[-1] if scenario.turns else None
    turn = Turn(kind, body, section.heading_line)
    if previous is not None and previous.kind is kind:
        diags.add(
            "turn-repeated",
            file,
            section.heading_line,
            f"a {kind.value.upper() if kind is not TurnKind.USER else 'User'} turn follows another one "
            f"(line {previous.line})",
        )
    if kind is TurnKind.USER:
        if previous is not None and previous.kind is TurnKind.TOOLCALL:
            diags.add(
                "toolcall-no-continuation",
                file,
                previous.line,
                f"the TOOLCALL section is followed by a User turn (line {section.heading_line}), not by the DM",
            )
        if m := _SPEAKER.match(body):
            turn.speaker = m["name"].strip()
    elif kind is TurnKind.DM:
        turn.calls, turn.call_lines = _dm_calls(section, body, registry, file, diags)
    elif previous is None or previous.kind is TurnKind.USER or (previous.kind is TurnKind.DM and not previous.calls):
        what = (
            "comes first"
            if previous is None
            else (
                f"follows a {'User turn' if previous.kind is TurnKind.USER else 'DM turn without tool calls'} "
                f"(line {previous.line})"
            )
        )
        diags.add("toolcall-orphan", file, section.heading_line, f"this TOOLCALL section {what}")
    elif previous.kind is TurnKind.DM:
        turn.results = _toolcall_results(section, previous.calls, previous.line, file, diags)
    scenario.turns.append(turn)


def _check_ending(scenario: Scenario, file: str, diags: DiagnosticLog) -> None:
    if scenario.turns and scenario.turns[-1].kind is TurnKind.TOOLCALL:
        diags.add(
            "toolcall-no-continuation",
            file,
            scenario.turns[-1].line,
            "the scenario ends with a TOOLCALL section; the DM never uses the result",
        )
    if scenario.turns and scenario.turns[-1].kind is TurnKind.USER:
        dropped = scenario.turns.pop()
        diags.add(
            "turn-trailing-user", file, dropped.line, "the last turn is a User turn with no DM reply; it is dropped"
        )
    if not scenario.dm_turns:
        line = scenario.turns[0].line if scenario.turns else 1
        diags.add("scenario-no-dm-turn", file, line, "no `## DM` section")
