"""The tool registry as a llama.cpp grammar (GBNF): free narration, and every `[` a valid call.

Constrained decoding makes the model's calls well formed: whatever it writes after `[` must be
a registered tool with arguments its registry entry accepts (vocabulary words, dice, numbers in
range, required keywords present), written in the canonical form the app's agent parses:
`[name: positional, flag, key=value]`. Narration is free text without square brackets.

The grammar goes to the app with the model (Cactus 0.2.x passes `grammar` to llama.cpp's
sampler) and is used by the evaluation and the playtest, so what is measured is what ships.
It cannot make a model decide to call; it only makes the calls it writes valid.

Two forms: `full` constrains from the first token; `lazy` is the part after a `[`, for llama.cpp's
lazy grammars that wake on a trigger (Cactus: `grammar_lazy` with a `[` trigger word).
"""

from __future__ import annotations

import itertools
import json
import re

from dmforge.tools.registry import ArgKind, KeywordSpec, Registry, ToolSpec

TEXT_MAX = 48  # characters in a free-text argument (a weapon, a target): bounded, so a value cannot run on
INT_DIGITS = 4  # digits of an integer argument without a declared range
DICE_TERMS = 4  # terms in a dice expression, as in 2d6+1d4+3


def _literal(text: str) -> str:
    return json.dumps(text)  # GBNF string literals take JSON's escapes


def _rule_name(*parts: str) -> str:
    return "-".join(re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in parts)


def _alternatives(words: list[str]) -> str:
    # Longest first is not needed (GBNF alternatives are matched as a set), but sorted keeps the text stable.
    return "(" + " | ".join(_literal(w) for w in sorted(set(words))) + ")"


def _integer(low: int | None, high: int | None) -> str:
    if low is not None and high is not None and 0 <= low <= high and high - low <= 200:
        return "(" + " | ".join(_literal(str(n)) for n in range(high, low - 1, -1)) + ")"
    sign = '"-"? ' if low is None or low < 0 else ""
    return f"{sign}[0-9]{{1,{INT_DIGITS}}}"


def _kind(kind: ArgKind, spec: KeywordSpec | None = None) -> str:
    """The rule (or inline expression) for one argument kind."""
    match kind:
        case "save":
            return 'vocab-ability " save"'
        case "initiative":
            return '"initiative"'
        case "death_save":
            return '"death save"'
        case "dice":
            return "dice"
        case "dice_or_number":
            return "(dice | [0-9]{1,3})"
        case "integer":
            return _integer(spec.min if spec else None, spec.max if spec else None)
        case "text":
            return "text-value"
    return f"vocab-{_rule_name(kind)}"  # a vocabulary: the registry has checked that it exists


def _flag_groups(spec: ToolSpec) -> list[list[str]]:
    """Flags in registry order, mutually exclusive ones grouped: each group contributes at most one flag."""
    groups: list[list[str]] = []
    for flag in spec.flags:
        group = next((g for g in spec.exclusive if flag in g), [flag])
        members = [f for f in group if f in spec.flags]
        if not any(flag in g for g in groups):
            groups.append(members)
    return groups


def _keyword_orders(spec: ToolSpec) -> list[tuple[str, ...]]:
    """Every order of every subset of the keywords that holds all required ones (the registry's rule)."""
    names = list(spec.keywords)
    required = {k for k, kw in spec.keywords.items() if kw.required}
    orders = []
    for size in range(len(required), len(names) + 1):
        for subset in itertools.permutations(names, size):
            if required <= set(subset):
                orders.append(subset)
    return orders


def _keyword(key: str, spec: KeywordSpec) -> str:
    return f"{_literal(key + '=')} {_kind(spec.kind, spec)}"


