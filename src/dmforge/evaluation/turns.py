"""The held-out DM turns to score, each with the prompt the app would send before it.

A turn's prompt is the conversation up to it, as the app sends it: tool results mapped as the chat
format decided, and cut to the app's context window (`dataset/window.py`) once the conversation
outgrows `n_ctx`, keeping `n_predict` tokens free for the reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from dmforge.contract.chat import ChatFormat, message_costs, prompt_budget, template_messages
from dmforge.contract.window import window_start


@dataclass
class EvalTurn:
    conversation: str
    index: int  # the DM turn's message index in the conversation
    prompt: list[dict]  # the messages the app sends (role and content), windowed
    gold: str
    tool_results: str | None  # the tool message right before the turn, if it continues after results
    party: list[str]
    location: str
    category: str = ""

    @property
    def windowed(self) -> bool:
        return len(self.prompt) < self.index


def eval_turns(
    conversations: list[dict],
    fmt: ChatFormat,
    tokenizer,
    n_ctx: int,
    reply_tokens: int,
    max_turns: int | None = None,
) -> list[EvalTurn]:
    """Every DM turn with its prompt; with `max_turns`, taken round-robin so that every story contributes."""
    budget = prompt_budget(fmt, n_ctx, reply_tokens)
    per_conversation: list[list[EvalTurn]] = []
    for c in conversations:
        chat = template_messages(c["messages"], fmt)
        roles = [m["role"] for m in c["messages"]]  # before mapping: a tool message stays with its call
        costs = message_costs(tokenizer, fmt, chat)
        turns = []
        for i, m in enumerate(c["messages"]):
            if m["role"] != "assistant":
                continue
            previous = c["messages"][i - 1]
            turns.append(
                EvalTurn(
                    c["id"],
                    i,
                    [chat[0], *chat[window_start(roles[:i], costs[:i], budget) : i]],
                    m["content"],
                    previous["content"] if previous["role"] == "tool" else None,
                    c.get("party", []),
                    c.get("location", ""),
                    c.get("category", ""),
                )
            )
        per_conversation.append(turns)
    chosen: list[EvalTurn] = []
    depth = 0
    while any(depth < len(t) for t in per_conversation) and (max_turns is None or len(chosen) < max_turns):
        for turns in per_conversation:
            if depth < len(turns) and (max_turns is None or len(chosen) < max_turns):
                chosen.append(turns[depth])
        depth += 1
    return chosen


def by_conversation(turns: list[EvalTurn]) -> list[list[EvalTurn]]:
    """The turns grouped per conversation, each group in conversation order (how the KV cache is reused)."""
    groups: dict[str, list[EvalTurn]] = {}
    for turn in turns:
        groups.setdefault(turn.conversation, []).append(turn)
    return [sorted(group, key=lambda t: t.index) for group in groups.values()]
