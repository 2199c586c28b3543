"""Arms swap: a copy of a fight with other weapons of each kind, and every hit's damage dice by the SRD table."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

from conftest import CORPUS, ROOT, parse_text
from dmforge.config import DataConfig
from dmforge.dataset import build_dataset
from dmforge.dataset.arms import WEAPONS, swap_arms
from dmforge.scenarios import TurnKind
from dmforge.tools.registry import check_call, load_registry

FIGHT = textwrap.dedent(
    """\
    # Wolves at the Ford

    Role: Dungeon Master
    World: The Greenmarch
    Location: Hollin Ford, at dusk
    Party: Ilse (elf ranger 3); Brom (dwarf fighter 3)

    ## User
    Ilse: I loose an arrow from my Longbow at the lead wolf.

    ## DM
    [attack: longbow, target=wolf 1]
    Ilse draws, holds a breath, and lets fly.

    ## TOOLCALL
    [attack: longbow, target=wolf 1] => 15, hit

    ## DM
    [damage: 1d8+3, type=piercing, target=wolf 1]
    The arrow takes it behind the shoulder.

    ## TOOLCALL
    [damage: 1d8+3, type=piercing, target=wolf 1] => 7

    ## DM
    Seven damage: the wolf stumbles. Brom, it turns on you. What do you do?

    ## User
    Brom: I bring my longsword down on it while it is pinned under the log.

    ## DM
    [attack: longsword, target=wolf 1]

    ## TOOLCALL
    [attack: longsword, target=wolf 1] => 20, hit

    ## DM
    [damage: 2d8+3, type=slashing, target=wolf 1]
    A critical hit: the longsword bites deep.

    ## TOOLCALL
    [damage: 2d8+3, type=slashing, target=wolf 1] => 12

    ## DM
    Twelve damage, and the wolf lies still.
    """
)


def _swap(text: str, copy_index: int = 1):
    scenario, diagnostics = parse_text(text, category="combat")
    assert scenario is not None, diagnostics
    return scenario, swap_arms(scenario, load_registry(), seed=1234, copy_index=copy_index)


def _damage(scenario) -> list[str]:
    return [c.positional[0] for t in scenario.dm_turns for c in t.calls if c.name == "damage"]


def test_weapon_table_is_the_rulebooks():
    """The code's table and docs/dm-rules.md's agree: the corpus is written by the one, the copies by the other."""
    rules = (ROOT / "docs" / "dm-rules.md").read_text()
    table = rules[rules.index("### Weapons and their damage dice") :].split("\n\n")[1]
    documented = {}
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for names, dice in ((cells[0], cells[1]), (cells[4], cells[5])):
            for name in filter(None, names.split(", ")):
                documented[name] = re.match(r"\d+d\d+", dice)[0]
    assert {w: d for w, (_, d) in WEAPONS.items()} == {w: documented[w] for w in WEAPONS}


def test_a_swapped_fight_rolls_each_new_weapons_die_everywhere_it_appears():
    scenario, swapped = _swap(FIGHT)
    assert swapped is not scenario
    bow = swapped.turns[1].calls[0].positional[0]
    sword = swapped.turns[7].calls[0].positional[0]
    assert bow == "shortbow" and sword in ("scimitar", "greatsword")
    # The player's line keeps its capital, the TOOLCALL echoes the new call, the narration names it.
    assert "from my Shortbow" in swapped.turns[0].text
    assert f"the {sword} bites deep" in swapped.turns[9].text
    assert _damage(swapped) == ["1d6+3", "4d6+3" if sword == "greatsword" else "2d6+3"]  # a critical doubles
    registry = load_registry()
    for index, turn in enumerate(swapped.turns):
        assert all(check_call(c, registry) == [] for c in turn.calls)
        if turn.kind is TurnKind.TOOLCALL:
            assert [r.call for r in turn.results] == swapped.turns[index - 1].calls
    assert [r.result for t in swapped.turns for r in t.results] == [r.result for t in scenario.turns for r in t.results]
    assert "longbow" in scenario.turns[1].text, "the original is not touched"


def test_the_copy_is_the_same_for_the_same_seed_and_differs_between_copies():
    _, first = _swap(FIGHT, copy_index=1)
    _, again = _swap(FIGHT, copy_index=1)
    assert [t.text for t in first.turns] == [t.text for t in again.turns]
    swords = {_swap(FIGHT, copy_index=k)[1].turns[7].calls[0].positional[0] for k in range(1, 9)}
    assert swords == {"scimitar", "greatsword"}


def test_a_weapon_off_the_table_or_rolled_otherwise_is_left_as_written():
    # A longsword swung two-handed rolls 1d10: the scene follows a rule the swap cannot see.
    two_handed = FIGHT.replace("2d8+3", "2d10+3")
    _, swapped = _swap(two_handed)
    assert swapped.turns[7].calls[0].positional[0] == "longsword" and _damage(swapped)[1] == "2d10+3"
    assert swapped.turns[1].calls[0].positional[0] == "shortbow", "the bow is still swapped"
    # A ghoul's claws are not a weapon of the table.
    scenario, claws = _swap(FIGHT.replace("longbow", "claws").replace("Longbow", "claws").replace("longsword", "bite"))
    assert claws is scenario


def test_no_swap_to_a_die_that_could_not_have_rolled_the_recorded_damage():
    # 11 on 1d8+3 is possible; on a shortbow's 1d6+3 (at most 9) it is not, and a bow has no other kind.
    _, swapped = _swap(FIGHT.replace("=> 7", "=> 11"))
    assert swapped.turns[1].calls[0].positional[0] == "longbow"
    assert _damage(swapped)[0] == "1d8+3"
    assert swapped.turns[7].calls[0].positional[0] != "longsword", "the sword's 12 fits its new dice"


def test_build_adds_arms_copies_of_training_fights_only(tmp_path: Path):
    config = DataConfig(scenarios=CORPUS, out=tmp_path / "dataset", arms_copies=2)
    stats, out = build_dataset(config, load_registry())
    rows = {s: [json.loads(line) for line in (out / f"{s}.jsonl").open()] for s in ("train", "validation")}
    armed = [r for r in rows["train"] if "#arms" in r["id"]]
    assert armed and all(r["augmented"] for r in armed)
    assert not any("#arms" in r["id"] for r in rows["validation"])
    assert stats.augmented == len(armed)
    # Only scenes where a weapon of the table hits are copied, and every copy asks for damage.
    assert len({r["id"].split("#")[0] for r in armed}) < stats.scenarios["train"] / 3
    assert all(any("[damage:" in m["content"] for m in r["messages"] if m["role"] == "assistant") for r in armed)
