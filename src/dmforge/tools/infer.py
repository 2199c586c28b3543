"""A registry entry proposed from a new tool's uses in the scenarios, and the conflicts found on the way.

The rules are the registry's own, read backwards:
- positional values every use gives are required slots; values only some uses give are flags when they
  are a few bare words (`advantage`), else optional slots;
- a slot's kind is the narrowest that fits every value: a 5e vocabulary (or several, as `roll` takes a
  skill or an ability), dice, a whole number, or dice-or-number; a few words repeated across many uses
  become a vocabulary of the tool's own; anything else is text;
- a keyword is required when every use gives it.
What the uses disagree on is not hidden in the proposal: it is listed as a conflict, with the places,
so that the fix can be made in the scenarios rather than baked into the registry.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass, field

from dmforge.tools.registry import (
    BUILTIN_KINDS,
    VOCABULARY_KINDS,
    KeywordSpec,
    Registry,
    Slot,
    ToolSpec,
    check_call,
    matches_kind,
)
from dmforge.tools.scan import CallUse

MAX_FLAGS = 6  # more distinct trailing words than this are values, not options
MAX_OWN_WORDS = 8  # a tool's own vocabulary: at most this many words...
MIN_REPEATS = 2  # ...each used this many times on average, or the words are free text
FEW_USES = 3  # below this, "every use gives it" says little: the proposal says so
_WORD = re.compile(r"[a-z][a-z'-]*( [a-z][a-z'-]*){0,2}")  # up to three plain words, as 5e's `sleight of hand`
_BARE = re.compile(r"[a-z][a-z_]*")
# The kinds tried for a value, narrowest first; `text` fits anything and comes last.
_SPECIFIC = ("save", "initiative", "death_save", "integer", "dice")


@dataclass
class Proposal:
    name: str
    spec: ToolSpec
    vocabularies: dict[str, list[str]] = field(default_factory=dict)  # new word lists the entry uses
    conflicts: list[str] = field(default_factory=list)
    uses: int = 0

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "uses": self.uses,
            "entry": self.spec.model_dump(mode="json", exclude_defaults=True),
            "vocabularies": self.vocabularies,
            "conflicts": self.conflicts,
        }


def _fold(value: str) -> str:
    return " ".join(value.split()).lower()


def _places(uses: list[CallUse], limit: int = 3) -> str:
    shown = ", ".join(u.place for u in uses[:limit])
    return shown + (f" and {len(uses) - limit} more" if len(uses) > limit else "")


def _kinds_of(value: str, registry: Registry) -> list[str]:
    """Every kind `value` fits, except text (which all values fit)."""
    kinds = [k for k in _SPECIFIC if matches_kind(value, k, registry)]
    kinds += [k for k in sorted(registry.vocabularies) if matches_kind(value, k, registry)]
    return kinds


def _cover(values: list[str], registry: Registry) -> list[str] | None:
    """The fewest kinds that together fit every value (greedy), or None when some value fits none."""
    fits = {v: set(_kinds_of(v, registry)) for v in set(values)}
    if not all(fits.values()):
        return None
    if all("integer" in f or "dice" in f for f in fits.values()):
        ints, dice = (any(k in f for f in fits.values()) for k in ("integer", "dice"))
        if ints and dice and not all("dice" in f for f in fits.values()):
            return ["dice_or_number"]
    chosen: list[str] = []
    left = set(fits)
    while left:
        counts = Counter(k for v in left for k in fits[v])
        # The kind fitting most of what is left; ties go to the 5e lists, then the specific rules, by name.
        best = max(counts, key=lambda k: (counts[k], k in VOCABULARY_KINDS, k in BUILTIN_KINDS, k))
        chosen.append(best)
        left = {v for v in left if best not in fits[v]}
    return chosen


def _own_words(values: list[str]) -> list[str] | None:
    """A few plain words, each repeated: a closed list of the tool's own (add, remove, drop)."""
    distinct = sorted(set(values))
    few = 1 < len(distinct) <= MAX_OWN_WORDS and len(values) >= MIN_REPEATS * len(distinct)
    return distinct if few and all(_WORD.fullmatch(v) for v in distinct) else None


def _slot_name(kinds: list[str], tool: str, taken: set[str]) -> str:
    base = {"dice": "dice", "integer": "amount", "dice_or_number": "amount", "text": "name"}.get(kinds[0], kinds[0])
    base = base.removeprefix(f"{tool}_")  # a slot of the tool's own words is named after the words' list
    name, n = base, 2
    while name in taken:
        name, n = f"{base}{n}", n + 1
    taken.add(name)
    return name


