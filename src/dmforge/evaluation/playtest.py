"""A scripted playtest: the shipped file plays a session and its tool calls are really executed.

The loop is the app's agent in miniature: the DM replies (with the app's decoding and grammar);
every bracket call in the reply is run (dice with the `d20` package); the results go back as one
tool message of `[call] => result` lines; the DM continues, up to a few chained calls; then the
next scripted player line. Before every reply the history is cut to the app's context window
(`dataset/window.py`), and the session is long enough to outgrow the context, so the transcript
shows the window at work.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import d20

from dmforge.tools.registry import Registry, check_call, parse_dice
from dmforge.tools.syntax import ToolCall, find_calls

SCRIPT = [
    "Brakka: I push open the door of the flooded chapel and look around.",
    "Sorrel: What do I know about Saint Orrin? Anything about this chapel?",
    "Brakka: I wade toward the altar, watching the water for movement.",
    "Sorrel: I ready my shortbow and shoot whatever comes out of the water.",
    "Brakka: I swing my warhammer at it.",
    "Sorrel: Is Brakka hurt? I'll patch him up if I can.",
    "Brakka: I search the altar for whatever the creature was guarding.",
    "Sorrel: I try to read the inscription on the reliquary lid.",
    "Brakka: I ask the ghost of the old priest, politely, why it haunts this place.",
    "Sorrel: I tell the ghost we'll carry the saint's bones to the abbey, if it lets us pass.",
    "Brakka: I climb the collapsed bell tower to look out over the marsh.",
    "Sorrel: Something's moving in the reeds. I sneak closer to see what it is.",
    "Brakka: Bog hounds! I step in front of Sorrel and raise my shield.",
    "Sorrel: I shoot the nearest hound.",
]
SETTING = {
    "world": "The Drowned Marches, a fenland of sunken abbeys",
    "location": "The flooded chapel of Saint Orrin",
    "party": "Brakka Stonehew (dwarf cleric 3); Sorrel Valewind (half-elf ranger 3)",
}
MAX_CHAIN = 3  # tool round-trips per player line, as a guard against loops
TARGET_AC = 13
PARTY = ("Brakka", "Sorrel")


def execute(call: ToolCall, registry: Registry, rng: random.Random) -> str:
    """Run one call the way the app's agent would, and say the result in the scenario format.

    The call is whatever the model wrote, so this never raises: a call that cannot be run (an unknown
    tool, `1d0`, `dc=abc`, dice that explode forever) comes back as an `error: ...` result, as the app
    would show it. d20 stops any roll after 1,000 dice, so it cannot hang either.
    """
    if call.name not in registry.tools:
        return f"error: unknown tool {call.name[:60]}"
    try:
        problems = check_call(call, registry)
        if problems:
            return f"error: {problems[0]}"
        roller = d20.Roller()
        random.seed(rng.randint(0, 2**31))  # d20 rolls with the `random` module; seeded so a playtest is reproducible
        flags = {v.lower() for v in call.positional[1:]}
        die = "2d20kh1" if "advantage" in flags else "2d20kl1" if "disadvantage" in flags else "1d20"
        target = call.keyword("target") or "the target"
        match call.name:
            case "roll":
                subject = call.positional[0].lower()
                total = roller.roll(call.positional[0]).total if parse_dice(subject) else roller.roll(die).total
                dc = call.keyword("dc") or ("10" if subject == "death save" else None)
                return f"{total}, {'success' if total >= int(dc) else 'failure'}" if dc else str(total)
            case "initiative":
                order = sorted(((roller.roll("1d20").total, name) for name in (*PARTY, "the enemy")), reverse=True)
                return ", ".join(f"{name} {total}" for total, name in order)
            case "attack":
                total = roller.roll(die).total
                return f"{total}, {'hit' if total >= TARGET_AC else 'miss'}"
            case "damage":
                return str(roller.roll(call.positional[0]).total)
            case "heal":
                amount = call.positional[0]
                return str(int(amount) if amount.lstrip("+-").isdigit() else roller.roll(amount).total)
            case "condition":
                condition = call.positional[0].lower()
                return f"{target} is no longer {condition}" if "remove" in flags else f"{target} is {condition}"
        return "ok"
    except Exception as exc:  # d20's TooManyRolls or RollValueError, int() of 5,000 digits, ...: the model's fault
        return f"error: {type(exc).__name__}: {str(exc)[:200]}"


@dataclass
class DmStep:
    """One DM reply within a turn: the reply, how many old messages the window left out, and the tool results."""

    reply: object  # a Runtime Reply: .text, .stop, .hit_limit
    dropped: int
    outcomes: list[tuple[ToolCall, str]] = field(default_factory=list)  # each call run, and what it gave

    @property
    def results(self) -> str:
        """The tool message: one `[call] => outcome` line per call, as in a scenario's TOOLCALL section."""
        return "\n".join(f"{call} => {outcome}" for call, outcome in self.outcomes)


