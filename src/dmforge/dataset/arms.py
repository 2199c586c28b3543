"""Arms swap: the same fight with other weapons of the same kind, each hit's damage dice following the SRD table.

The die of a `[damage: …]` call is decided by the weapon named in the attack just before it (a longbow
hits for 1d8 plus the modifier, a shortbow for 1d6), and nothing else in the context says so. On the
held-out turns the default model got that die right on 1 of 27 damage calls (round 11), writing 2d6 after
a longbow: the training corpus holds about 220 hits over some 50 weapons, too few pairs to learn the
table from. An augmented copy whose ranger carries a shortbow instead of a longbow, with every hit's damage
rewritten to 1d6+3, is one more pair per weapon, in a real scene.

A weapon is swapped only for another of its kind (a bow for a bow, an axe for an axe) so that the
narration ("the arrow takes it high in the chest") still fits and the damage type stays; only when every
hit it lands in the scene is followed by the table's die (doubled on a critical hit), so a versatile
weapon swung two-handed or a house rule is left as written; and only to a weapon whose dice could have
rolled each damage result the scene records, so the story's numbers stay possible.
"""

from __future__ import annotations

import copy
import random
import re
from dataclasses import dataclass

from dmforge.dataset.augment import calls_intact
from dmforge.scenarios.model import Scenario, TurnKind
from dmforge.tools.registry import Registry
from dmforge.tools.syntax import ToolCall, find_calls, scan_brackets

# (kind, dice) per weapon: the table in docs/dm-rules.md §7 (tests/test_arms.py keeps them equal), in
# kinds of weapons a scene can swap without its narration going wrong. Weapons whose kind has no other
# die (glaive and halberd, spear, javelin, sling) are not swapped.
WEAPONS: dict[str, tuple[str, str]] = {
    "shortbow": ("bow", "1d6"),
    "longbow": ("bow", "1d8"),
    "hand crossbow": ("crossbow", "1d6"),
    "light crossbow": ("crossbow", "1d8"),
    "heavy crossbow": ("crossbow", "1d10"),
    "scimitar": ("sword", "1d6"),
    "longsword": ("sword", "1d8"),
    "greatsword": ("sword", "2d6"),
    "handaxe": ("axe", "1d6"),
    "battleaxe": ("axe", "1d8"),
    "greataxe": ("axe", "1d12"),
    "dagger": ("blade", "1d4"),
    "shortsword": ("blade", "1d6"),
    "rapier": ("blade", "1d8"),
    "club": ("bludgeon", "1d4"),
    "mace": ("bludgeon", "1d6"),
    "warhammer": ("bludgeon", "1d8"),
    "maul": ("bludgeon", "2d6"),
}

# Copy indices of the renaming an arms copy also gets, past any `augment_copies` can reach (at most 10),
# so an arms copy never reuses a renamed copy's party.
ARMS_RENAME = 100

_DICE = re.compile(r"^(\d+)d(\d+)([+-]\d+)?$")
_FIRST_NUMBER = re.compile(r"\d+")


@dataclass
class _Hit:
    """One damage call that follows a weapon's hit: where it is and what it rolled."""

    weapon: str
    turn: int  # index of the DM turn that writes the damage call
    call: int  # index of the damage call among that turn's calls
    crit: int  # 1, or 2 when the dice were doubled for a critical hit
    modifier: str  # "+3", or "" when none
    result: int | None  # the damage the TOOLCALL after it records, when it records one


def _dice(text: str) -> tuple[int, int, str] | None:
    match = _DICE.match(text.replace(" ", ""))
    return (int(match[1]), int(match[2]), match[3] or "") if match else None


def _damage_result(scenario: Scenario, turn: int, call: ToolCall) -> int | None:
    """The number the TOOLCALL after DM turn `turn` records for `call`, if that turn records it."""
    after = scenario.turns[turn + 1] if turn + 1 < len(scenario.turns) else None
    if after is None or after.kind is not TurnKind.TOOLCALL:
        return None
    for result in after.results:
        if result.call.normalized() == call.normalized():
            number = _FIRST_NUMBER.search(result.result)
            return int(number[0]) if number else None
    return None


def _find_hits(scenario: Scenario) -> tuple[list[_Hit], set[str]]:
    """Every damage call that follows a table weapon's hit, and the weapons whose hits break the table."""
    hits: list[_Hit] = []
    broken: set[str] = set()
    turns = scenario.turns
    for index, turn in enumerate(turns[:-1]):
        reply = turns[index + 1]
        if turn.kind is not TurnKind.TOOLCALL or reply.kind is not TurnKind.DM:
            continue
        damage = [(k, c) for k, c in enumerate(reply.calls) if c.name == "damage" and c.positional]
        for result in turn.results:
            call = result.call
            if call.name != "attack" or not call.positional or "hit" not in result.result.lower():
                continue
            weapon = call.positional[0].strip().lower()
            if weapon not in WEAPONS:
                continue
            # The hit's damage is the next damage call at the same target (or the next one, untargeted).
            target = (call.keyword("target") or "").lower()
            pick = next((d for d in damage if not target or (d[1].keyword("target") or target).lower() == target), None)
            rolled = _dice(pick[1].positional[0]) if pick else None
            count, size = _dice(WEAPONS[weapon][1])[:2]
            if pick is None or rolled is None or rolled[1] != size or rolled[0] not in (count, 2 * count):
                broken.add(weapon)
                continue
            damage.remove(pick)
            hits.append(
                _Hit(
                    weapon,
                    index + 1,
                    pick[0],
                    rolled[0] // count,
                    rolled[2],
                    _damage_result(scenario, index + 1, pick[1]),
                )
            )
    return hits, broken


