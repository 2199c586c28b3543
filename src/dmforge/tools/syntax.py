"""The inline tool-call syntax the DM model writes and the app's agent reads.

    [name]                      [initiative]
    [name: positional, k=v]     [attack: longsword, target=goblin 2]

`parse` reads one call, `str(call)` prints it back in canonical form, and
`scan_brackets` walks DM text and says, for every square bracket, whether it is a call,
a Markdown link or checkbox (not calls), or a mistake worth reporting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

NAME = re.compile(r"[a-z][a-z0-9_]*")
# Brackets, commas and '=' delimit the syntax, and a call lives on one line, so values can't hold them.
_FORBIDDEN_IN_VALUE = set("[]=,\n\r")


class CallSyntaxError(ValueError):
    """The text is not a well-formed tool call; the message says what to write instead."""


@dataclass(frozen=True)
class ToolCall:
    name: str
    positional: tuple[str, ...] = ()
    keywords: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        args = [*self.positional, *(f"{key}={value}" for key, value in self.keywords)]
        return f"[{self.name}: {', '.join(args)}]" if args else f"[{self.name}]"

    def keyword(self, key: str) -> str | None:
        return next((value for k, value in self.keywords if k == key), None)

    def normalized(self) -> ToolCall:
        """Case and spacing folded, so `[Roll: Perception]`-style variants of one call compare equal."""
        return ToolCall(
            self.name,
            tuple(_fold(v) for v in self.positional),
            tuple((k, _fold(v)) for k, v in self.keywords),
        )


def _fold(value: str) -> str:
    return " ".join(value.split()).lower()


def _clip(text: str, width: int = 60) -> str:
    """Text quoted in an error message, cut short: a hostile call can be a megabyte long."""
    return text if len(text) <= width else text[: width - 1] + "…"


def _check_value(value: str, where: str) -> str:
    value = value.strip()
    if not value:
        raise CallSyntaxError(f"{where} is empty")
    bad = sorted(_FORBIDDEN_IN_VALUE.intersection(value))
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise CallSyntaxError(f"{where} `{_clip(value)}` contains {shown}, which a call argument cannot hold")
    return value


def parse(text: str) -> ToolCall:
    """Parse exactly one bracketed call such as `[roll: dexterity save, dc=14]`."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise CallSyntaxError("a tool call is written in square brackets, e.g. `[roll: perception]`")
    inner = text[1:-1]
    name, colon, rest = inner.partition(":")
    name = name.strip()
    if not NAME.fullmatch(name):
        raise CallSyntaxError(
            f"`{_clip(name)}` is not a tool name: names are lowercase letters, digits and `_`, starting with a letter"
        )
    if not colon:
        return ToolCall(name)
    if not rest.strip():
        raise CallSyntaxError(f"nothing follows the colon: write `[{name}]` for a call without arguments")

    positional: list[str] = []
    keywords: list[tuple[str, str]] = []
    seen: set[str] = set()  # a set, not a scan of `keywords`: a call can hold thousands of arguments
    for index, part in enumerate(rest.split(","), start=1):
        if "=" in part:
            key, _, value = part.partition("=")
            key = key.strip()
            if not NAME.fullmatch(key):
                raise CallSyntaxError(f"argument {index}: `{_clip(key)}` is not a valid argument name before `=`")
            if key in seen:
                raise CallSyntaxError(f"argument {index}: `{_clip(key)}=` is given twice")
            seen.add(key)
            keywords.append((key, _check_value(value, f"argument {index} (`{_clip(key)}=`)")))
        else:
            value = _check_value(part, f"argument {index}")
            if keywords:
                raise CallSyntaxError(
                    f"argument {index}: `{_clip(value)}` comes after a key=value pair; put positional values first"
                )
            positional.append(value)
    return ToolCall(name, tuple(positional), tuple(keywords))


class BracketKind(StrEnum):
    CALL = "call"  # a well-formed tool call
    LINK = "link"  # [text](url): Markdown, not a call
    CHECKBOX = "checkbox"  # [ ] or [x]: Markdown, not a call
    MALFORMED = "malformed"  # starts like `[name:` but does not parse
    UNCLOSED = "unclosed"  # `[` with no `]` on the same line
    NOT_A_CALL = "not_a_call"  # any other bracketed text


@dataclass(frozen=True)
class Bracket:
    kind: BracketKind
    text: str  # the raw bracketed text, brackets included; for an unclosed one, the start of the rest of the line
    line: int  # 0-based line within the scanned text
    column: int  # 0-based column of the `[`
    call: ToolCall | None = None
    error: str | None = field(default=None, compare=False)


_LOOKS_LIKE_CALL = re.compile(r"\s*+[a-z][a-z0-9_]*+\s*+(:|$)")
_CHECKBOX = {" ", "x", "X"}
UNCLOSED_SHOWN = 80  # characters kept of an unclosed bracket's line: enough to find it, never the whole line


def _classify(raw: str, link: bool) -> tuple[BracketKind, ToolCall | None, str | None]:
    inner = raw[1:-1]
    if link:
        return BracketKind.LINK, None, None
    if inner in _CHECKBOX:
        return BracketKind.CHECKBOX, None, None
    if _LOOKS_LIKE_CALL.match(inner):
        try:
            return BracketKind.CALL, parse(raw), None
        except CallSyntaxError as exc:
            return BracketKind.MALFORMED, None, str(exc)
    return BracketKind.NOT_A_CALL, None, None


def scan_brackets(text: str, limit: int | None = None) -> list[Bracket]:
    """Every `[...]` in `text` (the first `limit` of them), classified. Calls never span lines, so each
    line is scanned alone.

    Linear in the length of the text: the next `]` is looked up again only once the scan has passed
    it, so a line of a million `[` is read once, not once per bracket.
    """
    found: list[Bracket] = []
    for line_no, line in enumerate(text.split("\n")):
        col = line.find("[")
        close = -1 if col == -1 else line.find("]", col + 1)
        while col != -1:
            if limit is not None and len(found) >= limit:
                return found
            if close != -1 and close < col:
                close = line.find("]", col + 1)
            reopen = line.find("[", col + 1)
            if close == -1 or (reopen != -1 and reopen < close):
                shown = line[col : col + UNCLOSED_SHOWN].rstrip()
                found.append(Bracket(BracketKind.UNCLOSED, shown, line_no, col))
                col = reopen
                continue
            raw = line[col : close + 1]
            kind, call, error = _classify(raw, link=line.startswith("(", close + 1))
            found.append(Bracket(kind, raw, line_no, col, call, error))
            col = reopen  # the first `[` after this one, and it is past the `]`
    return found


def find_calls(text: str) -> list[ToolCall]:
    """The well-formed calls in a DM reply, in order: what the app's agent would execute."""
    return [b.call for b in scan_brackets(text) if b.kind is BracketKind.CALL and b.call is not None]
