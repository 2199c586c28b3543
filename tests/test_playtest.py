"""The playtest's agent loop: calls executed with real dice, results fed back as the app does."""

from __future__ import annotations

import random

from dmforge.evaluation.playtest import SCRIPT, execute, playtest, transcript_markdown
from dmforge.evaluation.run import eval_turns
from dmforge.tools.syntax import parse
from dmforge.training.chat import ChatFormat


def test_execute_each_starter_tool(registry):
    rng = random.Random(1)
    total, outcome = execute(parse("[roll: stealth, dc=12]"), registry, rng).split(", ")
    assert 1 <= int(total) <= 20 and outcome == ("success" if int(total) >= 12 else "failure")
    assert 3 <= int(execute(parse("[roll: 3d6]"), registry, rng)) <= 18
    assert execute(parse("[attack: longsword, target=goblin]"), registry, rng).split(", ")[1] in ("hit", "miss")
    assert 4 <= int(execute(parse("[damage: 1d8+3, type=slashing]"), registry, rng)) <= 11
    assert execute(parse("[heal: 10, target=Bo]"), registry, rng) == "10"
    assert execute(parse("[condition: prone, target=orc]"), registry, rng) == "applied"
    assert execute(parse("[condition: prone, remove, target=orc]"), registry, rng) == "removed"
    assert execute(parse("[initiative]"), registry, rng).count(",") == 2
    assert execute(parse("[cast: fireball]"), registry, rng).startswith("error: unknown tool")
    assert execute(parse("[roll: perceptoin]"), registry, rng).startswith("error:")


def test_playtest_loop_feeds_results_back(registry):
    class ScriptedDM:
        def __init__(self):
            self.seen = []

        def reply(self, messages):
            self.seen.append(messages[-1])
            if messages[-1]["role"] == "user":
                return "The water stirs. [roll: perception, dc=13]"
            return "You see the shape in time."

    dm = ScriptedDM()
    result = playtest(dm, "You are the DM.", registry, seed=3)
    assert result["calls"] == len(SCRIPT) and result["valid_calls"] == len(SCRIPT)
    tool_messages = [m for m in dm.seen if m["role"] == "tool"]
    assert len(tool_messages) == len(SCRIPT)
    assert all(m["content"].startswith("[roll: perception, dc=13] => ") for m in tool_messages)
    assert "**Tool results**" in transcript_markdown("t", result)
    assert playtest(ScriptedDM(), "You are the DM.", registry, seed=3)["transcript"] == result["transcript"]


def test_eval_turns_take_every_story_round_robin():
    fmt = ChatFormat(True, "", "<|im_end|>", True)

    def conv(cid, n):
        messages = [{"role": "system", "content": "S"}]
        for i in range(n):
            messages += [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": f"{cid}{i}"}]
        return {"id": cid, "messages": messages, "party": [], "location": ""}

    turns = eval_turns([conv("a", 3), conv("b", 1), conv("c", 2)], fmt, max_turns=4)
    assert [t.gold for t in turns] == ["a0", "b0", "c0", "a1"]
    assert turns[0].prompt == [{"role": "system", "content": "S"}, {"role": "user", "content": "u0"}]
    assert len(eval_turns([conv("a", 3)], fmt, None)) == 3
