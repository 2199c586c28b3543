"""A scripted playtest: the model runs a short session and its tool calls are really executed.

The loop is the app's agent in miniature: the DM replies; every bracket call in the reply is run
(dice with the `d20` package); the results go back as one tool message of `[call] => result`
lines; the DM continues, up to a few chained calls; then the next scripted player line.
"""

from __future__ import annotations

import random

import d20

from dmforge.tools.registry import Registry, check_call, parse_dice
from dmforge.tools.syntax import ToolCall, find_calls

SCRIPT = [
    "Brakka: I push open the door of the flooded chapel and look around.",
    "Brakka: I wade toward the altar, watching the water for movement.",
    "Sorrel: I ready my shortbow and shoot whatever comes out of the water.",
    "Brakka: I swing my warhammer at it.",
    "Sorrel: Is Brakka hurt? I'll patch him up if I can.",
]
SETTING = {
    "world": "The Drowned Marches, a fenland of sunken abbeys",
    "location": "The flooded chapel of Saint Orrin",
    "party": "Brakka Stonehew (dwarf cleric 3); Sorrel Valewind (half-elf ranger 3)",
}
MAX_CHAIN = 3  # tool round-trips per player line, as a guard against loops
TARGET_AC = 13


def execute(call: ToolCall, registry: Registry, rng: random.Random) -> str:
    """Run one call the way the app's agent would, and say the result in the scenario format."""
    if call.name not in registry.tools:
        return f"error: unknown tool {call.name}"
    problems = check_call(call, registry)
    if problems:
        return f"error: {problems[0]}"
    roller = d20.Roller()
    d20_seed = rng.randint(0, 2**31)
    random.seed(d20_seed)  # d20 rolls with the `random` module; seeded here so a playtest is reproducible
    flags = {v.lower() for v in call.positional[1:]}
    die = "2d20kh1" if "advantage" in flags else "2d20kl1" if "disadvantage" in flags else "1d20"
    match call.name:
        case "roll":
            subject = call.positional[0].lower()
            total = roller.roll(call.positional[0]).total if parse_dice(subject) else roller.roll(die).total
            dc = call.keyword("dc")
            return f"{total}, {'success' if total >= int(dc) else 'failure'}" if dc else str(total)
        case "initiative":
            return ", ".join(f"{name} {roller.roll('1d20').total}" for name in ("Brakka", "Sorrel", "the enemy"))
        case "attack":
            total = roller.roll(die).total
            return f"{total}, {'hit' if total >= TARGET_AC else 'miss'}"
        case "damage":
            return str(roller.roll(call.positional[0]).total)
        case "heal":
            amount = call.positional[0]
            return str(int(amount) if amount.lstrip("+-").isdigit() else roller.roll(amount).total)
        case "condition":
            return "removed" if "remove" in flags else "applied"
    return "ok"


def playtest(model, system: str, registry: Registry, seed: int = 7) -> dict:
    """Play the script with `model` (anything with `.reply(messages)`); return the transcript."""
    rng = random.Random(seed)
    messages: list[dict] = [{"role": "system", "content": system}]
    transcript: list[dict] = []
    calls_made = calls_valid = 0
    for line in SCRIPT:
        messages.append({"role": "user", "content": line})
        transcript.append({"role": "player", "text": line})
        for _ in range(MAX_CHAIN):
            reply = model.reply(messages)
            messages.append({"role": "assistant", "content": reply})
            transcript.append({"role": "dm", "text": reply})
            calls = find_calls(reply)
            if not calls:
                break
            results = []
            for call in calls:
                outcome = execute(call, registry, rng)
                calls_made += 1
                calls_valid += not outcome.startswith("error")
                results.append(f"{call} => {outcome}")
            messages.append({"role": "tool", "content": "\n".join(results)})
            transcript.append({"role": "tool", "text": "\n".join(results)})
    return {"transcript": transcript, "calls": calls_made, "valid_calls": calls_valid}


def transcript_markdown(title: str, result: dict) -> str:
    lines = [f"# Playtest: {title}", "", f"{result['calls']} tool calls, {result['valid_calls']} executed.", ""]
    for entry in result["transcript"]:
        heading = {"player": "Player", "dm": "DM", "tool": "Tool results"}[entry["role"]]
        lines += [f"**{heading}**", "", entry["text"] or "_(empty)_", ""]
    return "\n".join(lines)
