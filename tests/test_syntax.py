"""The bracket call syntax: parse, print, round-trip, and what in DM text is (not) a call."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dmforge.tools.syntax import (
    UNCLOSED_SHOWN,
    BracketKind,
    CallSyntaxError,
    ToolCall,
    find_calls,
    parse,
    scan_brackets,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[initiative]", ToolCall("initiative")),
        ("[roll: perception]", ToolCall("roll", ("perception",))),
        ("[roll: dexterity save, dc=14]", ToolCall("roll", ("dexterity save",), (("dc", "14"),))),
        ("[roll: 1d20+5]", ToolCall("roll", ("1d20+5",))),
        ("[attack: longsword, target=goblin 2]", ToolCall("attack", ("longsword",), (("target", "goblin 2"),))),
        (
            "[damage: 1d8+3, type=slashing]",
            ToolCall("damage", ("1d8+3",), (("type", "slashing"),)),
        ),
        # Spaces around separators and inside the brackets are ignored.
        ("[ roll :  stealth ,advantage,  dc = 12 ]", ToolCall("roll", ("stealth", "advantage"), (("dc", "12"),))),
    ],
)
def test_parse_examples_from_the_spec(text, expected):
    assert parse(text) == expected


def test_print_is_canonical():
    assert str(parse("[ roll :  stealth ,advantage,  dc = 12 ]")) == "[roll: stealth, advantage, dc=12]"
    assert str(ToolCall("initiative")) == "[initiative]"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("roll: perception", "square brackets"),
        ("[Roll: perception]", "not a tool name"),
        ("[2roll]", "not a tool name"),
        ("[roll:]", "nothing follows the colon"),
        ("[roll: ,perception]", "argument 1 is empty"),
        ("[roll: perception,, dc=3]", "argument 2 is empty"),
        ("[roll: dc=14, perception]", "put positional values first"),
        ("[roll: perception, dc=1, dc=2]", "given twice"),
        ("[roll: perception, DC=1]", "not a valid argument name"),
        ("[roll: dc=]", "is empty"),
        ("[roll: a=b=c]", "contains '='"),
    ],
)
def test_malformed_calls_say_what_is_wrong(text, fragment):
    with pytest.raises(CallSyntaxError, match=fragment):
        parse(text)


def test_links_and_checkboxes_are_not_calls():
    text = "See [the map](https://example.com/map) and tick - [ ] one - [x] two - [X] three."
    kinds = [b.kind for b in scan_brackets(text)]
    assert kinds == [BracketKind.LINK, BracketKind.CHECKBOX, BracketKind.CHECKBOX, BracketKind.CHECKBOX]
    assert find_calls(text) == []


def test_scan_finds_calls_in_order_with_positions():
    text = "The goblin lunges.\nRoll! [roll: dexterity save, dc=12] then [initiative]"
    brackets = scan_brackets(text)
    assert [(b.kind, b.line, b.column) for b in brackets] == [(BracketKind.CALL, 1, 6), (BracketKind.CALL, 1, 41)]
    assert find_calls(text) == [parse("[roll: dexterity save, dc=12]"), ToolCall("initiative")]


def test_unclosed_bracket_is_reported_and_scanning_goes_on():
    brackets = scan_brackets("Make a check [roll: perception and then [initiative]")
    assert [b.kind for b in brackets] == [BracketKind.UNCLOSED, BracketKind.CALL]
    # A call never spans lines: a bracket closed on the next line is unclosed.
    assert [b.kind for b in scan_brackets("[roll: stealth,\n dc=3]")] == [BracketKind.UNCLOSED]


def test_bracketed_prose_and_malformed_calls_are_told_apart():
    brackets = scan_brackets("[The door creaks] [roll dc=3] [roll: dc=3, stealth]")
    assert [b.kind for b in brackets] == [BracketKind.NOT_A_CALL, BracketKind.NOT_A_CALL, BracketKind.MALFORMED]
    assert "positional values first" in brackets[2].error


def test_normalized_folds_case_and_spacing():
    assert parse("[attack: Long  Sword, target=Goblin 2]").normalized() == parse(
        "[attack: long sword, target=goblin 2]"
    )


# --- property-based: the syntax round-trips --------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
# Values: any printable text without the delimiters, not blank, without surrounding spaces.
values = (
    st.text(st.characters(blacklist_characters="[]=,\n\r", blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)
    .map(str.strip)
    .filter(bool)
)
calls = st.builds(
    ToolCall,
    names,
    st.lists(values, max_size=4).map(tuple),
    st.dictionaries(names, values, max_size=3).map(lambda d: tuple(d.items())),
)


@given(calls)
def test_print_then_parse_is_identity(call):
    assert parse(str(call)) == call


@given(calls)
def test_a_printed_call_is_found_in_prose(call):
    text = f"The ogre roars. {call} What do you do?"
    if call.name in ("x",) and not call.positional and not call.keywords:
        return  # `[x]` is a Markdown checkbox by the spec, not a call
    assert find_calls(text) == [call]


@given(st.text(max_size=200))
def test_scanning_any_text_never_crashes(text):
    for bracket in scan_brackets(text):
        assert bracket.text.startswith("[")
        if bracket.kind is BracketKind.CALL:
            assert parse(str(bracket.call)) == bracket.call


# --- hostile text: linear time, bounded output -----------------------------------------------------


def test_a_line_of_open_brackets_is_scanned_in_linear_time():
    # Each unclosed `[` used to rescan and copy the rest of the line: 200,000 of them took minutes.
    start = time.perf_counter()
    brackets = scan_brackets("[" * 200_000)
    assert time.perf_counter() - start < 5
    assert len(brackets) == 200_000 and all(b.kind is BracketKind.UNCLOSED for b in brackets)
    assert max(len(b.text) for b in brackets) <= UNCLOSED_SHOWN


def test_floods_of_brackets_are_linear():
    for text in ("[x:" * 100_000, "[]" * 150_000, "[a](b)" * 50_000):
        start = time.perf_counter()
        scan_brackets(text)
        assert time.perf_counter() - start < 5, text[:10]


def test_an_unclosed_bracket_keeps_the_start_of_its_line():
    (bracket,) = scan_brackets("Roll [roll: stealth, " + "x" * 10_000)
    assert bracket.kind is BracketKind.UNCLOSED and bracket.column == 5
    assert bracket.text.startswith("[roll: stealth, x") and len(bracket.text) == UNCLOSED_SHOWN


def test_scan_stops_at_the_limit():
    text = "[initiative] [roll: stealth]\n[a] [b]"
    assert [b.text for b in scan_brackets(text, limit=3)] == ["[initiative]", "[roll: stealth]", "[a]"]
    assert scan_brackets(text, limit=0) == []
    assert len(scan_brackets(text)) == 4


def test_a_call_with_many_keywords_parses_in_linear_time():
    # Repeated keywords were found by rescanning the ones before: quadratic in the number of arguments.
    text = "[roll: stealth, " + ", ".join(f"k{i}=1" for i in range(50_000)) + "]"
    start = time.perf_counter()
    call = parse(text)
    assert time.perf_counter() - start < 5 and len(call.keywords) == 50_000
    with pytest.raises(CallSyntaxError, match="given twice"):
        parse(text[:-1] + ", k7=2]")


def test_error_messages_quote_at_most_a_little_of_the_call():
    for text in (
        "[roll: x, " + "A" * 10_000 + "=1]",
        "[roll: x, a=" + "(" * 10_000 + "=]",
        "[" + "Q" * 10_000 + "]",
    ):
        with pytest.raises(CallSyntaxError) as info:
            parse(text)
        assert len(str(info.value)) < 300
