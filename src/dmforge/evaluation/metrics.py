"""How well a generated DM reply matches the gold one: the behaviour the app depends on.

Every function here is pure: a predicted reply, the gold reply and the turn's context in, a
verdict out. The rules, in words:

- **call decision**: the reply makes at least one tool call exactly when the gold reply does.
- **exact call match**: the same calls, in any order: tool names equal, positional values equal
  in order, keyword arguments and flags compared as sets (the registry's rule). Values are folded
  for case and spacing.
- **intent match**: the same tools with the same positional values (the skill, save, weapon or
  dice), keyword values and flags ignored: whether the DM asked for the right roll. A `dc=` is a
  judgement call no model can read off the scene, so exact match has a ceiling below 1; intent has not.
- **loop**: the reply repeats itself (a run of 4 words three times, or of 8 words twice, tool calls
  aside) or runs to the token limit.
- **validity**: every bracket in the reply is a well-formed call to a registered tool whose
  arguments pass the registry's checks (dice through the d20 grammar).
- **continuation**: for a reply right after tool results, an outcome word in the results
  ("success", "failure", "hit", "miss") must not be contradicted by the reply, which may not use
  only the opposite outcome's words; and a number in the results should be used (mentioned as
  digits or as a word) or the outcome named.
- **in character**: no assistant-speak ("As an AI", "I'm happy to help", "language model", ...).
- **mentions**: the party's names and the location are mentioned when the gold reply mentions them.

A model trained with its calls first (`data.call_order: first`) makes every call decision in the
lines its reply opens with; `opening_calls` cuts a reply to them, which is what a quick screen of a
quantized file generates (evaluation/run.py).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field

from dmforge.tools.registry import Registry, check_call
from dmforge.tools.syntax import BracketKind, CallSyntaxError, ToolCall, parse, scan_brackets

ASSISTANT_SPEAK = re.compile(
    r"\b(as an ai|as a language model|language model|i'?m (just )?an ai|i am an ai|i'?m happy to help|"
    r"i cannot (help|assist)|i can'?t (help|assist) with|openai|chatgpt|as your assistant)\b",
    re.IGNORECASE,
)
SUCCESS_WORDS = re.compile(r"\b(success|succeeds?|succeeded|hits?|passed|pass)\b", re.IGNORECASE)
FAILURE_WORDS = re.compile(r"\b(fail|fails|failed|failure|miss|misses|missed)\b", re.IGNORECASE)
NUMBER_WORDS = {
    1: "one",
    2: "two",
    3: "three",
    4: "four",
    5: "five",
    6: "six",
    7: "seven",
    8: "eight",
    9: "nine",
    10: "ten",
    11: "eleven",
    12: "twelve",
    13: "thirteen",
    14: "fourteen",
    15: "fifteen",
    16: "sixteen",
    17: "seventeen",
    18: "eighteen",
    19: "nineteen",
    20: "twenty",
    21: "twenty-one",
    22: "twenty-two",
    23: "twenty-three",
    24: "twenty-four",
    25: "twenty-five",
    30: "thirty",
}


def call_key(call: ToolCall, registry: Registry) -> tuple:
    """A hashable form of a call in which flags and keyword arguments are unordered."""
    call = call.normalized()
    spec = registry.tools.get(call.name)
    slots = len(spec.positional) if spec else len(call.positional)
    return (call.name, call.positional[:slots], frozenset(call.positional[slots:]), frozenset(call.keywords))


def intent_key(call: ToolCall, registry: Registry) -> tuple:
    """A call reduced to what it asks for: the tool and its positional slots (flags and keywords dropped)."""
    call = call.normalized()
    spec = registry.tools.get(call.name)
    slots = len(spec.positional) if spec else len(call.positional)
    return (call.name, call.positional[:slots])


_WORD = re.compile(r"[a-z0-9']+")


def loops(text: str) -> bool:
    """The reply repeats itself: a run of 4 words three times or of 8 words twice, tool calls aside.

    A DM's reply of a few sentences never legitimately does either; a small model under greedy
    decoding does it until the token limit ("The water is moving. The water is moving. ...").
    """
    words = _WORD.findall(re.sub(r"\[[^\]\n]*\]", " ", text.lower()))
    for n, times in ((4, 3), (8, 2)):
        counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        if counts and max(counts.values()) >= times:
            return True
    return False


def opening_calls(text: str) -> str:
    """The lines a reply opens with that start with a bracket: its calls, when they come first; '' when none."""
    kept = []
    for line in text.strip().split("\n"):
        if not line.strip().startswith("["):
            break
        kept.append(line.strip())
    return "\n".join(kept)


def opening_complete(text: str) -> bool:
    """The reply has begun a line of narration, so the calls it opens with are all written."""
    return any(line.strip() and not line.strip().startswith("[") for line in text.split("\n"))


@dataclass
class TurnVerdict:
    gold_calls: list[str]
    predicted_calls: list[str]
    decision_correct: bool
    exact_match: bool
    intent_match: bool
    looped: bool  # repeated itself or ran to the token limit
    brackets: int  # brackets in the reply that the app's agent would try to read
    valid_brackets: int
    after_tool: bool
    continuation_ok: bool | None  # None when the turn does not follow tool results
    in_character: bool
    mentions_expected: int
    mentions_found: int
    length_ratio: float
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def reply_brackets(text: str, registry: Registry) -> tuple[list[ToolCall], int, int, list[str]]:
    """Calls in a reply, how many brackets there are, how many are valid calls, and what is wrong."""
    calls: list[ToolCall] = []
    total = valid = 0
    problems: list[str] = []
    for bracket in scan_brackets(text):
        if bracket.kind in (BracketKind.LINK, BracketKind.CHECKBOX):
            continue
        total += 1
        if bracket.kind is not BracketKind.CALL or bracket.call is None:
            problems.append(f"malformed bracket {bracket.text!r}")
            continue
        calls.append(bracket.call)
        if bracket.call.name not in registry.tools:
            problems.append(f"unknown tool {bracket.call.name!r}")
            continue
        issues = check_call(bracket.call, registry)
        if issues:
            problems.extend(issues)
        else:
            valid += 1
    return calls, total, valid, problems


def _numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"(?<![\w.])(\d{1,3})(?![\w.])", text)]


def continuation_consistent(tool_results: str, reply: str) -> bool:
    """The documented rule: no contradicted outcome, and the result used (number or outcome named)."""
    success, failure = bool(SUCCESS_WORDS.search(tool_results)), bool(FAILURE_WORDS.search(tool_results))
    said_success, said_failure = bool(SUCCESS_WORDS.search(reply)), bool(FAILURE_WORDS.search(reply))
    if success and not failure and said_failure and not said_success:
        return False
    if failure and not success and said_success and not said_failure:
        return False
    numbers = _numbers(tool_results)
    lowered = reply.lower()
    used_number = any(str(n) in reply or (n in NUMBER_WORDS and NUMBER_WORDS[n] in lowered) for n in numbers)
    named_outcome = (success and said_success) or (failure and said_failure)
    return used_number or named_outcome or (not numbers and not (success or failure))


def _mentioned(name: str, text: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", text, re.IGNORECASE) is not None


def score_turn(
    predicted: str,
    gold: str,
    registry: Registry,
    *,
    tool_results: str | None = None,
    party: list[str] = (),
    location: str = "",
    hit_limit: bool = False,
) -> TurnVerdict:
    """The verdict on one reply; `hit_limit` says generation stopped at the token limit, not at an end."""
    gold_calls, _, _, _ = reply_brackets(gold, registry)
    calls, total, valid, problems = reply_brackets(predicted, registry)
    gold_keys = Counter(call_key(c, registry) for c in gold_calls)
    pred_keys = Counter(call_key(c, registry) for c in calls)
    names = [n.split()[0] for n in party if n.strip()]
    place = location.split(",")[0].strip()
    expected = [n for n in [*names, place] if n and _mentioned(n, gold)]
    found = [n for n in expected if _mentioned(n, predicted)]
    continuation = None if tool_results is None else continuation_consistent(tool_results, predicted)
    in_character = ASSISTANT_SPEAK.search(predicted) is None
    if not in_character:
        problems.append("assistant-speak")
    return TurnVerdict(
        gold_calls=[str(c) for c in gold_calls],
        predicted_calls=[str(c) for c in calls],
        decision_correct=bool(gold_calls) == bool(calls),
        exact_match=gold_keys == pred_keys,
        intent_match=Counter(intent_key(c, registry) for c in gold_calls)
        == Counter(intent_key(c, registry) for c in calls),
        looped=hit_limit or loops(predicted),
        brackets=total,
        valid_brackets=valid,
        after_tool=tool_results is not None,
        continuation_ok=continuation,
        in_character=in_character,
        mentions_expected=len(expected),
        mentions_found=len(found),
        length_ratio=len(predicted.split()) / max(1, len(gold.split())),
        problems=problems,
    )


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def _tools(calls: list[str]) -> set[str]:
    return {c.split(":")[0].strip("[]") for c in calls}


def roll_subject(calls: list[str]) -> str | None:
    """What the first `roll` call asks for (`perception`, `dexterity save`, `dice` for a dice roll), or None."""
    for text in calls:
        try:
            call = parse(text)
        except CallSyntaxError:
            continue
        if call.name == "roll" and call.positional:
            subject = call.normalized().positional[0]
            return "dice" if DICE_LIKE.fullmatch(subject) else subject
    return None


DICE_LIKE = re.compile(r"[0-9d+\-*/() khlr]+")


def where_both_call(verdicts: list[TurnVerdict]) -> dict:
    """What goes wrong when the model calls on a turn the gold calls on too: the tool, or its argument.

    - `tool_accuracy`: the same set of tools (a roll where a roll is due, an attack where an attack is);
    - `argument_accuracy`: the same tools with the same positional values (intent match on these turns);
    - `roll_subject_accuracy` over the turns where both roll: the same check, save or dice, and the
      confusion behind it (`roll_confusion[gold][predicted]`, counts).
    """
    both = [v for v in verdicts if v.gold_calls and v.predicted_calls]
    rolls = [(roll_subject(v.gold_calls), roll_subject(v.predicted_calls)) for v in both]
    rolls = [(gold, predicted) for gold, predicted in rolls if gold and predicted]
    confusion: dict[str, dict[str, int]] = {}
    for gold, predicted in rolls:
        row = confusion.setdefault(gold, {})
        row[predicted] = row.get(predicted, 0) + 1
    return {
        "both_call_turns": len(both),
        "tool_accuracy": _ratio(sum(_tools(v.gold_calls) == _tools(v.predicted_calls) for v in both), len(both)),
        "argument_accuracy": _ratio(sum(v.intent_match for v in both), len(both)),
        "both_roll_turns": len(rolls),
        "roll_subject_accuracy": _ratio(sum(gold == predicted for gold, predicted in rolls), len(rolls)),
        "roll_confusion": confusion,
    }


def _decision_row(verdicts: list[TurnVerdict]) -> dict:
    """How one group of turns decides: accuracy, how often each side calls, and the two ways it goes wrong."""
    return {
        "turns": len(verdicts),
        "call_decision_accuracy": _ratio(sum(v.decision_correct for v in verdicts), len(verdicts)),
        "gold_call_share": _ratio(sum(bool(v.gold_calls) for v in verdicts), len(verdicts)),
        "predicted_call_share": _ratio(sum(bool(v.predicted_calls) for v in verdicts), len(verdicts)),
        "missed_calls": sum(bool(v.gold_calls) and not v.predicted_calls for v in verdicts),
        "extra_calls": sum(bool(v.predicted_calls) and not v.gold_calls for v in verdicts),
    }


def decision_per_category(verdicts: list[TurnVerdict], categories: list[str]) -> dict[str, dict]:
    """Call decision accuracy per scenario category, with how often the gold calls there."""
    return {
        category: _decision_row([v for v, c in zip(verdicts, categories, strict=True) if c == category])
        for category in sorted(set(categories))
    }


def decision_by_moment(verdicts: list[TurnVerdict]) -> dict[str, dict]:
    """Call decision after a player's line and after a tool result: two different decisions.

    After a player the question is whether the action needs dice at all; after a result it is what the
    rules chain to next (a hit to its damage, a failed save to its condition, initiative to the first
    monster's attack). A model can be good at one and poor at the other, and one figure hides which.
    """
    moments = {"after a player's line": False, "after a tool result": True}
    return {
        name: _decision_row(mine)
        for name, after_tool in moments.items()
        if (mine := [v for v in verdicts if v.after_tool == after_tool])
    }


def aggregate(verdicts: list[TurnVerdict], categories: list[str] | None = None) -> dict:
    """Corpus-level metrics from per-turn verdicts (None where a metric has nothing to measure).

    `categories`, one per verdict, adds the call decision per scenario category.
    """
    n = len(verdicts)
    tp = sum(bool(v.gold_calls) and bool(v.predicted_calls) for v in verdicts)
    fp = sum(not v.gold_calls and bool(v.predicted_calls) for v in verdicts)
    fn = sum(bool(v.gold_calls) and not v.predicted_calls for v in verdicts)
    per_tool: dict[str, dict[str, float | None]] = {}
    tools = sorted({c.split(":")[0].strip("[]") for v in verdicts for c in [*v.gold_calls, *v.predicted_calls]})
    for tool in tools:
        t_tp = t_fp = t_fn = 0
        for v in verdicts:
            gold = Counter(c for c in v.gold_calls if c.split(":")[0].strip("[]") == tool)
            pred = Counter(c for c in v.predicted_calls if c.split(":")[0].strip("[]") == tool)
            overlap = sum((gold & pred).values())
            t_tp, t_fp, t_fn = t_tp + overlap, t_fp + sum(pred.values()) - overlap, t_fn + sum(gold.values()) - overlap
        precision, recall = _ratio(t_tp, t_tp + t_fp), _ratio(t_tp, t_tp + t_fn)
        f1 = None if not precision or not recall else 2 * precision * recall / (precision + recall)
        per_tool[tool] = {"precision": precision, "recall": recall, "f1": f1 or 0.0, "support": t_tp + t_fn}
    after_tool = [v for v in verdicts if v.continuation_ok is not None]
    lengths = sorted(v.length_ratio for v in verdicts)
    return {
        "turns": n,
        "call_decision_accuracy": _ratio(sum(v.decision_correct for v in verdicts), n),
        "call_precision": _ratio(tp, tp + fp),
        "call_recall": _ratio(tp, tp + fn),
        # The balanced score of the decision: a model that never calls gets 0 here, however many quiet turns
        # it gets right by staying quiet.
        "call_f1": _ratio(2 * tp, 2 * tp + fp + fn),
        # Over the turns where either side calls a tool: quiet-on-quiet turns are counted by the decision metric.
        "exact_call_match": _ratio(
            sum(v.exact_match for v in verdicts if v.gold_calls or v.predicted_calls),
            sum(bool(v.gold_calls or v.predicted_calls) for v in verdicts),
        ),
        # Also over the turns where either side calls: the right tools asking for the right rolls.
        "intent_match": _ratio(
            sum(v.intent_match for v in verdicts if v.gold_calls or v.predicted_calls),
            sum(bool(v.gold_calls or v.predicted_calls) for v in verdicts),
        ),
        # No brackets at all is valid: a model that never calls has nothing malformed to execute.
        "call_validity": _ratio(sum(v.valid_brackets for v in verdicts), sum(v.brackets for v in verdicts)),
        "loop_rate": _ratio(sum(v.looped for v in verdicts), n),
        "per_tool": per_tool,
        "continuation_consistency": _ratio(sum(bool(v.continuation_ok) for v in after_tool), len(after_tool)),
        "in_character_rate": _ratio(sum(v.in_character for v in verdicts), n),
        "mention_recall": _ratio(sum(v.mentions_found for v in verdicts), sum(v.mentions_expected for v in verdicts)),
        "median_length_ratio": lengths[n // 2] if n else None,
        **where_both_call(verdicts),
        "decision_per_category": decision_per_category(verdicts, categories) if categories else {},
        "decision_by_moment": decision_by_moment(verdicts),
    }
