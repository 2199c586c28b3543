"""The tool registry: the YAML file that says which calls exist and what their arguments mean.

Checking a call against it is plain data-driven code: each positional slot lists the kinds of
value it accepts, anything after the slots must be a declared flag, and keyword arguments have
one kind each. Dice expressions go through the `d20` grammar, the same one the playtest rolls with.
"""

from __future__ import annotations

import difflib
import re
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import d20
import lark
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dmforge.tools.syntax import ToolCall

# The kinds with a rule of their own; every other kind is the name of a list in `vocabularies`, so a
# new tool can bring its own words (`inventory_action: [add, remove, drop]`) without code.
BUILTIN_KINDS = ("save", "initiative", "death_save", "dice", "dice_or_number", "integer", "text")
VOCABULARY_KINDS = ("skill", "ability", "condition", "damage_type")  # the 5e lists every registry has
ArgKind = str  # a name from BUILTIN_KINDS or from the registry's vocabularies
VOCABULARY_NAME = re.compile(r"[a-z][a-z0-9_]*")


class PlacedError(ValueError):
    """A rule across the registry broken at a known place (`loc`, as in pydantic), so the error names its line."""

    def __init__(self, message: str, loc: tuple[str, ...]):
        super().__init__(message)
        self.loc = loc


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Slot(_Strict):
    name: str
    kinds: list[ArgKind] = Field(min_length=1)
    required: bool = True


class KeywordSpec(_Strict):
    kind: ArgKind
    required: bool = False
    min: int | None = None
    max: int | None = None


class ToolSpec(_Strict):
    summary: str
    positional: list[Slot] = []
    flags: list[str] = []
    exclusive: list[list[str]] = []
    keywords: dict[str, KeywordSpec] = {}


class Registry(_Strict):
    version: Literal[1]
    vocabularies: dict[str, list[str]]
    tools: dict[str, ToolSpec]

    @model_validator(mode="after")
    def _kinds_known(self) -> Registry:
        missing = [kind for kind in VOCABULARY_KINDS if kind not in self.vocabularies]
        if missing:
            raise ValueError(f"vocabularies is missing {', '.join(missing)}")
        for name, words in self.vocabularies.items():
            if not VOCABULARY_NAME.fullmatch(name) or name in BUILTIN_KINDS:
                raise PlacedError(
                    f"`{name}` cannot name a vocabulary: use lowercase letters, digits and `_`, and none of "
                    f"{', '.join(BUILTIN_KINDS)}",
                    ("vocabularies", name),
                )
            if not words or any(not str(w).strip() or str(w) != _fold(str(w)) for w in words):
                raise PlacedError(
                    f"vocabulary `{name}` needs at least one word, each lowercase with single spaces",
                    ("vocabularies", name),
                )
        known = set(BUILTIN_KINDS) | set(self.vocabularies)
        for tool, spec in self.tools.items():
            kinds = [
                (f"positional `{s.name}`", k, ("tools", tool, "positional", str(i), "kinds"))
                for i, s in enumerate(spec.positional)
                for k in s.kinds
            ]
            kinds += [
                (f"keyword `{key}`", kw.kind, ("tools", tool, "keywords", key)) for key, kw in spec.keywords.items()
            ]
            for where, kind, loc in kinds:
                if kind not in known:
                    close = difflib.get_close_matches(kind, sorted(known), n=1)
                    tip = f" Did you mean `{close[0]}`?" if close else ""
                    raise PlacedError(
                        f"tool `{tool}`, {where}: `{kind}` is not a kind.{tip} Kinds are {', '.join(BUILTIN_KINDS)}, "
                        f"or the name of a list under `vocabularies` ({', '.join(sorted(self.vocabularies))})",
                        loc,
                    )
        return self

    def words(self, kind: ArgKind) -> list[str] | None:
        """The allowed words of a vocabulary kind; None for a kind with a rule of its own."""
        return None if kind in BUILTIN_KINDS else self.vocabularies.get(kind)

    def names(self) -> list[str]:
        return sorted(self.tools)