def _value_kinds(
    tool: str, what: str, values: list[tuple[str, CallUse]], registry: Registry, proposal: Proposal
) -> list[str]:
    """The kinds for one slot or keyword; a new vocabulary or a conflict is recorded on `proposal`."""
    folded = [_fold(v) for v, _ in values]
    kinds = _cover(folded, registry)
    if kinds is not None:
        return kinds
    if (words := _own_words(folded)) is not None:
        name = f"{tool}_{what}".replace("-", "_")
        proposal.vocabularies[name] = words
        return [name]
    typed = [(v, u) for v, u in values if _kinds_of(_fold(v), registry)]
    if typed and len(typed) * 2 > len(values):  # mostly dice or numbers, with a few words among them
        odd = [u for v, u in values if not _kinds_of(_fold(v), registry)]
        kind = _cover([_fold(v) for v, _ in typed], registry) or ["text"]
        proposal.conflicts.append(
            f"{what}: {len(typed)} uses give {' or '.join(kind)}, but {len(odd)} other text "
            f"({_places(odd)}); proposed `text`, which accepts both. Fix those uses to keep `{kind[0]}`."
        )
    return ["text"]


def propose(name: str, uses: list[CallUse], registry: Registry) -> Proposal:
    """A registry entry for the unregistered tool `name` that every one of `uses` fits."""
    proposal = Proposal(name, ToolSpec(summary=f"(describe `{name}`; inferred from {len(uses)} uses)"), uses=len(uses))
    close = difflib.get_close_matches(name, registry.names(), n=1, cutoff=0.75)
    if close:
        proposal.conflicts.append(
            f"`{name}` looks like a misspelling of the registered tool `{close[0]}` ({_places(uses)}); "
            f"if it is, fix the scenarios instead of adding it."
        )
    counts = [len(u.call.positional) for u in uses]
    required = min(counts)
    trailing = [(v, u) for u in uses for v in u.call.positional[required:]]
    flags: list[str] = []
    if trailing and all(_BARE.fullmatch(_fold(v)) for v, _ in trailing):
        distinct = list(dict.fromkeys(_fold(v) for v, _ in trailing))
        if len(distinct) <= MAX_FLAGS:
            flags = distinct
    taken: set[str] = set()
    slots: list[Slot] = []
    positions = required if flags else max(counts)
    for index in range(positions):
        values = [(u.call.positional[index], u) for u in uses if len(u.call.positional) > index]
        what = "option" if index else "subject"
        kinds = _value_kinds(name, what if index == 0 else f"{what}{index + 1}", values, registry, proposal)
        slots.append(Slot(name=_slot_name(kinds, name, taken), kinds=kinds, required=index < required))
    if not flags and max(counts) > required:
        proposal.conflicts.append(
            f"some uses give {required} positional value(s) and others up to {max(counts)}; the extra ones are "
            "optional slots. If they are options (like `advantage`), they should be bare words."
        )
    keywords: dict[str, KeywordSpec] = {}
    keys = list(dict.fromkeys(k for u in uses for k, _ in u.call.keywords))
    for key in keys:
        values = [(v, u) for u in uses for k, v in u.call.keywords if k == key]
        kinds = _value_kinds(name, key, values, registry, proposal)
        if len(kinds) > 1:  # a keyword has one kind: the widest that fits all the values
            kinds = ["dice_or_number"] if set(kinds) <= {"integer", "dice", "dice_or_number"} else ["text"]
        keywords[key] = KeywordSpec(kind=kinds[0], required=len(values) == len(uses))
        if key in flags or any(_fold(v) == key for u in uses for v in u.call.positional):
            proposal.conflicts.append(f"`{key}` is used both as `{key}=` and as a bare value; pick one spelling.")
    if len(uses) < FEW_USES and (keywords or slots):
        proposal.conflicts.append(
            f"only {len(uses)} use(s): which arguments are required is a guess. Check the entry, and write more "
            "scenarios with this tool: a model learns a tool from dozens of examples, not a few."
        )
    proposal.spec = ToolSpec(summary=proposal.spec.summary, positional=slots, flags=flags, keywords=keywords)
    return proposal


def check_proposal(proposal: Proposal, uses: list[CallUse], registry: Registry) -> Registry:
    """The registry extended with the proposal; every use must fit it (a bug in inference otherwise)."""
    extended = Registry.model_validate(
        {
            "version": 1,
            "vocabularies": {**registry.vocabularies, **proposal.vocabularies},
            "tools": {**registry.tools, proposal.name: proposal.spec},
        }
    )
    for use in uses:
        problems = check_call(use.call, extended)
        if problems:
            proposal.conflicts.append(f"{use.place}: `{use.call}` still fails the proposed entry: {problems[0]}")
    return extended
