"""Argument checks against the registry: SRD vocabularies, the d20 dice grammar, flags, keywords."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmforge.tools.registry import RegistryError, check_call, load_registry, parse_dice
from dmforge.tools.syntax import parse


@pytest.mark.parametrize(
    "call",
    [
        "[roll: perception]",
        "[roll: Sleight of Hand]",
        "[roll: animal handling, advantage, dc=15]",
        "[roll: dexterity save, dc=14]",
        "[roll: strength]",
        "[roll: initiative]",
        "[roll: death save]",
        "[roll: 4d6kh3]",
        "[roll: 1d20+5, disadvantage]",
        "[initiative]",
        "[attack: fire bolt, target=the cultist]",
        "[damage: 2d6+3, type=fire, target=ogre]",
        "[damage: 1d4]",
        "[heal: 2d4+2, target=Elara]",
        "[heal: 10, target=Bram]",
        "[condition: prone, target=ogre]",
        "[condition: poisoned, remove, target=Kess]",
    ],
)
def test_valid_calls_pass(call, registry):
    assert check_call(parse(call), registry) == []


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        ("[roll: perceptoin]", "Did you mean `perception`"),
        ("[roll: dex save]", "is not a skill"),
        ("[roll: wisdom save, dc=zero]", "not a whole number"),
        ("[roll: stealth, dc=99]", "outside 1..40"),
        ("[roll: stealth, advantage, disadvantage]", "cannot take advantage and disadvantage"),
        ("[roll: stealth, loudly]", "not an option of `roll`"),
        ("[roll]", "needs a skill"),
        ("[roll: 5]", "is not a skill"),  # a bare number is not a roll of dice
        ("[initiative: now]", "is extra"),
        ("[attack: longsword]", "needs a `target=`"),
        ("[attack: longsword, target=orc, range=far]", "has no `range=`"),
        ("[damage: lots, type=slashing]", "dice expression"),
        ("[damage: 1d8+, type=slashing]", "dice expression"),
        ("[damage: 1d8, type=slicing]", "Did you mean `slashing`"),
        ("[heal: a lot, target=Bo]", "dice expression or a whole number"),
        ("[condition: sleepy, target=Bo]", "5e condition"),
        ("[condition: prone]", "needs a `target=`"),
    ],
)
def test_invalid_arguments_are_explained(call, fragment, registry):
    problems = check_call(parse(call), registry)
    assert problems, call
    assert any(fragment in p for p in problems), problems


def test_unknown_tool_is_left_to_the_caller(registry):
    # Unknown names get their own diagnostic code (with a different fix), not an argument error.
    assert check_call(parse("[cast: fireball]"), registry) == []


def test_dice_use_the_d20_grammar():
    assert parse_dice("2d6+3") is not None
    assert parse_dice("4d6kh3") is not None
    assert parse_dice("(1d8+2)*2") is not None
    assert parse_dice("5") is None
    assert parse_dice("5", require_die=False) is not None
    assert parse_dice("2d") is None
    assert parse_dice("perception") is None


def test_registry_vocabularies_are_the_srd_lists(registry):
    assert len(registry.vocabularies["skill"]) == 18
    assert len(registry.vocabularies["ability"]) == 6
    assert len(registry.vocabularies["condition"]) == 15
    assert len(registry.vocabularies["damage_type"]) == 13
    assert set(registry.tools) == {"roll", "initiative", "attack", "damage", "heal", "condition"}


def test_custom_registry_file(tmp_path: Path):
    text = (Path(__file__).parents[1] / "src/dmforge/tools/registry.yaml").read_text()
    custom = tmp_path / "tools.yaml"
    custom.write_text(
        text + "\n  cast:\n    summary: Cast a spell.\n    positional:\n      - {name: spell, kinds: [text]}\n"
    )
    registry = load_registry(custom)
    assert "cast" in registry.tools
    assert check_call(parse("[cast: fireball]"), registry) == []


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("tools: [", "not valid YAML"),
        ("version: 1\nvocabularies: {}\ntools: {}\n", "missing skill"),
        (
            "version: 1\nvocabularies: {skill: [a], ability: [b], condition: [c], damage_type: [d]}\n"
            "tools: {roll: {summary: x, positional: [{name: a, kinds: [colour]}]}}\n",
            "tools.roll.positional.0.kinds",
        ),
        ("version: 2\nvocabularies: {}\ntools: {}\n", "version"),
    ],
)
def test_broken_registry_files_name_the_problem(tmp_path: Path, content, fragment):
    path = tmp_path / "tools.yaml"
    path.write_text(content)
    with pytest.raises(RegistryError, match=fragment) as info:
        load_registry(path)
    assert str(path) in str(info.value)


def test_missing_registry_file(tmp_path: Path):
    with pytest.raises(RegistryError, match="cannot read"):
        load_registry(tmp_path / "nope.yaml")


# --- hostile arguments: bounded dice, ASCII integers, capped argument lists ---------------------


@pytest.mark.parametrize(
    ("dice", "ok"),
    [
        ("100d6", True),
        ("101d6", False),
        ("1001d6", False),
        ("99999999d6", False),
        ("0d6", False),
        ("1d1000", True),
        ("1d1001", False),
        ("1d0", False),  # cannot be rolled
        ("1d1", False),  # a number, not a die
        ("d%", True),
        ("+".join(["1d6"] * 10), True),
        ("+".join(["1d6"] * 11), False),
        ("1d6+" + "1" * 60, True),  # 64 characters
        ("1d6+" + "1" * 61, False),
    ],
)
def test_dice_are_bounded(dice, ok):
    assert (parse_dice(dice) is not None) is ok, dice


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        ("[damage: 1001d6]", "1,001 dice in one term (`1001d6`)"),
        ("[damage: 1d0, type=fire]", "a die of 0 sides"),
        ("[roll: 99999999d6]", "99,999,999 dice"),
        ("[heal: 1d0, target=Bo]", "a die of 0 sides"),
        ("[damage: " + "1d6+" * 2500 + "1]", "10,001 characters"),
    ],
)
def test_dice_over_the_limits_say_the_limits(call, fragment, registry):
    (problem,) = check_call(parse(call), registry)
    assert "outside the dice limits" in problem and fragment in problem
    assert "100 dice per term, dice of 2 to 1000 sides, 10 dice terms and 64 characters" in problem
    assert len(problem) < 400


def test_only_what_is_written_as_dice_gets_the_dice_limits(registry):
    (problem,) = check_call(parse("[roll: " + "1d20+" * 20 + "1]"), registry)
    assert "101 characters" in problem and "dice limits" in problem
    (problem,) = check_call(parse("[roll: " + "a very long skill " * 20 + "]"), registry)
    assert "is not a skill" in problem and "dice limits" not in problem


@pytest.mark.parametrize("dc", ["²", "+-5", "١٢"])
def test_integers_are_ascii_digits(dc, registry):
    # str.isdigit accepts these, and int() then raised instead of a problem being reported.
    (problem,) = check_call(parse(f"[roll: stealth, dc={dc}]"), registry)
    assert "not a whole number" in problem


def test_huge_integers_are_out_of_range(registry):
    (problem,) = check_call(parse("[roll: stealth, dc=" + "9" * 5000 + "]"), registry)
    assert "outside 1..40" in problem and len(problem) < 200


def test_a_call_with_thousands_of_arguments_is_one_problem(registry):
    problems = check_call(parse("[roll: " + ", ".join(["stealth"] * 5000) + "]"), registry)
    assert problems == ["`roll` is given 5,000 arguments; a call takes at most 16"]


def _registry_with(tmp_path: Path, extra: str) -> Path:
    text = (Path(__file__).parents[1] / "src/dmforge/tools/registry.yaml").read_text()
    path = tmp_path / "tools.yaml"
    path.write_text(text.replace("vocabularies:\n", "vocabularies:\n  inventory_action: [add, remove]\n") + extra)
    return path


def test_a_tool_can_bring_its_own_vocabulary(tmp_path: Path):
    registry = load_registry(
        _registry_with(
            tmp_path,
            "\n  inventory:\n    summary: Change the party's inventory.\n    positional:\n"
            "      - {name: action, kinds: [inventory_action]}\n    keywords:\n      item: {kind: text, required: true}\n",
        )
    )
    assert check_call(parse("[inventory: Add, item=rope]"), registry) == []
    problems = check_call(parse("[inventory: ad, item=rope]"), registry)
    assert problems == ["`ad` is not one of `add`, `remove` (the action of `inventory`). Did you mean `add`?"]


@pytest.mark.parametrize(
    ("extra", "line", "fragment", "shown"),
    [
        (
            "\n  cast:\n    summary: x\n    positional:\n      - {name: spell, kinds: [spel]}\n",
            125,
            "`spel` is not",
            "spel",
        ),
        ("\n  cast:\n    summary: x\n    flavour: red\n", 124, "tools.cast.flavour", "flavour"),
        ("\n  cast: [\n", 122, "ends inside an unfinished entry", "cast: ["),
    ],
)
def test_a_broken_registry_names_the_line(tmp_path: Path, extra, line, fragment, shown):
    path = _registry_with(tmp_path, extra)
    with pytest.raises(RegistryError, match=fragment) as info:
        load_registry(path)
    assert f"line {line}" in str(info.value)
    assert shown in path.read_text().splitlines()[line - 1]


def test_dice_validity_does_not_depend_on_what_was_checked_before(registry):
    # d20.parse caches trees under the text with its spaces removed; dmforge must not inherit that.
    assert check_call(parse("[damage: 1d6]"), registry) == []
    assert check_call(parse("[damage: 1 d6]"), registry) != []
    assert check_call(parse("[damage: 4d6kh3]"), registry) == []
    assert check_call(parse("[damage: 4d6 kh3]"), registry) != []
