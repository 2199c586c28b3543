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
            "version: 1\nvocabularies: {skill: [], ability: [], condition: [], damage_type: []}\n"
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
