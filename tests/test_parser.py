"""Every rule of shared/spec/scenario-format.md, one test (or more) each."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import VALID, codes, parse_text, scenario_text
from dmforge.scenarios.diagnostics import RULES, Severity
from dmforge.scenarios.model import TurnKind, parse_party
from dmforge.tools.syntax import parse

# --- the example and the header ---------------------------------------------------------------


def test_the_spec_example_parses_cleanly():
    scenario, diags = parse_text(VALID)
    assert diags == []
    h = scenario.header
    assert (h.title, h.role, h.category) == ("Goblin Ambush on the Triboar Trail", "Dungeon Master", "combat")
    assert h.world == "Forgotten Realms, 1491 DR"
    assert h.tags == ["goblins", "ambush", "low-level"]
    assert [m.name for m in h.party_members] == ["Thorin Ironfist", "Elara Moonwhisper"]
    assert scenario.system == "You are the Dungeon Master of a D&D 5e game."
    user, dm, tool, dm2 = scenario.turns
    assert user.speaker == "Thorin"
    assert dm.calls == [parse("[roll: survival]")]
    assert [(str(r.call), r.result) for r in tool.results] == [("[roll: survival]", "14")]
    assert dm2.kind is TurnKind.DM and not dm2.calls


@pytest.mark.parametrize(
    "line",
    [
        "World: Eberron",
        "world: Eberron",
        "WORLD :  Eberron",
        "**World:** Eberron",
        "**World**: Eberron",
        "- World: Eberron",
        "* **World:** Eberron",
    ],
)
def test_header_spellings_mean_the_same(line):
    header = f"Role: Dungeon Master\n{line}\nLocation: Sharn\nParty: Ana (human rogue 2)\n"
    scenario, diags = parse_text(scenario_text("## User\nHi\n\n## DM\nHello.\n", header=header))
    assert diags == []
    assert scenario.header.world == "Eberron"


def test_yaml_front_matter_with_the_same_keys():
    text = (
        "---\nRole: Dungeon Master\nworld: Eberron\nLocation: Sharn\n"
        "party: [Ana (human rogue 2), Bo (gnome bard 2)]\ntags: [noir, city]\nlevel: 2\n---\n"
        "# The Tower\n\n## User\nHi\n\n## DM\nHello.\n"
    )
    scenario, diags = parse_text(text)
    assert diags == []
    assert scenario.header.title == "The Tower"
    assert [m.name for m in scenario.header.party_members] == ["Ana", "Bo"]
    assert scenario.header.tags == ["noir", "city"] and scenario.header.level == 2


def test_front_matter_errors_point_at_the_line():
    _scenario, diags = parse_text("---\nRole: DM\nworld: [unclosed\n---\n## DM\nHi.\n")
    assert "front-matter-invalid" in codes(diags)
    assert next(d for d in diags if d.code == "front-matter-invalid").line >= 3
    _, diags = parse_text("---\nRole: DM\nWorld: x\n## DM\nHi.\n")
    assert "front-matter-unclosed" in codes(diags)


def test_title_defaults_to_the_file_name():
    from dmforge.scenarios.parser import parse_scenario
    from dmforge.tools.registry import load_registry

    text = scenario_text("## User\nHi\n\n## DM\nHello.\n")
    scenario, _ = parse_scenario(text, "x/goblin-ambush.md", "combat/goblin-ambush.md", "combat", load_registry())
    assert scenario.header.title == "goblin ambush"


@pytest.mark.parametrize("key", ["Role", "World", "Location", "Party"])
def test_each_required_key_is_an_error_when_missing(key):
    header = "\n".join(line for line in scenario_text("").splitlines() if line and not line.startswith(key))
    _, diags = parse_text(header + "\n\n## User\nHi\n\n## DM\nHello.\n")
    missing = [d for d in diags if d.code == "header-missing-key"]
    assert len(missing) == 1 and f"`{key}:`" in missing[0].message
    assert missing[0].severity is Severity.ERROR


def test_empty_header_value_is_an_error():
    _, diags = parse_text(scenario_text("## User\nHi\n\n## DM\nHello.\n").replace("World: Greyhawk", "World:"))
    assert codes(diags) == ["header-empty-value"]


def test_unknown_header_key_is_kept_and_warned():
    text = scenario_text("## User\nHi\n\n## DM\nHello.\n").replace("World:", "Mood: grim\nWorld:")
    scenario, diags = parse_text(text)
    assert codes(diags) == ["header-unknown-key"]
    assert diags[0].severity is Severity.WARNING and diags[0].line == 2
    assert scenario.header.extra == {"mood": "grim"}


def test_misspelled_key_gets_a_suggestion():
    text = scenario_text("## User\nHi\n\n## DM\nHello.\n").replace("Location:", "Locaton:")
    _, diags = parse_text(text)
    unknown = next(d for d in diags if d.code == "header-unknown-key")
    assert "Location" in unknown.hint
    assert "header-missing-key" in codes(diags)


def test_duplicate_key_warns_and_keeps_the_last():
    text = scenario_text("## User\nHi\n\n## DM\nHello.\n").replace("World: Greyhawk", "World: A\nWorld: B")
    scenario, diags = parse_text(text)
    assert codes(diags) == ["header-duplicate-key"] and scenario.header.world == "B"


def test_role_must_be_the_dungeon_master():
    text = scenario_text("## User\nHi\n\n## DM\nHello.\n")
    for role in ("DM", "GM", "game master", "Dungeon Master"):
        assert parse_text(text.replace("Dungeon Master", role))[1] == []
    assert codes(parse_text(text.replace("Dungeon Master", "Player"))[1]) == ["header-bad-role"]


def test_level_must_be_1_to_20():
    text = scenario_text("## User\nHi\n\n## DM\nHello.\n")
    assert parse_text(text.replace("World:", "Level: 5\nWorld:"))[0].header.level == 5
    assert codes(parse_text(text.replace("World:", "Level: 25\nWorld:"))[1]) == ["header-bad-level"]


def test_category_defaults_to_folder_then_general_and_header_wins():
    text = scenario_text("## User\nHi\n\n## DM\nHello.\n")
    assert parse_text(text, category="combat")[0].header.category == "combat"
    assert parse_text(text)[0].header.category == "general"
    assert (
        parse_text(text.replace("World:", "Category: Social\nWorld:"), category="combat")[0].header.category == "social"
    )


def test_stray_text_before_the_first_section_is_a_warning():
    text = scenario_text("## User\nHi\n\n## DM\nHello.\n").replace("World:", "The party meets at dusk.\nWorld:")
    _, diags = parse_text(text)
    assert codes(diags) == ["header-stray-text"] and diags[0].line == 2


def test_party_parsing():
    members = parse_party("Thorin Ironfist (dwarf fighter 3); Elara (elf, wizard 3)")
    assert [(m.name, m.description) for m in members] == [
        ("Thorin Ironfist", "dwarf fighter 3"),
        ("Elara", "elf, wizard 3"),
    ]
    assert [m.name for m in parse_party("Ana (rogue, 2), Bo, Cy")] == ["Ana", "Bo", "Cy"]


# --- sections -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "user", "dm", "tool"),
    [
        ("SYSTEM", "User", "DM", "TOOLCALL"),
        ("System Prompt", "Player", "Dungeon Master", "Tool"),
        ("system", "Players", "GM", "Tool Call"),
        ("  SYSTEM  ", "user", "Assistant", "Tool Result"),
        ("System prompt", "PLAYER", "Narrator", "Roll"),
    ],
)
def test_section_aliases(system, user, dm, tool):
    body = (
        f"## {system}\nBe grim.\n\n## {user}\nI look.\n\n## {dm}\nRoll. [roll: perception]\n\n"
        f"## {tool}\n[roll: perception] => 12\n\n## {dm}\nYou see it.\n"
    )
    scenario, diags = parse_text(scenario_text(body))
    assert diags == []
    assert scenario.system == "Be grim."
    assert [t.kind.value for t in scenario.turns] == ["user", "dm", "toolcall", "dm"]


def test_unknown_section_suggests_the_right_one():
    _, diags = parse_text(scenario_text("## User\nHi\n\n## Narration\nHello.\n\n## DM\nHello.\n"))
    d = next(d for d in diags if d.code == "section-unknown")
    assert d.line == 9 and "Narrator" in d.hint


def test_headings_inside_code_fences_are_text():
    scenario, diags = parse_text(scenario_text("## User\nHi\n\n## DM\nA note:\n```\n## User\n```\nDone.\n"))
    assert diags == [] and len(scenario.turns) == 2
    assert "## User" in scenario.turns[1].text


def test_empty_section_is_an_error():
    _, diags = parse_text(scenario_text("## User\nHi\n\n## DM\n\n\n## User\nMore\n\n## DM\nOk.\n"))
    assert "section-empty" in codes(diags)


def test_system_after_a_turn_and_twice():
    _, diags = parse_text(scenario_text("## User\nHi\n\n## SYSTEM\nBe grim.\n\n## DM\nHello.\n"))
    assert codes(diags) == ["system-misplaced"]
    _, diags = parse_text(scenario_text("## SYSTEM\nA\n\n## SYSTEM\nB\n\n## User\nHi\n\n## DM\nHello.\n"))
    assert codes(diags) == ["system-duplicate"]


# --- turn order -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "## User\nHi\n\n## User\nHello?\n\n## DM\nYes.\n",
        "## User\nHi\n\n## DM\nYes.\n\n## DM\nAnd?\n",
        "## User\nHi\n\n## DM\n[roll: stealth]\n\n## TOOLCALL\n[roll: stealth] => 3\n\n## TOOLCALL\n[roll: stealth] => 4\n\n"
        "## DM\nNo.\n",
    ],
)
def test_same_kind_twice_in_a_row_is_an_error(body):
    _, diags = parse_text(scenario_text(body))
    assert "turn-repeated" in codes(diags)


def test_dm_may_open_the_scene():
    scenario, diags = parse_text(
        scenario_text("## DM\nThe fog rolls in.\n\n## User\nWe wait.\n\n## DM\nA bell tolls.\n")
    )
    assert diags == [] and len(scenario.dm_turns) == 2


def test_trailing_user_turn_is_dropped_with_a_warning():
    scenario, diags = parse_text(scenario_text("## User\nHi\n\n## DM\nHello.\n\n## User\nBye\n"))
    assert codes(diags) == ["turn-trailing-user"]
    assert diags[0].severity is Severity.WARNING
    assert [t.kind.value for t in scenario.turns] == ["user", "dm"]


def test_a_file_without_a_dm_turn_is_an_error():
    _, diags = parse_text(scenario_text("## SYSTEM\nBe grim.\n\n## User\nHi\n"))
    assert "scenario-no-dm-turn" in codes(diags)
    _, diags = parse_text(scenario_text(""))
    assert codes(diags) == ["scenario-no-dm-turn"]


# --- TOOLCALL sections ------------------------------------------------------------------------


def test_toolcall_results_in_all_arrow_spellings_and_multi_step():
    body = (
        "## User\nI swing at the goblin.\n\n"
        "## DM\nRoll to hit. [attack: longsword, target=goblin 2]\n\n"
        "## TOOLCALL\n[attack: longsword, target=goblin 2] -> 17, hit\n\n"
        "## DM\nIt connects. [damage: 1d8+3, type=slashing, target=goblin 2] and [condition: prone, target=goblin 2]\n\n"
        "## Roll\n- [damage: 1d8+3, type=slashing, target=goblin 2] → 9\n"
        "[condition:prone,target=Goblin 2] => applied\n\n"
        "## DM\nThe goblin falls and does not rise.\n"
    )
    scenario, diags = parse_text(scenario_text(body))
    assert diags == []
    tool1, tool2 = (t for t in scenario.turns if t.kind is TurnKind.TOOLCALL)
    assert [r.result for r in tool1.results] == ["17, hit"]
    assert [r.result for r in tool2.results] == ["9", "applied"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("## TOOLCALL\n[roll: stealth] => 3\n\n## DM\nHm.\n", "toolcall-orphan"),
        ("## User\nHi\n\n## TOOLCALL\n[roll: stealth] => 3\n\n## DM\nHm.\n", "toolcall-orphan"),
        ("## User\nHi\n\n## DM\nHello.\n\n## TOOLCALL\n[roll: stealth] => 3\n\n## DM\nHm.\n", "toolcall-orphan"),
        (
            "## User\nHi\n\n## DM\n[roll: stealth]\n\n## TOOLCALL\n[roll: perception] => 3\n\n## DM\nHm.\n",
            "toolcall-mismatch",
        ),
        (
            "## User\nHi\n\n## DM\n[roll: stealth]\n\n## TOOLCALL\n[roll: stealth] => 3\n[initiative] => go\n\n## DM\nHm.\n",
            "toolcall-mismatch",
        ),
        (
            "## User\nHi\n\n## DM\n[roll: stealth] [initiative]\n\n## TOOLCALL\n[roll: stealth] => 3\n\n## DM\nHm.\n",
            "toolcall-missing-result",
        ),
        (
            "## User\nHi\n\n## DM\n[roll: stealth]\n\n## TOOLCALL\n[roll: stealth] 3\n\n## DM\nHm.\n",
            "toolcall-bad-line",
        ),
        (
            "## User\nHi\n\n## DM\n[roll: stealth]\n\n## TOOLCALL\n[roll: stealth] =>\n\n## DM\nHm.\n",
            "toolcall-bad-line",
        ),
        ("## User\nHi\n\n## DM\n[roll: stealth]\n\n## TOOLCALL\nthe result was 3\n\n## DM\nHm.\n", "toolcall-bad-line"),
        ("## User\nHi\n\n## DM\n[roll: stealth]\n\n## TOOLCALL\n[roll: stealth] => 3\n", "toolcall-no-continuation"),
        (
            "## User\nHi\n\n## DM\n[roll: stealth]\n\n## TOOLCALL\n[roll: stealth] => 3\n\n## User\nOk\n\n## DM\nHm.\n",
            "toolcall-no-continuation",
        ),
    ],
)
def test_toolcall_errors(body, code):
    _, diags = parse_text(scenario_text(body))
    assert code in codes(diags), diags
    assert all(d.severity is Severity.ERROR for d in diags if d.code == code)


def test_mismatch_names_both_calls_and_the_dm_line():
    body = "## User\nHi\n\n## DM\nSneak. [roll: stealth]\n\n## TOOLCALL\n[roll: perception] => 3\n\n## DM\nHm.\n"
    _, diags = parse_text(scenario_text(body))
    (d,) = diags
    assert (
        d.line == 13 and "[roll: perception]" in d.message and "[roll: stealth]" in d.message and "line 9" in d.message
    )


def test_dm_turn_with_calls_may_be_followed_by_a_user_turn():
    _, diags = parse_text(
        scenario_text("## User\nHi\n\n## DM\nRoll! [initiative]\n\n## User\nI go first.\n\n## DM\nOk.\n")
    )
    assert diags == []


# --- calls inside DM text -----------------------------------------------------------------------


def test_call_problems_carry_the_exact_line():
    body = "## User\nHi\n\n## DM\nLine one.\nRoll [roll: perceptoin] now.\nThen [zap: 3] and [roll: stealth\n"
    _, diags = parse_text(scenario_text(body))
    found = {(d.code, d.line) for d in diags}
    assert found == {("tool-bad-arguments", 11), ("tool-unknown", 12), ("call-unclosed-bracket", 12)}


def test_unknown_tool_names_each_place():
    body = "## User\nHi\n\n## DM\n[fly: up]\n\n## User\nAgain\n\n## DM\nOnce more [fly: down]\n"
    _, diags = parse_text(scenario_text(body))
    unknown = [d for d in diags if d.code == "tool-unknown"]
    assert [d.line for d in unknown] == [10, 16]
    assert all("`fly`" in d.message for d in unknown)


def test_links_and_checkboxes_in_dm_text_are_not_calls():
    body = "## User\nHi\n\n## DM\nSee [the map](https://x.test/map).\n- [ ] find the key\n- [x] open the door\n"
    scenario, diags = parse_text(scenario_text(body))
    assert diags == [] and scenario.calls == []


def test_bracketed_prose_is_a_warning_with_a_lowercase_hint():
    _, diags = parse_text(scenario_text("## User\nHi\n\n## DM\nHe says [sighs] and [Roll: Stealth]\n"))
    assert codes(diags) == ["tool-unknown", "call-not-a-call"]
    assert "[roll: Stealth]" in diags[1].hint


def test_malformed_call_is_an_error():
    _, diags = parse_text(scenario_text("## User\nHi\n\n## DM\n[roll: dc=12, stealth]\n"))
    assert codes(diags) == ["call-malformed"] and "positional values first" in diags[0].message


def test_brackets_in_user_turns_are_not_checked():
    _, diags = parse_text(scenario_text("## User\nI shout [whatever]\n\n## DM\nOk.\n"))
    assert diags == []


# --- the catalog ----------------------------------------------------------------------------


def test_every_diagnostic_has_a_hint_and_documentation():
    from conftest import ROOT

    doc = (ROOT / "docs" / "diagnostics.md").read_text()
    for code, rule in RULES.items():
        assert rule.hint and rule.summary
        assert f"`{code}`" in doc, f"{code} is missing from docs/diagnostics.md"


# --- robustness -------------------------------------------------------------------------------

markdownish = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "## DM",
                "## User",
                "## TOOLCALL",
                "## SYSTEM",
                "## Roll",
                "## ???",
                "---",
                "```",
                "# Title",
                "Role: Dungeon Master",
                "World: X",
                "Party: A (b); C",
                "Location:",
                "**Tags:** a, b",
                "- Level: 99",
                "[roll: stealth]",
                "[roll: stealth] => 3",
                "[attack: x, target=y] -> hit",
                "[",
                "]",
                "[x]",
                "[ ]",
                "[a](b)",
                "[roll: dc=3, a]",
                "→",
                "=>",
                "",
                "  ",
            ]
        ),
        st.text(max_size=40),
    ),
    max_size=40,
).map("\n".join)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(markdownish)
def test_no_input_crashes_the_reader(text):
    scenario, diags = parse_text(text)
    for d in diags:
        assert d.code in RULES and d.line >= 1 and d.hint
    if not any(d.severity is Severity.ERROR for d in diags):
        assert scenario.dm_turns, "a scenario without errors has a DM turn"


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_no_bytes_crash_the_reader(data):
    from dmforge.scenarios.reader import decode_scenario

    text, diags = decode_scenario(data, "b.md")
    if text is not None:
        parse_text(text)
    else:
        assert len(diags) == 1
