"""The playtest's agent loop: calls executed with real dice, results fed back as the app does, in the window."""

from __future__ import annotations

import random

from dmforge.config import DecodeConfig
from dmforge.contract.chat import ChatFormat
from dmforge.contract.window import window_start
from dmforge.evaluation.playtest import SCRIPT, execute, playtest, transcript_markdown
from dmforge.evaluation.runtime import Reply
from dmforge.evaluation.turns import eval_turns
from dmforge.tools.syntax import parse


def test_execute_each_starter_tool(registry):
    rng = random.Random(1)
    total, outcome = execute(parse("[roll: stealth, dc=12]"), registry, rng).split(", ")
    assert 1 <= int(total) <= 20 and outcome == ("success" if int(total) >= 12 else "failure")
    assert 3 <= int(execute(parse("[roll: 3d6]"), registry, rng)) <= 18
    assert execute(parse("[roll: death save]"), registry, rng).split(", ")[1] in ("success", "failure")
    assert execute(parse("[attack: longsword, target=goblin]"), registry, rng).split(", ")[1] in ("hit", "miss")
    assert 4 <= int(execute(parse("[damage: 1d8+3, type=slashing]"), registry, rng)) <= 11
    assert execute(parse("[heal: 10, target=Bo]"), registry, rng) == "10"
    # Condition results read as the scenarios write them, so the model sees what it was trained on.
    assert execute(parse("[condition: prone, target=orc]"), registry, rng) == "orc is prone"
    assert execute(parse("[condition: prone, remove, target=orc]"), registry, rng) == "orc is no longer prone"
    order = execute(parse("[initiative]"), registry, rng)
    totals = [int(part.rsplit(" ", 1)[1]) for part in order.split(", ")]
    assert len(totals) == 3 and totals == sorted(totals, reverse=True)
    assert execute(parse("[cast: fireball]"), registry, rng).startswith("error: unknown tool")
    assert execute(parse("[roll: perceptoin]"), registry, rng).startswith("error:")


class ScriptedDM:
    """Calls for a roll after every player line and narrates after every result."""

    def __init__(self):
        self.seen: list[list[dict]] = []

    def reply(self, messages, decode, grammar):
        self.seen.append(list(messages))
        if messages[-1]["role"] == "user":
            return Reply("The water stirs. Make a Wisdom (Perception) check.\n[roll: perception, dc=13]", 12, "end")
        return Reply("You see the shape in time.", 6, "end")


def test_playtest_loop_feeds_results_back(registry):
    dm = ScriptedDM()
    result = playtest(dm, "You are the DM.", registry, DecodeConfig(), None, seed=3)
    assert result["calls"] == len(SCRIPT) and result["valid_calls"] == len(SCRIPT)
    assert result["dm_replies"] == 2 * len(SCRIPT) and result["loops"] == 0
    tool_messages = [m[-1] for m in dm.seen if m[-1]["role"] == "tool"]
    assert len(tool_messages) == len(SCRIPT)
    assert all(m["content"].startswith("[roll: perception, dc=13] => ") for m in tool_messages)
    assert "**Tool results**" in transcript_markdown("t", result)
    again = playtest(ScriptedDM(), "You are the DM.", registry, DecodeConfig(), None, seed=3)
    assert again["transcript"] == result["transcript"], "the same seed plays the same session"


def test_the_playtest_sends_the_window_and_marks_it(registry):
    dm = ScriptedDM()

    def window(messages):  # the app's rule, with every message costing 10 tokens and room for 8 of them
        roles = [m["role"] for m in messages]
        return [messages[0], *messages[window_start(roles, [10] * len(messages), 80) :]]

    result = playtest(dm, "You are the DM.", registry, DecodeConfig(), None, window=window)
    assert max(len(sent) for sent in dm.seen) <= 8 and result["windowed_replies"] > 10
    assert all(sent[0]["role"] == "system" and sent[1]["role"] != "tool" for sent in dm.seen)
    assert "oldest messages dropped" in transcript_markdown("t", result)


class CountingTokenizer:
    """One token per character: enough to exercise the window without a model."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(range(len(text)))}


def _conversation(cid: str, n: int) -> dict:
    messages = [{"role": "system", "content": "S"}]
    for i in range(n):
        messages += [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": f"{cid}{i}"}]
    return {"id": cid, "messages": messages, "party": [], "location": ""}


def test_eval_turns_take_every_story_round_robin():
    fmt = ChatFormat(True, "", "<|im_end|>", True)
    convs = [_conversation("a", 3), _conversation("b", 1), _conversation("c", 2)]
    turns = eval_turns(convs, fmt, CountingTokenizer(), 4096, 64, max_turns=4)
    assert [t.gold for t in turns] == ["a0", "b0", "c0", "a1"]
    assert turns[0].prompt == [{"role": "system", "content": "S"}, {"role": "user", "content": "u0"}]
    assert len(eval_turns(convs[:1], fmt, CountingTokenizer(), 4096, 64)) == 3


def test_eval_prompts_are_the_apps_window():
    fmt = ChatFormat(True, "", "<|im_end|>", True, {"system": 1, "user": 1, "assistant": 1, "tool": 1}, 1)
    (late,) = [t for t in eval_turns([_conversation("a", 6)], fmt, CountingTokenizer(), 20, 8) if t.gold == "a5"]
    # 20 - 8 - 1 = 11 tokens: the system message (2) and the three newest messages (3 each) fit.
    assert [m["content"] for m in late.prompt] == ["S", "u4", "a4", "u5"]
    assert late.windowed