def _new_dice(hit: _Hit, weapon: str) -> str:
    count, size, _ = _dice(WEAPONS[weapon][1])
    return f"{count * hit.crit}d{size}{hit.modifier}"


def _possible(hit: _Hit, weapon: str) -> bool:
    """The new dice could have rolled the damage the scene records."""
    if hit.result is None:
        return True
    count, size, _ = _dice(WEAPONS[weapon][1])
    count *= hit.crit
    modifier = int(hit.modifier or 0)
    return count + modifier <= hit.result <= count * size + modifier


def _plan_swaps(hits: list[_Hit], broken: set[str], rng: random.Random) -> dict[str, str]:
    """Each swappable weapon of the scene → another of its kind with a different die, chosen by `rng`."""
    plan: dict[str, str] = {}
    for weapon in sorted({h.weapon for h in hits} - broken):
        kind, dice = WEAPONS[weapon]
        mine = [h for h in hits if h.weapon == weapon]
        choices = [
            w
            for w, (k, d) in WEAPONS.items()
            if k == kind and d != dice and w not in plan.values() and all(_possible(h, w) for h in mine)
        ]
        if choices:
            plan[weapon] = rng.choice(choices)
    return plan


def _word_swapper(plan: dict[str, str]):
    """Whole-word, case-keeping replacement of each weapon's name (and its plural) in prose and calls."""
    pattern = re.compile(
        r"\b(" + "|".join(re.escape(w) for w in sorted(plan, key=len, reverse=True)) + r")(s?)\b", re.IGNORECASE
    )

    def swap(match: re.Match) -> str:
        new = plan[match[1].lower()]
        return (new[0].upper() + new[1:] if match[1][0].isupper() else new) + match[2]

    return lambda text: pattern.sub(swap, text)


def _rewrite_dice(text: str, call_index: int, dice: str) -> str:
    """`text` with the dice of its `call_index`-th call replaced, the rest of the bracket as written."""
    calls = [b for b in scan_brackets(text) if b.call is not None]
    bracket = calls[call_index]
    old = bracket.call.positional[0]
    raw = bracket.text.replace(old, dice, 1)
    lines = text.split("\n")
    line = lines[bracket.line]
    lines[bracket.line] = line[: bracket.column] + raw + line[bracket.column + len(bracket.text) :]
    return "\n".join(lines)


def swap_arms(scenario: Scenario, registry: Registry, seed: int, copy_index: int) -> Scenario:
    """A copy of `scenario` with its weapons swapped and their damage rewritten; `scenario` itself when no
    weapon in it can be swapped, or when a swapped call would no longer validate or match its result."""
    rng = random.Random(f"arms:{seed}:{scenario.id}:{copy_index}")
    hits, broken = _find_hits(scenario)
    plan = _plan_swaps(hits, broken, rng)
    if not plan:
        return scenario
    swapped = copy.deepcopy(scenario)
    swap = _word_swapper(plan)
    swapped.header.party = swap(swapped.header.party)
    swapped.system = swap(swapped.system) if swapped.system else None
    # Dice first, by call position in the original text: swapping names does not move the calls.
    for hit in sorted(hits, key=lambda h: (h.turn, -h.call)):
        if hit.weapon in plan:
            turn = swapped.turns[hit.turn]
            turn.text = _rewrite_dice(turn.text, hit.call, _new_dice(hit, plan[hit.weapon]))
    for index, turn in enumerate(swapped.turns):
        turn.text = swap(turn.text)
        if turn.kind is TurnKind.DM:
            turn.calls = find_calls(turn.text)  # a call the swap broke drops out here, and calls_intact sees it
        elif turn.kind is TurnKind.TOOLCALL:
            # The TOOLCALL echoes calls of the DM turn before it, which now read differently: each result
            # takes the new form of the call it echoed.
            was = [c.normalized() for c in scenario.turns[index - 1].calls]
            now = swapped.turns[index - 1].calls
            for result in turn.results:
                if (key := result.call.normalized()) in was:
                    result.call = now[was.index(key)]
            turn.text = "\n".join(f"{r.call} => {r.result}" for r in turn.results)
    return swapped if calls_intact(scenario, swapped, registry) else scenario