def dm_turn(
    model,
    messages: list[dict],
    registry: Registry,
    decode,
    grammar: str | None,
    window: Callable[[list[dict]], list[dict]],
    rng: random.Random,
    max_chain: int = MAX_CHAIN,
) -> list[DmStep]:
    """The DM's answer to the last message, as the app's agent runs it: reply, run the calls, feed the results
    back, up to `max_chain` replies. Appends the DM's messages and the tool messages to `messages`."""
    steps: list[DmStep] = []
    for _ in range(max_chain):
        sent = window(messages)
        reply = model.reply(sent, decode, grammar)
        step = DmStep(reply, len(messages) - len(sent))
        steps.append(step)
        messages.append({"role": "assistant", "content": reply.text})
        calls = find_calls(reply.text)
        if not calls:
            break
        step.outcomes = [(call, execute(call, registry, rng)) for call in calls]
        messages.append({"role": "tool", "content": step.results})
    return steps


def playtest(
    model,
    system: str,
    registry: Registry,
    decode,
    grammar: str | None,
    window: Callable[[list[dict]], list[dict]] = lambda messages: messages,
    seed: int = 7,
) -> dict:
    """Play the script with `model` (a `Runtime`, or anything with its `.reply`); return the transcript.

    `window(messages)` is what the app sends of the history: the context window for the model's n_ctx.
    """
    rng = random.Random(seed)
    messages: list[dict] = [{"role": "system", "content": system}]
    transcript: list[dict] = []
    calls_made = calls_valid = dm_replies = looped = windowed = 0
    for line in SCRIPT:
        messages.append({"role": "user", "content": line})
        transcript.append({"role": "player", "text": line})
        for step in dm_turn(model, messages, registry, decode, grammar, window, rng):
            dm_replies += 1
            looped += step.reply.hit_limit
            windowed += step.dropped > 0
            transcript.append(
                {"role": "dm", "text": step.reply.text, "stop": step.reply.stop, "dropped_messages": step.dropped}
            )
            if step.outcomes:
                calls_made += len(step.outcomes)
                calls_valid += sum(not outcome.startswith("error") for _, outcome in step.outcomes)
                transcript.append({"role": "tool", "text": step.results})
    return {
        "transcript": transcript,
        "calls": calls_made,
        "valid_calls": calls_valid,
        "dm_replies": dm_replies,
        "loops": looped,
        "windowed_replies": windowed,
    }


def transcript_markdown(title: str, result: dict) -> str:
    lines = [
        f"# Playtest: {title}",
        "",
        f"{result['dm_replies']} DM replies, {result['calls']} tool calls ({result['valid_calls']} executed), "
        f"{result['loops']} replies that looped or ran to the token limit; {result['windowed_replies']} replies "
        "were written with the oldest turns dropped to fit the context window.",
        "",
    ]
    for entry in result["transcript"]:
        heading = {"player": "Player", "dm": "DM", "tool": "Tool results"}[entry["role"]]
        if entry.get("dropped_messages"):
            heading += f" (context window: the {entry['dropped_messages']} oldest messages dropped)"
        if entry.get("stop") in ("length", "loop"):
            heading += " (ran to the token limit)" if entry["stop"] == "length" else " (cut: it was looping)"
        lines += [f"**{heading}**", "", entry["text"] or "_(empty)_", ""]
    return "\n".join(lines)