def _tool_rule(name: str, spec: ToolSpec) -> str:
    """One tool's call without its brackets: `name`, then `: ` and the arguments, if it has any."""
    orders = _keyword_orders(spec)
    if spec.positional:
        # Positional values come first, so every later argument is introduced by ", ".
        parts: list[str] = []
        for index, slot in enumerate(spec.positional):
            value = "(" + " | ".join(_kind(k) for k in slot.kinds) + ")"
            separator = '": "' if index == 0 else '", "'
            parts.append(f"{separator} {value}" if slot.required else f"({separator} {value})?")
        parts += [f'(", " {_alternatives(group)})?' for group in _flag_groups(spec)]
        if orders != [()]:
            keywords = [" ".join(f'", " {_keyword(k, spec.keywords[k])}' for k in order) for order in orders]
            parts.append("(" + " | ".join(k or '""' for k in keywords) + ")")
        return " ".join([_literal(name), *parts])
    # No positional slot: the first flag or keyword follows ": ", so each argument list is spelled out.
    choices = [[None, *group] for group in _flag_groups(spec)]
    lists = []
    for flags in itertools.product(*choices):
        for order in orders:
            items = [_literal(f) for f in flags if f] + [_keyword(k, spec.keywords[k]) for k in order]
            if items:
                lists.append('": " ' + ' ", " '.join(items))
    if not lists:
        return _literal(name)
    optional = "?" if all(not kw.required for kw in spec.keywords.values()) else ""
    return f"{_literal(name)} ({' | '.join(lists)}){optional}"


def registry_grammar(registry: Registry, lazy: bool = False, max_calls: int | None = None) -> str:
    """GBNF for a DM reply under `registry`: narration with calls (or, `lazy`, the text from the first `[`).

    `max_calls` bounds the calls in one reply (GBNF's `{0,n}` repetition, in llama.cpp since mid-2024)."""
    if max_calls is not None and max_calls < 1:
        raise ValueError("max_calls must be at least 1")
    more = "*" if max_calls is None else f"{{0,{max_calls - 1 if lazy else max_calls}}}"
    lines = [
        "# dmforge: DM replies whose every bracket is a call to a registered tool. Generated from the tool",
        "# registry; regenerate it rather than editing it.",
        "root ::= " + (f"call text (call text){more}" if lazy else f"text (call text){more}"),
        "text ::= [^\\[\\]]*",
        'call ::= "[" (' + " | ".join(f"tool-{_rule_name(n)}" for n in sorted(registry.tools)) + ') "]"',
    ]
    for name in sorted(registry.tools):
        lines.append(f"tool-{_rule_name(name)} ::= {_tool_rule(name, registry.tools[name])}")
    for kind in sorted(registry.vocabularies):
        lines.append(f"vocab-{_rule_name(kind)} ::= {_alternatives(registry.vocabularies[kind])}")
    lines += [
        f"text-value ::= [^\\[\\]=,\\n ] [^\\[\\]=,\\n]{{0,{TEXT_MAX - 1}}}",
        f"dice ::= dice-term ([+-] (dice-term | [0-9]{{1,2}})){{0,{DICE_TERMS - 1}}}",
        'dice-term ::= ([1-9] [0-9]?)? "d" ("100" | "20" | "12" | "10" | "8" | "6" | "4" | "3" | "2") '
        '(("kh" | "kl") [1-9])?',
    ]
    return "\n".join(lines) + "\n"


def decode_grammar(registry: Registry, decode) -> str | None:
    """The grammar a decoding config (`decode.grammar`: full, lazy or off) sends with each completion."""
    if decode.grammar == "off":
        return None
    return registry_grammar(registry, lazy=decode.grammar == "lazy", max_calls=decode.max_calls)


# What a lazy grammar wakes on: a pattern trigger `\[` (Cactus: `grammar_triggers` type 2), which llama.cpp's
# common sampler wraps as below, so that the grammar applies from the first `[` on.
LAZY_TRIGGER = r"\["
LAZY_TRIGGER_PATTERN = r"^[\s\S]*?(" + LAZY_TRIGGER + r")[\s\S]*"
