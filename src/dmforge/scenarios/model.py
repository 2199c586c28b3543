"""What a scenario is once read: a header, an optional system prompt and a list of turns."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from dmforge.tools.syntax import ToolCall


class TurnKind(StrEnum):
    USER = "user"
    DM = "dm"
    TOOLCALL = "toolcall"


@dataclass
class ToolResult:
    """One line of a TOOLCALL section: the call the DM made and what the dice (or the app) said."""

    call: ToolCall
    result: str
    line: int


@dataclass
class Turn:
    kind: TurnKind
    text: str
    line: int  # the line of the section heading, 1-based
    speaker: str | None = None  # "Thorin" for a User turn written "Thorin: I creep up..."
    calls: list[ToolCall] = field(default_factory=list)  # DM turns: the calls, in order
    call_lines: list[int] = field(default_factory=list)  # the file line of each call, 1-based
    results: list[ToolResult] = field(default_factory=list)  # TOOLCALL turns


@dataclass
class PartyMember:
    name: str
    description: str = ""  # "dwarf fighter 3"


@dataclass
class Header:
    title: str
    role: str = ""
    world: str = ""
    location: str = ""
    party: str = ""
    category: str = "general"
    tags: list[str] = field(default_factory=list)
    level: int | None = None
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # unknown keys, kept as metadata

    @property
    def party_members(self) -> list[PartyMember]:
        return parse_party(self.party)


@dataclass
class Scenario:
    id: str  # path relative to the scenarios root, with `/` separators: stable across machines
    path: str  # as the user named it, for diagnostics
    header: Header
    system: str | None = None
    turns: list[Turn] = field(default_factory=list)
    fingerprint: str = ""  # sha256 of the normalized text, for duplicate detection and dataset manifests

    @property
    def dm_turns(self) -> list[Turn]:
        return [t for t in self.turns if t.kind is TurnKind.DM]

    @property
    def calls(self) -> list[ToolCall]:
        return [c for t in self.dm_turns for c in t.calls]


def _member(part: str) -> tuple[str, str] | None:
    """`Name (description)` → (name, description), or None when the parentheses are not that shape.

    Written with string methods: the regex it replaces backtracked cubically on a name padded with
    spaces, and `Party:` is read by the dataset build for every scenario.
    """
    text = part.rstrip()
    if not part or ("(" not in text and ")" not in text):
        return (text.strip(), "") if part else None
    open_at = text.find("(")
    if not text.endswith(")") or open_at < 1:  # the name before `(` may be blank, never missing
        return None
    name, desc = text[:open_at], text[open_at + 1 : -1]
    if ")" in name or ")" in desc:
        return None
    return name.strip(), desc.strip()


def _split_outside_parens(text: str, sep: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_party(party: str) -> list[PartyMember]:
    """`Thorin Ironfist (dwarf fighter 3); Elara (elf wizard 3)` → members. `;` or `,` separate them."""
    sep = ";" if ";" in party else ","
    members = []
    for part in _split_outside_parens(party, sep):
        member = _member(part)
        members.append(PartyMember(*member) if member else PartyMember(part))
    return members
