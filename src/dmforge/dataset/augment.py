"""Augmentation: the same scene with a different party and place, renamed consistently.

A renamed copy teaches the model that names are slots, not part of the story, so it does not
memorize "Thorin" as the only dwarf who looks for tracks. Every name is replaced as a whole
word everywhere: header, system prompt, turns, call arguments (`target=Thorin`) and the
TOOLCALL lines that echo them. A copy whose calls no longer parse, validate or match their
results is discarded, so augmentation can never break a tool call.
"""

from __future__ import annotations

import copy
import random
import re

from dmforge.scenarios.model import Scenario, TurnKind
from dmforge.tools.registry import Registry, check_call
from dmforge.tools.syntax import CallSyntaxError, find_calls, parse

FIRST_NAMES = [
    "Aldric",
    "Brakka",
    "Caelith",
    "Dagny",
    "Eirwen",
    "Fenwick",
    "Garrow",
    "Hesper",
    "Ilsabet",
    "Jorund",
    "Kestrel",
    "Liora",
    "Marrow",
    "Nyssa",
    "Orrin",
    "Perrin",
    "Quill",
    "Rowena",
    "Sorrel",
    "Tamsin",
    "Ulric",
    "Vesna",
    "Wynn",
    "Xanthe",
    "Yorick",
    "Zosia",
    "Agnar",
    "Belphine",
    "Corvin",
    "Delphi",
    "Esker",
    "Faelan",
    "Gisla",
    "Halvard",
    "Isolde",
    "Jessamy",
    "Korrin",
    "Lune",
    "Mireille",
    "Nodric",
]
SURNAMES = [
    "Ashgrove",
    "Blackbriar",
    "Copperkettle",
    "Duskwalker",
    "Emberfall",
    "Frostmantle",
    "Greyhollow",
    "Hearthstone",
    "Ironbough",
    "Juniperhill",
    "Kettleburn",
    "Longmere",
    "Mossbeard",
    "Nightbloom",
    "Oakenshield",
    "Pellwright",
    "Quarrystone",
    "Ravenmoor",
    "Stonehew",
    "Thornwick",
    "Underbridge",
    "Valewind",
    "Whitlock",
    "Yarrowby",
]
PLACES = [
    "Brackenford",
    "Cinderhollow",
    "Dunmarrow",
    "Eelwater",
    "Fallowmere",
    "Gloamwick",
    "Harrowgate",
    "Ivybridge",
    "Kestrel Point",
    "Lanternfall",
    "Mirewatch",
    "Nettlecombe",
    "Oxbow Crossing",
    "Pikestaff",
    "Quietwater",
    "Rookhaven",
    "Saltmarsh Rise",
    "Thistledown",
    "Umberlee Reach",
    "Wyrmrest Hollow",
]

_MIN_NAME = 3  # shorter "names" (initials, "Bo") would hit ordinary words


def _place_name(scenario: Scenario) -> str:
    """The proper name in `Location: The Ashen Badlands, a day ahead...` → `Ashen Badlands`.

    A leading article is dropped because prose says "the Ashen Badlands" in lower case.
    """
    place = scenario.header.location.split(",")[0].strip()
    first, _, rest = place.partition(" ")
    return rest if first.lower() in ("the", "a", "an") and rest else place


def _names_to_replace(scenario: Scenario, registry: Registry) -> list[str]:
    protected = {w.lower() for words in registry.vocabularies.values() for w in words} | set(registry.tools)
    names = []
    for member in scenario.header.party_members:
        names.append(member.name)
        names += member.name.split()
    names.append(_place_name(scenario))
    return [n for n in dict.fromkeys(names) if len(n) >= _MIN_NAME and n.lower() not in protected and n[0].isupper()]


def _plan(scenario: Scenario, registry: Registry, rng: random.Random, text: str) -> dict[str, str]:
    """Map each name to a fresh one; full names map onto the new first and last name consistently."""
    mapping: dict[str, str] = {}
    used = set(re.findall(r"\w+", text))
    firsts = [n for n in FIRST_NAMES if n not in used]
    lasts = [n for n in SURNAMES if n not in used]
    places = [p for p in PLACES if p.split()[0] not in used]
    rng.shuffle(firsts)
    rng.shuffle(lasts)
    rng.shuffle(places)
    candidates = set(_names_to_replace(scenario, registry))
    for member in scenario.header.party_members:
        parts = member.name.split()
        if not parts or member.name not in candidates or not firsts:
            continue
        new_parts = [firsts.pop()] + [lasts.pop() for _ in parts[1:] if lasts]
        if len(new_parts) != len(parts):
            continue
        for old, new in zip(parts, new_parts, strict=True):
            if old in candidates:
                mapping.setdefault(old, new)
        mapping[member.name] = " ".join(mapping.get(p, p) for p in parts)
    place = _place_name(scenario)
    if place in candidates and places:
        mapping[place] = places.pop()
    return mapping


def _renamer(mapping: dict[str, str]):
    if not mapping:
        return lambda text: text
    # Longest first, so "Thorin Ironfist" is replaced as a whole before "Thorin" alone.
    pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True)) + r")\b")
    return lambda text: pattern.sub(lambda m: mapping[m.group(1)], text)


def calls_intact(original: Scenario, renamed: Scenario, registry: Registry) -> bool:
    for index, (before, after) in enumerate(zip(original.turns, renamed.turns, strict=True)):
        if after.kind is TurnKind.DM:
            if [c.name for c in after.calls] != [c.name for c in before.calls]:
                return False
            if any(check_call(c, registry) for c in after.calls):
                return False
        if after.kind is TurnKind.TOOLCALL:
            expected = [c.normalized() for c in renamed.turns[index - 1].calls]
            if [r.call.normalized() for r in after.results] != expected:
                return False
    return True


def rename_scenario(scenario: Scenario, registry: Registry, seed: int, copy_index: int) -> Scenario | None:
    """A renamed copy of `scenario`, or None when nothing can be renamed or a call would break."""
    rng = random.Random(f"{seed}:{scenario.id}:{copy_index}")
    all_text = "\n".join([scenario.system or "", *(t.text for t in scenario.turns)])
    mapping = _plan(scenario, registry, rng, all_text)
    if not mapping:
        return None
    rename = _renamer(mapping)
    renamed = copy.deepcopy(scenario)
    header = renamed.header
    header.party, header.location = rename(header.party), rename(header.location)
    renamed.system = rename(renamed.system) if renamed.system else None
    try:
        for turn in renamed.turns:
            turn.text = rename(turn.text)
            turn.speaker = rename(turn.speaker) if turn.speaker else None
            if turn.kind is TurnKind.DM:
                turn.calls = find_calls(turn.text)
            for result in turn.results:
                result.call = parse(rename(str(result.call)))
                result.result = rename(result.result)
    except CallSyntaxError:
        return None
    if not calls_intact(scenario, renamed, registry):
        return None
    return renamed
