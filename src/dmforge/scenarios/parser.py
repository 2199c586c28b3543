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

from dmforge.scenarios.diagnostics import Diagnostic, diagnose
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

# `Key: value`, `**Key:** value`, `**Key**: value`, each optionally as a `- ` list item.
# Plain keys are at most three words so that a sentence with a colon is not read as a key.
_HEADER_LINE = re.compile(
    r"^\s*(?:[-*+]\s+)?"
    r"(?:\*\*\s*(?P<k1>[^*:]+?)\s*:\s*\*\*|\*\*\s*(?P<k2>[^*:]+?)\s*\*\*\s*:"
    r"|(?P<k3>[A-Za-z][\w-]*(?:[ \t]+[\w-]+){0,2})\s*:)"
    r"(?P<value>.*)$"
)
_SECTION = re.compile(r"^##(?!#)\s*(?P<name>.*?)\s*:?\s*#*\s*$")
_TITLE = re.compile(r"^#(?!#)\s*(?P<title>.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_SPEAKER = re.compile(r"^(?P<name>[A-Z][\w' .-]{0,40}?):\s+\S")
_ARROWS = ("=>", "->", "→")


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


def _split_front_matter(lines: list[str], file: str, diags: list[Diagnostic]) -> tuple[dict, dict[str, int], int]:
    """YAML front matter as a dict, each key's line, and the index of the first line after it."""
    if not lines or lines[0].strip() != "---":
        return {}, {}, 0
    for end in range(1, len(lines)):
        if lines[end].strip() in ("---", "..."):
            break
    else:
        diags.append(diagnose("front-matter-unclosed", file, 1, "the front matter starting on line 1 never ends"))
        return {}, {}, len(lines)
    try:
        data = yaml.safe_load("\n".join(lines[1:end])) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark else 1
        diags.append(diagnose("front-matter-invalid", file, line, f"YAML error: {getattr(exc, 'problem', exc)}"))
        return {}, {}, end + 1
    if not isinstance(data, dict):
        diags.append(diagnose("front-matter-invalid", file, 2, "the front matter must be `key: value` lines"))
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


def _split_sections(lines: list[str], start: int) -> tuple[list[tuple[int, str]], list[_Section]]:
    """The preamble lines and the `## ` sections; headings inside code fences are text."""
    preamble: list[tuple[int, str]] = []
    sections: list[_Section] = []
    in_fence = False
    for index in range(start, len(lines)):
        number, text = index + 1, lines[index]
        if _FENCE.match(text):
            in_fence = not in_fence
        heading = None if in_fence else _SECTION.match(text)
        if heading:
            sections.append(_Section(heading["name"], number, []))
        elif sections:
            sections[-1].body.append((number, text))
        else:
            preamble.append((number, text))
    return preamble, sections


def _read_header(
    fields: dict[str, tuple[str, int]], title: str, category: str, file: str, diags: list[Diagnostic]
) -> Header:
    header = Header(title=title, category=category)
    first_line = min((line for _, line in fields.values()), default=1)
    for key in REQUIRED_KEYS:
        if key not in fields:
            diags.append(
                diagnose(
                    "header-missing-key",
                    file,
                    first_line,
                    f"the header has no `{key.title()}:` line",
                    hint=f"Add `{key.title()}: ...` before the first `## ` section (see the scenario format).",
                )
            )
    for key, (value, line) in fields.items():
        value = value.strip()
        if not value and key in (*REQUIRED_KEYS, *OPTIONAL_KEYS):
            diags.append(diagnose("header-empty-value", file, line, f"`{key.title()}:` has no value"))
            continue
        match key:
            case "role":
                header.role = value
                if _fold(value) not in DM_ROLES:
                    diags.append(diagnose("header-bad-role", file, line, f"Role is `{value}`"))
            case "world" | "location" | "party" | "notes":
                setattr(header, key, value)
            case "title":
                header.title = value
            case "category":
                header.category = "-".join(_fold(value).split())
            case "tags":
                header.tags = [t.strip() for t in value.split(",") if t.strip()]
            case "level":
                if value.isdigit() and 1 <= int(value) <= 20:
                    header.level = int(value)
                else:
                    diags.append(diagnose("header-bad-level", file, line, f"Level is `{value}`"))
            case _:
                header.extra[key] = value
                known = [*REQUIRED_KEYS, *OPTIONAL_KEYS]
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.7)
                diags.append(
                    diagnose(
                        "header-unknown-key",
                        file,
                        line,
                        f"unknown header key `{key}`",
                        hint=f"Did you mean `{close[0].title()}`?" if close else None,
                    )
                )
    return header


def _header_from_preamble(
    preamble: list[tuple[int, str]], front: dict, front_lines: dict[str, int], file: str, diags: list[Diagnostic]
) -> tuple[dict[str, tuple[str, int]], str | None]:
    fields: dict[str, tuple[str, int]] = {}

    def put(key: str, value: str, line: int) -> None:
        key = _fold(key).replace("_", " ")
        if key in fields:
            diags.append(diagnose("header-duplicate-key", file, line, f"`{key.title()}:` is given again"))
        fields[key] = (value, line)

    for key, value in front.items():
        put(str(key), _yaml_value(_fold(str(key)), value), front_lines.get(str(key), 2))
    title = None
    for line, text in preamble:
        if not text.strip():
            continue
        if title is None and (m := _TITLE.match(text.strip())):
            title = m["title"]
            continue
        m = _HEADER_LINE.match(text)
        if m:
            put(m["k1"] or m["k2"] or m["k3"], m["value"], line)
        else:
            diags.append(
                diagnose("header-stray-text", file, line, f"`{_clip(text.strip())}` is not a `Key: value` header line")
            )
    return fields, title


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _dm_calls(section: _Section, text: str, registry: Registry, file: str, diags: list[Diagnostic]) -> list[ToolCall]:
    calls = []
    base = section.first_line
    for bracket in scan_brackets(text):
        line = base + bracket.line
        shown = _clip(bracket.text)
        match bracket.kind:
            case BracketKind.CALL:
                assert bracket.call is not None
                calls.append(bracket.call)
                if bracket.call.name not in registry.tools:
                    close = difflib.get_close_matches(bracket.call.name, registry.names(), n=1)
                    diags.append(
                        diagnose(
                            "tool-unknown",
                            file,
                            line,
                            f"`{shown}` calls `{bracket.call.name}`, which is not a registered tool",
                            subject=bracket.call.name,
                            hint=(f"Did you mean `{close[0]}`? " if close else "")
                            + f"Registered tools: {', '.join(registry.names())}. Add new tools to the tool registry.",
                        )
                    )
                for problem in check_call(bracket.call, registry):
                    diags.append(diagnose("tool-bad-arguments", file, line, f"`{shown}`: {problem}"))
            case BracketKind.MALFORMED:
                diags.append(diagnose("call-malformed", file, line, f"`{shown}`: {bracket.error}"))
            case BracketKind.UNCLOSED:
                diags.append(diagnose("call-unclosed-bracket", file, line, f"`{shown}` has no closing `]`"))
            case BracketKind.NOT_A_CALL:
                name, colon, rest = bracket.text[1:-1].partition(":")
                lowered = f"[{name.strip().lower()}{colon}{rest}]"
                hint = None
                if NAME.fullmatch(name.strip().lower()) and name.strip().lower() in registry.tools:
                    hint = f"Tool names are lowercase: write `{lowered}`."
                diags.append(diagnose("call-not-a-call", file, line, f"`{shown}` is not a tool call", hint=hint))
    return calls


def _toolcall_results(
    section: _Section, made: list[ToolCall], dm_line: int, file: str, diags: list[Diagnostic]
) -> list[ToolResult]:
    results: list[ToolResult] = []
    for line, raw in section.body:
        text = raw.strip()
        if not text:
            continue
        if text.startswith(("- ", "* ")):
            text = text[2:].lstrip()
        close = text.find("]")
        rest = text[close + 1 :].lstrip() if close != -1 else ""
        arrow = next((a for a in _ARROWS if rest.startswith(a)), None)
        if not text.startswith("[") or arrow is None:
            diags.append(diagnose("toolcall-bad-line", file, line, f"`{_clip(text)}` is not `[call] => result`"))
            continue
        result = rest[len(arrow) :].strip()
        try:
            call = parse(text[: close + 1])
        except CallSyntaxError as exc:
            diags.append(diagnose("toolcall-bad-line", file, line, f"`{_clip(text)}`: {exc}"))
            continue
        if not result:
            diags.append(diagnose("toolcall-bad-line", file, line, f"`{call}` has no result after `{arrow}`"))
            continue
        index = len(results)
        if index >= len(made):
            diags.append(
                diagnose(
                    "toolcall-mismatch",
                    file,
                    line,
                    f"`{call}` is result {index + 1}, but the DM turn on line {dm_line} makes only {len(made)} call(s)",
                )
            )
        elif call.normalized() != made[index].normalized():
            diags.append(
                diagnose(
                    "toolcall-mismatch",
                    file,
                    line,
                    f"result {index + 1} is for `{call}`, but call {index + 1} "
                    f"of the DM turn on line {dm_line} is `{made[index]}`",
                )
            )
        results.append(ToolResult(call, result, line))
    for missing in made[len(results) :]:
        diags.append(
            diagnose(
                "toolcall-missing-result",
                file,
                section.heading_line,
                f"the DM turn on line {dm_line} calls `{missing}`, but this TOOLCALL section has no result for it",
            )
        )
    return results


def parse_scenario(
    text: str, file: str, scenario_id: str, default_category: str, registry: Registry
) -> tuple[Scenario, list[Diagnostic]]:
    """Parse normalized scenario text. The scenario is usable only if no diagnostic is an error."""
    diags: list[Diagnostic] = []
    lines = text.split("\n")
    front, front_lines, body_start = _split_front_matter(lines, file, diags)
    preamble, sections = _split_sections(lines, body_start)
    fields, title = _header_from_preamble(preamble, front, front_lines, file, diags)
    fallback_title = scenario_id.rsplit("/", 1)[-1].removesuffix(".md").replace("-", " ").replace("_", " ")
    header = _read_header(fields, title or fallback_title, default_category, file, diags)
    scenario = Scenario(
        id=scenario_id,
        path=file,
        header=header,
        fingerprint=hashlib.sha256(text.strip().encode()).hexdigest(),
    )

    for section in sections:
        kind = SECTION_ALIASES.get(_fold(section.name))
        body = section.text
        if kind is None:
            close = difflib.get_close_matches(_fold(section.name), list(SECTION_ALIASES), n=1, cutoff=0.6)
            diags.append(
                diagnose(
                    "section-unknown",
                    file,
                    section.heading_line,
                    f"`## {section.name}` is not a section",
                    hint=(
                        f"Did you mean `## {close[0].upper() if close[0] in ('dm', 'gm') else close[0].title()}`? "
                        if close
                        else ""
                    )
                    + "Sections are SYSTEM, User, DM and TOOLCALL (or their aliases).",
                )
            )
            continue
        if not body.strip():
            diags.append(diagnose("section-empty", file, section.heading_line, f"`## {section.name}` has no text"))
            continue
        if kind == SYSTEM:
            if scenario.turns:
                diags.append(diagnose("system-misplaced", file, section.heading_line, "SYSTEM comes after a turn"))
            elif scenario.system is not None:
                diags.append(diagnose("system-duplicate", file, section.heading_line, "a second SYSTEM section"))
            else:
                scenario.system = body
            continue
        _add_turn(scenario, TurnKind(kind), section, body, registry, file, diags)

    _check_ending(scenario, file, diags)
    return scenario, sorted(diags, key=lambda d: d.line)


def _add_turn(
    scenario: Scenario,
    kind: TurnKind,
    section: _Section,
    body: str,
    registry: Registry,
    file: str,
    diags: list[Diagnostic],
) -> None:
    previous = scenario.turns[-1] if scenario.turns else None
    turn = Turn(kind, body, section.heading_line)
    if previous is not None and previous.kind is kind:
        diags.append(
            diagnose(
                "turn-repeated",
                file,
                section.heading_line,
                f"a {kind.value.upper() if kind is not TurnKind.USER else 'User'} turn follows another one "
                f"(line {previous.line})",
            )
        )
    if kind is TurnKind.USER:
        if previous is not None and previous.kind is TurnKind.TOOLCALL:
            diags.append(
                diagnose(
                    "toolcall-no-continuation",
                    file,
                    previous.line,
                    f"the TOOLCALL section is followed by a User turn (line {section.heading_line}), not by the DM",
                )
            )
        if m := _SPEAKER.match(body):
            turn.speaker = m["name"].strip()
    elif kind is TurnKind.DM:
        turn.calls = _dm_calls(section, body, registry, file, diags)
    elif previous is None or previous.kind is TurnKind.USER or (previous.kind is TurnKind.DM and not previous.calls):
        what = (
            "comes first"
            if previous is None
            else (
                f"follows a {'User turn' if previous.kind is TurnKind.USER else 'DM turn without tool calls'} "
                f"(line {previous.line})"
            )
        )
        diags.append(diagnose("toolcall-orphan", file, section.heading_line, f"this TOOLCALL section {what}"))
    elif previous.kind is TurnKind.DM:
        turn.results = _toolcall_results(section, previous.calls, previous.line, file, diags)
    scenario.turns.append(turn)


def _check_ending(scenario: Scenario, file: str, diags: list[Diagnostic]) -> None:
    if scenario.turns and scenario.turns[-1].kind is TurnKind.TOOLCALL:
        diags.append(
            diagnose(
                "toolcall-no-continuation",
                file,
                scenario.turns[-1].line,
                "the scenario ends with a TOOLCALL section; the DM never uses the result",
            )
        )
    if scenario.turns and scenario.turns[-1].kind is TurnKind.USER:
        dropped = scenario.turns.pop()
        diags.append(
            diagnose(
                "turn-trailing-user", file, dropped.line, "the last turn is a User turn with no DM reply; it is dropped"
            )
        )
    if not scenario.dm_turns:
        line = scenario.turns[0].line if scenario.turns else 1
        diags.append(diagnose("scenario-no-dm-turn", file, line, "no `## DM` section"))