class RegistryError(Exception):
    """The registry file itself is broken; the message names the file and the problem."""


DEFAULT_REGISTRY = "dmforge/tools/registry.yaml (built in)"


@cache
def load_registry(path: Path | None = None) -> Registry:
    """Load and validate a registry file; the built-in one when `path` is None."""
    label = str(path) if path else DEFAULT_REGISTRY
    try:
        if path is None:
            text = resources.files("dmforge.tools").joinpath("registry.yaml").read_text("utf-8")
        else:
            text = Path(path).read_text("utf-8")
        return Registry.model_validate(yaml.safe_load(text))
    except OSError as exc:
        raise RegistryError(f"cannot read the tool registry {label}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if mark is not None and mark.index >= len(text.rstrip()):
            # Found only at the end of the file: the entry left open is on the last line that has text.
            at = f", line {len(text.rstrip().splitlines())}"
            problem = "the file ends inside an unfinished entry (an unclosed `[`, `{` or quote?)"
        raise RegistryError(f"the tool registry {label}{at} is not valid YAML: {problem}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        placed = (first.get("ctx") or {}).get("error")
        loc = placed.loc if isinstance(placed, PlacedError) else tuple(str(p) for p in first["loc"])
        message = str(placed) if isinstance(placed, PlacedError) else first["msg"]
        line = yaml_line(text, loc)
        at = f", line {line}" if line else ""
        where = f" at `{'.'.join(loc)}`" if loc else ""
        raise RegistryError(f"the tool registry {label}{at} is invalid{where}: {message}") from exc


def yaml_line(text: str, loc: tuple[str, ...]) -> int | None:
    """The 1-based line of the YAML node at `loc` (keys and list indexes), or of the deepest one that exists."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if str(k.value) == part), None)
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _fold(value: str) -> str:
    return " ".join(value.split()).lower()


# The d20 grammar accepts `99999999d6` (rolling it takes minutes, or fails halfway), `1d0` (fails when
# rolled) and expressions of any length. Real 5e dice are far inside these bounds: the largest roll in
# the SRD is 40d6 (meteor swarm), the largest die d100, and `4d6kh3 + 2d8 + 1d4 + 5` is 22 characters.
MAX_DICE_TEXT = 64  # characters
MAX_DICE_TERMS = 10  # `NdS` terms in one expression
MAX_DICE_COUNT = 100  # dice in one term
MAX_DIE_SIDES = 1000  # and at least 2: a d0 cannot be rolled, and a d1 is a number
DICE_LIMITS = (
    f"the limits are {MAX_DICE_COUNT} dice per term, dice of 2 to {MAX_DIE_SIDES} sides, "
    f"{MAX_DICE_TERMS} dice terms and {MAX_DICE_TEXT} characters"
)
MAX_ARGUMENTS = 16  # the starter tools take at most 4; a call with thousands would be checked thousands of times
# The characters of the d20 grammar: a long run of only these is an attempt at dice, not a skill's name.
_DICE_TEXT = re.compile(r"[0-9dkhlpremia%+\-*/()<>=!,.\s]++")
_INT = re.compile(r"[+-]?[0-9]+")


def _clip(text: str, width: int = 60) -> str:
    """A value quoted in a message, cut short: a hostile call's value can be a megabyte long."""
    return text if len(text) <= width else text[: width - 1] + "…"


@lru_cache(maxsize=4096)  # a corpus repeats `1d6` and `2d6+3` thousands of times; d20's parser is slow
def _read_dice(expression: str) -> tuple[d20.Expression | None, str | None, int]:
    """(the tree, None, how many dice terms) for dice within the limits; (None, why, 0) for dice outside
    them; (None, None, 0) for text that is not in the d20 grammar. `expression` is at most MAX_DICE_TEXT long.
    """
    try:
        # d20's grammar directly: `d20.parse` caches trees under the text with its spaces removed, so `1 d6`
        # (not dice) would pass once `1d6` had been parsed, and fail in a fresh process.
        tree = d20.diceast.parser.parse(expression, start="expr")
    except (lark.LarkError, d20.RollValueError, ValueError, TypeError, RecursionError):
        return None, None, 0
    terms = 0
    stack: list[object] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, d20.diceast.Dice):
            terms += 1
            sides = 100 if node.size == "%" else node.size
            if not 1 <= node.num <= MAX_DICE_COUNT:
                return None, f"{node.num:,} dice in one term (`{node}`); {DICE_LIMITS}", 0
            if not 2 <= sides <= MAX_DIE_SIDES:
                return None, f"a die of {sides:,} sides (`{node}`); {DICE_LIMITS}", 0
        stack.extend(getattr(node, "children", ()))
    if terms > MAX_DICE_TERMS:
        return None, f"{terms} dice terms; {DICE_LIMITS}", 0
    return tree, None, terms


def dice_problem(expression: str) -> str | None:
    """Why `expression`, written as dice, is outside dmforge's dice limits; None when it is within them
    or is not dice at all (then the caller says what it should be)."""
    if len(expression) > MAX_DICE_TEXT:
        if _DICE_TEXT.fullmatch(expression):
            return f"{len(expression):,} characters; {DICE_LIMITS}"
        return None
    return _read_dice(expression)[1]


def parse_dice(expression: str, require_die: bool = True) -> d20.Expression | None:
    """The parsed expression, or None when it is not dice in the d20 grammar within dmforge's limits."""
    if len(expression) > MAX_DICE_TEXT:
        return None
    tree, _, terms = _read_dice(expression)
    if tree is None or (require_die and terms == 0):
        return None
    return tree


def _is_int(value: str) -> bool:
    # ASCII digits only: `²` is a digit to str.isdigit, but int() refuses it.
    return _INT.fullmatch(value) is not None


def matches_kind(value: str, kind: ArgKind, registry: Registry) -> bool:
    folded = _fold(value)
    match kind:
        case "save":
            ability, _, word = folded.rpartition(" ")
            return word == "save" and ability in registry.vocabularies["ability"]
        case "initiative":
            return folded == "initiative"
        case "death_save":
            return folded == "death save"
        case "dice":
            return parse_dice(value) is not None
        case "dice_or_number":
            return _is_int(folded) or parse_dice(value) is not None
        case "integer":
            return _is_int(folded)
        case "text":
            return bool(folded)
    return folded in (registry.words(kind) or ())


_KIND_WORDS = {
    "skill": "a skill",
    "ability": "an ability",
    "condition": "a 5e condition",
    "damage_type": "a 5e damage type",
    "save": "a saving throw such as `dexterity save`",
    "initiative": "`initiative`",
    "death_save": "`death save`",
    "dice": "a dice expression such as `2d6+3`",
    "dice_or_number": "a dice expression or a whole number",
    "integer": "a whole number",
    "text": "some text",
}


def kind_words(kind: ArgKind, registry: Registry) -> str:
    """How a message names what a kind accepts: `a skill`, or a user vocabulary's words."""
    if kind in _KIND_WORDS:
        return _KIND_WORDS[kind]
    words = registry.words(kind) or []
    shown = ", ".join(f"`{w}`" for w in words[:8]) + (", …" if len(words) > 8 else "")
    return f"one of {shown}"


def _suggestion(value: str, kinds: list[ArgKind], registry: Registry) -> str:
    words: list[str] = []
    for kind in kinds:
        if (vocabulary := registry.words(kind)) is not None:
            words += vocabulary
        elif kind == "save":
            words += [f"{a} save" for a in registry.vocabularies["ability"]]
    if len(value) > 64:  # no misspelling of a vocabulary word is this long, and difflib is slow on long text
        return ""
    close = difflib.get_close_matches(_fold(value), words, n=1, cutoff=0.6)
    return f" Did you mean `{close[0]}`?" if close else ""


def _dice_note(value: str, kinds: list[ArgKind] | tuple[ArgKind, ...]) -> str | None:
    """The dice limit `value` breaks, when it is written as dice where dice are accepted."""
    if "dice" not in kinds and "dice_or_number" not in kinds:
        return None
    return dice_problem(value)


def check_call(call: ToolCall, registry: Registry) -> list[str]:
    """Every way `call` breaks the registry, as sentences; empty when it is valid.

    An unknown tool name is not reported here: callers report it with its own code, because its
    fix (add the tool to the registry) differs from a bad argument's.
    """
    spec = registry.tools.get(call.name)
    if spec is None:
        return []
    given_count = len(call.positional) + len(call.keywords)
    if given_count > MAX_ARGUMENTS:
        return [f"`{call.name}` is given {given_count:,} arguments; a call takes at most {MAX_ARGUMENTS}"]
    problems: list[str] = []
    values = list(call.positional)
    for slot in spec.positional:
        if not values:
            if slot.required:
                expected = " or ".join(kind_words(k, registry) for k in slot.kinds)
                problems.append(f"`{call.name}` needs {expected} as its {slot.name}")
            continue
        value = values.pop(0)
        if not any(matches_kind(value, kind, registry) for kind in slot.kinds):
            expected = " or ".join(kind_words(k, registry) for k in slot.kinds)
            if note := _dice_note(value, slot.kinds):
                problems.append(
                    f"`{_clip(value)}` (the {slot.name} of `{call.name}`) is outside the dice limits: {note}"
                )
                continue
            problems.append(
                f"`{_clip(value)}` is not {expected} (the {slot.name} of `{call.name}`)."
                + _suggestion(value, slot.kinds, registry)
            )
    seen_flags: list[str] = []
    for value in values:
        flag = _fold(value)
        if flag in spec.flags:
            seen_flags.append(flag)
        elif spec.flags:
            problems.append(f"`{_clip(value)}` is not an option of `{call.name}` (options: {', '.join(spec.flags)})")
        else:
            problems.append(
                f"`{call.name}` takes {len(spec.positional)} positional value(s); `{_clip(value)}` is extra"
            )
    for group in spec.exclusive:
        both = [f for f in group if f in seen_flags]
        if len(both) > 1:
            problems.append(f"`{call.name}` cannot take {' and '.join(both)} together")
    given = dict(call.keywords)
    for key, value in given.items():
        kw = spec.keywords.get(key)
        if kw is None:
            allowed = ", ".join(f"{k}=" for k in spec.keywords) or "none"
            problems.append(f"`{call.name}` has no `{_clip(key)}=` argument (allowed: {allowed})")
            continue
        if not matches_kind(value, kw.kind, registry):
            shown = _clip(f"{key}={value}")
            if note := _dice_note(value, (kw.kind,)):
                problems.append(f"`{shown}` is outside the dice limits: {note}")
            else:
                problems.append(
                    f"`{shown}` is not {kind_words(kw.kind, registry)}." + _suggestion(value, [kw.kind], registry)
                )
        elif kw.kind == "integer" and not _within(value, kw.min, kw.max):
            problems.append(f"`{_clip(f'{key}={value}')}` is outside {kw.min}..{kw.max}")
    for key, kw in spec.keywords.items():
        if kw.required and key not in given:
            problems.append(f"`{call.name}` needs a `{key}=` argument, e.g. `{call.name}: ..., {key}=...`")
    return problems


def _within(text: str, low: int | None, high: int | None) -> bool:
    if low is None and high is None:
        return True
    if len(text.lstrip("+-0")) > 18:  # beyond any bound a registry sets; and int() refuses 4,300 digits
        return False
    value = int(text)
    return (low is None or value >= low) and (high is None or value <= high)
