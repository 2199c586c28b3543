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

from dmforge.config import DataConfig, compose_system_prompt
from dmforge.scenarios.model import Scenario, Turn, TurnKind
from dmforge.tools.syntax import ToolCall

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


def turn_message(turn: Turn) -> dict:
    match turn.kind:
        case TurnKind.USER:
            return message("user", turn.text, name=turn.speaker or "")
        case TurnKind.DM:
            return message("assistant", turn.text, tool_calls=[call_record(c) for c in turn.calls])
        case TurnKind.TOOLCALL:
            results = [{**call_record(r.call), "result": r.result} for r in turn.results]
            return message("tool", tool_result_content(turn), tool_results=results)
    raise AssertionError(turn.kind)


def to_conversation(scenario: Scenario, config: DataConfig, conversation_id: str | None = None) -> dict:
    """One training example: metadata the evaluation needs, and the messages."""
    header = scenario.header
    messages = [message("system", compose_system_prompt(config, header, scenario.system))]
    messages += [turn_message(t) for t in scenario.turns]
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
