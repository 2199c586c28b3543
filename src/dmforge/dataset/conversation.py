"""Scenario → conversation: the messages the model is trained on, as plain structured data.

Roles follow the chat-template convention: `system`, `user`, `assistant` (the DM, the turns
that are trained) and `tool` (the results of a DM turn's calls). How a `tool` message is
rendered for a template without a tool role is the training stage's decision, so here it
keeps both the structured results and a readable `content` in the scenario's own syntax.

Every message has every field (empty when unused) so that Arrow sees one schema.
"""

from __future__ import annotations

import hashlib
import json
import re

from dmforge.config import DataConfig
from dmforge.contract.system import compose_system_prompt
from dmforge.scenarios.model import Scenario, Turn, TurnKind
from dmforge.tools.syntax import BracketKind, ToolCall, scan_brackets

ROLE_OF = {TurnKind.USER: "user", TurnKind.DM: "assistant", TurnKind.TOOLCALL: "tool"}


def call_record(call: ToolCall) -> dict:
    return {
        "name": call.name,
        "call": str(call),
        "arguments": [{"key": "", "value": v} for v in call.positional]
        + [{"key": k, "value": v} for k, v in call.keywords],
    }


def tool_result_content(turn: Turn) -> str:
    """The default text of a tool message: one `[call] => result` line per call, as in the scenario."""
    return "\n".join(f"{r.call} => {r.result}" for r in turn.results)


def message(role: str, content: str, name: str = "", tool_calls=(), tool_results=()) -> dict:
    return {
        "role": role,
        "content": content,
        "name": name,
        "tool_calls": list(tool_calls),
        "tool_results": list(tool_results),
    }


def calls_first(text: str) -> str:
    """A DM turn with its tool calls moved to the front, one per line, and the narration after them.

    The call decision then comes first, made on the scene and the player's words rather than after a
    paragraph the model wrote itself; the calls' text and order are unchanged, so the app's agent and
    the TOOLCALL results read them as before.
    """
    calls = [b for b in scan_brackets(text) if b.kind is BracketKind.CALL]
    if not calls:
        return text
    lines = text.split("\n")
    for bracket in sorted(calls, key=lambda b: (b.line, b.column), reverse=True):
        line = lines[bracket.line]
        lines[bracket.line] = line[: bracket.column] + line[bracket.column + len(bracket.text) :]
    narration = "\n".join(" ".join(line.split()) for line in lines).strip()
    narration = re.sub(r"\n{3,}", "\n\n", narration)
    return "\n".join(b.text for b in calls) + ("\n" + narration if narration else "")


def turn_message(turn: Turn, call_order: str = "as_written") -> dict:
    match turn.kind:
        case TurnKind.USER:
            return message("user", turn.text, name=turn.speaker or "")
        case TurnKind.DM:
            text = calls_first(turn.text) if call_order == "first" else turn.text
            return message("assistant", text, tool_calls=[call_record(c) for c in turn.calls])
        case TurnKind.TOOLCALL:
            results = [{**call_record(r.call), "result": r.result} for r in turn.results]
            return message("tool", tool_result_content(turn), tool_results=results)
    raise AssertionError(turn.kind)


def to_conversation(scenario: Scenario, config: DataConfig, conversation_id: str | None = None) -> dict:
    """One training example: metadata the evaluation needs, and the messages."""
    header = scenario.header
    messages = [message("system", compose_system_prompt(config, header, scenario.system))]
    messages += [turn_message(t, config.call_order) for t in scenario.turns]
    return {
        "id": conversation_id or scenario.id,
        "scenario": scenario.id,
        "category": header.category,
        "title": header.title,
        "world": header.world,
        "location": header.location,
        "party": [m.name for m in header.party_members],
        "tags": list(header.tags),
        "augmented": conversation_id is not None and conversation_id != scenario.id,
        "messages": messages,
    }


def conversation_fingerprint(conversation: dict) -> str:
    """Identical messages give identical fingerprints, whatever file or copy they came from."""
    canonical = json.dumps(conversation["messages"], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
