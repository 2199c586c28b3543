"""Conversations → token ids and loss masks, through the model's own chat template.

One source of truth: the text trained on is what `tokenizer.apply_chat_template` renders, which
is the template embedded in the GGUF and rendered by the app with `jinja: true`. Nothing here
formats a prompt by hand.

Masks: every DM (assistant) turn is trained, with the special token that ends it, so the model
learns to stop. Everything else (system, players, tool results, the template's role headers)
is context only. The spans come from rendering prefixes of the conversation: the text up to a
DM turn with `add_generation_prompt=True` is exactly the prompt the app sends before that turn.

Context: each DM turn is trained once, after exactly the history the app sends at that point,
which is the context window of `dataset/window.py` (the system message and the newest whole
turns that leave `reply_tokens` free in `max_seq_len`; the newest turn always). While a conversation fits, that is the
whole history and one sample trains all its DM turns; once it outgrows the context, DM turns
that see the same window share a sample, and a new window starts a new one. Only an exchange
that cannot fit on its own (system, one player turn and the DM's reply) is refused.

For the weighted loss and the call metrics, a sample also records where its DM turns decide:
the tokens of every tool call, and the token where a quiet turn ends instead of calling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dmforge.contract.window import turn_units, window_start
from dmforge.errors import DmforgeError
from dmforge.tools.syntax import BracketKind, scan_brackets

ToolResultStyle = Literal["auto", "tool_role", "user_role"]
IGNORE = -100


@dataclass
class CallSpan:
    """Token positions of one tool call inside a sample: `[start, end)`, and where its intent ends.

    The intent is the tool's name and positional values (`[roll: perception`): the tokens before the
    first `,` or the closing `]`. Its argument, `[argument_start, intent_end)`, is what decides which
    roll is asked for (` perception`); the tokens before it (`[roll:`) are the same for every roll.
    """

    start: int
    end: int
    intent_end: int
    argument_start: int = -1  # -1: no argument (`[initiative]`); the span is then empty
    intent: str = ""  # `roll: perception`, folded: what the class-balanced weights count

    @property
    def argument(self) -> range:
        return range(self.argument_start, self.intent_end) if self.argument_start >= 0 else range(0)


@dataclass
class Sample:
    """One training sequence: token ids, labels (-100 where not trained), and where it came from."""

    conversation: str
    input_ids: list[int]
    labels: list[int]
    dm_spans: list[tuple[int, int]] = field(default_factory=list)  # token index ranges of trained turns
    prompt_lengths: list[int] = field(default_factory=list)  # tokens before each trained turn
    calls: list[CallSpan] = field(default_factory=list)  # tool calls in the trained turns
    # Trained turns without calls: their first token (which a calls-first turn would have made a `[`) and
    # their end-of-turn token (where a turn written narration-first would have opened a call instead).
    quiet_turns: list[tuple[int, int]] = field(default_factory=list)
    # Per trained turn (parallel to `dm_spans`): whether a tool result, not a player, spoke last. The two
    # decisions differ: after a player the DM usually calls, after a result usually narrates, unless the
    # result asks for the next link of the combat chain (a hit → `[damage]`).
    after_tool: list[bool] = field(default_factory=list)
    windowed: bool = False  # the context starts later than the conversation's first turn

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)

    @property
    def decision_tokens(self) -> list[int]:
        """Tokens where a DM turn decides whether to call: each call's first, a quiet turn's first and last."""
        return sorted({c.start for c in self.calls} | {t for turn in self.quiet_turns for t in turn})


@dataclass(frozen=True)
class ChatFormat:
    """How a tokenizer's template renders dmforge conversations; decided once per model."""

    tool_role: bool  # tool results go in the template's tool role; else in a user turn
    tool_prefix: str  # text before tool results when they go in a user turn
    end_of_turn: str  # the special token that closes a DM turn
    prefix_stable: bool  # rendering a prefix of a conversation gives a prefix of the text
    # Tokens the template adds around a message's content, per role, and for the reply's header. A
    # message costs its content's tokens plus its role's framing: the app counts the same way.
    framing: dict[str, int] = field(default_factory=dict)
    reply_header: int = 0


def template_messages(messages: list[dict], fmt: ChatFormat) -> list[dict]:
    """dmforge messages → what the app sends: role and content only, tool results mapped as decided."""
    out = []
    for m in messages:
        if m["role"] == "tool" and not fmt.tool_role:
            out.append({"role": "user", "content": fmt.tool_prefix + m["content"]})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


def _render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


_PROBE = [
    {"role": "system", "content": "SYSTEM-PROBE"},
    {"role": "user", "content": "USER-PROBE"},
    {"role": "assistant", "content": "DM-PROBE [roll: perception]"},
    {"role": "tool", "content": "[roll: perception] => TOOL-PROBE"},
    {"role": "assistant", "content": "DM-PROBE-2"},
]


def _framing(tokenizer, fmt: ChatFormat) -> tuple[dict[str, int], int]:
    """Tokens the template adds per message of each role, and for the generation prompt."""
    system = {"role": "system", "content": "SYSTEM-PROBE"}
    alone = _count(tokenizer, _render(tokenizer, [system]))
    framing = {"system": alone - _count(tokenizer, system["content"])}
    for role in ("user", "assistant", "tool"):
        (message,) = template_messages([{"role": role, "content": "Probe text."}], fmt)
        rendered = _count(tokenizer, _render(tokenizer, [system, message]))
        framing[role] = rendered - alone - _count(tokenizer, message["content"])
    header = _count(tokenizer, _render(tokenizer, [system], generation_prompt=True)) - alone
    return framing, header


def detect_chat_format(tokenizer, tool_results: ToolResultStyle = "auto", tool_prefix: str = "") -> ChatFormat:
    """Probe the template: does it take a tool role, which token ends a turn, is it prefix-stable."""
    tool_role = tool_results == "tool_role"
    if tool_results == "auto":
        try:
            tool_role = "TOOL-PROBE" in _render(tokenizer, _PROBE)
        except Exception:
            tool_role = False
    fmt = ChatFormat(tool_role, tool_prefix, "", True)
    probe = template_messages(_PROBE, fmt)
    try:
        full = _render(tokenizer, probe)
        prompt = _render(tokenizer, probe[:2], generation_prompt=True)
        through = _render(tokenizer, probe[:3])
    except Exception as exc:
        raise DmforgeError(
            f"The model's chat template cannot render a DM conversation ({exc}). Set `model.tool_results: "
            "user_role`, or supply another template with `model.chat_template`."
        ) from exc
    after = through.split("DM-PROBE [roll: perception]", 1)[-1]
    specials = sorted(tokenizer.all_special_tokens + list(tokenizer.get_added_vocab()), key=len, reverse=True)
    end = next((tok for tok in specials if tok and after.lstrip(" ").startswith(tok)), None)
    if end is None:
        raise DmforgeError(
            "The model's chat template does not close an assistant turn with a special token, so the model "
            f"would never learn to stop (after the reply comes {after[:20]!r}). Use another base or template."
        )
    stable = full.startswith(prompt) and full.startswith(through) and through.startswith(prompt)
    framing, header = _framing(tokenizer, fmt)
    return ChatFormat(tool_role, tool_prefix, end, stable, framing, header)


def message_costs(tokenizer, fmt: ChatFormat, chat: list[dict]) -> list[int]:
    """What each message (as the app sends it) takes in the prompt: its content's tokens plus its framing."""
    return [_count(tokenizer, m["content"]) + fmt.framing.get(m["role"], 0) for m in chat]


def prompt_budget(fmt: ChatFormat, max_seq_len: int, reply_tokens: int) -> int:
    """Tokens the window may fill: the context less the reply's room and the reply's header."""
    return max_seq_len - reply_tokens - fmt.reply_header


def _tokenize(tokenizer, text: str):
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)


def _token_at(offsets: list[tuple[int, int]], char: int, default: int) -> int:
    """The first token that starts at or after character `char`, or that contains it."""
    for t, (a, b) in enumerate(offsets):
        if a >= char or (a <= char < b):
            return t
    return default


def render_sequence(tokenizer, fmt: ChatFormat, messages: list[dict], conversation: str, train_from: int = 0) -> Sample:
    """Render one message list (system first) into ids and labels that train its DM turns.

    Only DM turns at index `train_from` or later are trained (and checked): earlier ones are the
    history of a window, trained in the sample of their own window.
    """
    chat = template_messages(messages, fmt)
    full = _render(tokenizer, chat)
    encoded = _tokenize(tokenizer, full)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    labels = [IGNORE] * len(ids)
    sample = Sample(conversation, ids, labels)
    for i, message in enumerate(chat):
        if message["role"] != "assistant" or i < train_from:
            continue
        prompt = _render(tokenizer, chat[:i], generation_prompt=True)
        through = _render(tokenizer, chat[: i + 1])
        if not (full.startswith(prompt) and full.startswith(through)):
            raise DmforgeError(
                f"{conversation}: the chat template renders a DM turn differently once later turns follow, so a "
                "multi-turn sample would not match inference. (dmforge falls back to one sample per turn for "
                "such templates; this should not happen.)"
            )
        start = len(prompt)
        # `through` ends with this turn, so its last end-of-turn token is the one that closes it.
        end = through.rfind(fmt.end_of_turn) + len(fmt.end_of_turn)
        if end <= start:
            raise DmforgeError(f"{conversation}: a DM turn is not closed by {fmt.end_of_turn!r} in the chat template.")
        first = _token_at(offsets, start, len(ids))
        last = next((t for t, (a, _) in enumerate(offsets) if a >= end), len(ids))
        # The tokens before the turn must be exactly what the app's runtime gets from tokenizing the prompt.
        if ids[:first] != _tokenize(tokenizer, prompt)["input_ids"]:
            raise DmforgeError(
                f"{conversation}: the tokens of a DM turn's prompt differ from tokenizing that prompt alone "
                "(a tokenizer merges across the turn boundary). Report this with the base model's name."
            )
        for t in range(first, last):
            labels[t] = ids[t]
        sample.dm_spans.append((first, last))
        sample.after_tool.append(i > 0 and messages[i - 1]["role"] == "tool")
        sample.prompt_lengths.append(first)
        _mark_calls(sample, message["content"], full.find(message["content"], start), offsets, (first, last))
    return sample


def _mark_calls(sample: Sample, content: str, at: int, offsets, span: tuple[int, int]) -> None:
    """Record the token spans of the turn's tool calls, or its end token when it makes none.

    A call's span starts at the line break before it when it opens a line: what follows the last word
    of the narration, a line break or the end of the turn, is where the turn decides to call.
    """
    first, last = span
    calls = [b for b in scan_brackets(content) if b.kind is BracketKind.CALL]
    if not calls:
        sample.quiet_turns.append((first, last - 1))
        return
    if at < 0:  # the template changed the content's text, so its characters cannot be located
        return
    line_starts = [0]
    for line in content.split("\n"):
        line_starts.append(line_starts[-1] + len(line) + 1)
    for bracket in calls:
        opening = at + line_starts[bracket.line] + bracket.column
        begin = opening - 1 if bracket.column == 0 and bracket.line > 0 else opening
        cut = min(i for i in (bracket.text.find(","), len(bracket.text) - 1) if i >= 0)
        start_tok = _token_at(offsets, begin, last)
        end_tok = _token_at(offsets, opening + len(bracket.text), last)
        intent_tok = min(max(start_tok + 1, _token_at(offsets, opening + cut, last)), end_tok)
        colon = bracket.text.find(":")
        # The argument's first token is the one holding the first character after the colon (its space).
        argument_tok = _token_at(offsets, opening + colon + 1, last) if 0 < colon < cut else -1
        if not start_tok < argument_tok < intent_tok:
            argument_tok = -1
        intent = " ".join(bracket.text[1:cut].split()).lower()
        if first <= start_tok < end_tok <= last:
            sample.calls.append(CallSpan(start_tok, end_tok, intent_tok, argument_tok, intent))


def _per_turn_samples(
    tokenizer, fmt: ChatFormat, messages: list[dict], conversation: str, starts: list[int]
) -> list[Sample]:
    """For templates that rewrite history: one sample per DM turn, after that turn's own window."""
    samples = []
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for i, start in zip(turns, starts, strict=True):
        window = [messages[0], *messages[start : i + 1]]
        sample = render_sequence(tokenizer, fmt, window, conversation, train_from=len(window) - 1)
        sample.windowed = start > 1
        samples.append(sample)
    return samples


def dm_turn_windows(
    tokenizer, fmt: ChatFormat, conversation: dict, max_seq_len: int, reply_tokens: int
) -> list[tuple[int, int]]:
    """(DM turn index, start of its window) for every DM turn: the history the app sends before it.

    A reply longer than `reply_tokens` (the app would cut it there) still has to fit beside its window,
    so its window is the one that leaves room for the whole reply.
    """
    cid = conversation["id"]
    messages = conversation["messages"]
    chat = template_messages(messages, fmt)
    roles = [m["role"] for m in messages]  # before mapping: a tool message stays with the call it answers
    costs = message_costs(tokenizer, fmt, chat)
    budget = prompt_budget(fmt, max_seq_len, reply_tokens)
    out = []
    for i, role in enumerate(roles):
        if role != "assistant":
            continue
        # The sample is the window plus this turn, which costs its content, framing and end token.
        room = min(budget, max_seq_len - costs[i])
        start = window_start(roles[:i], costs[:i], room)
        newest = [u for u in turn_units(roles[:i]) if u[1] == i]
        needed = costs[0] + sum(sum(costs[a:b]) for a, b in newest[-1:]) + costs[i]
        if needed > max_seq_len:
            raise DmforgeError(
                f"{cid}: the DM turn `{_clip(chat[i]['content'])}` needs {needed} tokens with the system prompt and "
                f"the turn before it, more than the context of {max_seq_len} tokens (max_seq_len, the app's n_ctx). "
                "Raise --max-seq-len, or shorten that exchange or the scenario's SYSTEM section. No turn is ever cut."
            )
        out.append((i, start))
    return out


def conversation_samples(
    tokenizer, fmt: ChatFormat, conversation: dict, max_seq_len: int, reply_tokens: int = 0
) -> list[Sample]:
    """All training samples of one conversation: every DM turn once, after the app's window at that turn."""
    cid = conversation["id"]
    messages = conversation["messages"]
    windows = dm_turn_windows(tokenizer, fmt, conversation, max_seq_len, reply_tokens)
    if not fmt.prefix_stable:
        samples = _per_turn_samples(tokenizer, fmt, messages, cid, [start for _, start in windows])
    else:
        # DM turns that see the same window share one sample, which ends at the last of them and trains
        # only them: the DM turns before the first are that window's history, trained with their own.
        groups: list[list[int]] = []  # [window start, first DM turn, last DM turn]
        for turn, start in windows:
            if groups and groups[-1][0] == start:
                groups[-1][2] = turn
            else:
                groups.append([start, turn, turn])
        samples = []
        for start, first, last in groups:
            window = [messages[0], *messages[start : last + 1]]
            sample = render_sequence(tokenizer, fmt, window, cid, train_from=first - start + 1)
            sample.windowed = start > 1
            samples.append(sample)
    for sample in samples:
        if sample.trained_tokens == 0:
            raise DmforgeError(f"{cid}: a training sample has an empty loss mask; nothing in it would be learned.")
        if len(sample.input_ids) > max_seq_len:
            raise DmforgeError(f"{cid}: a sample of {len(sample.input_ids)} tokens exceeds max_seq_len={max_seq_len}.")
    return samples


def _clip(text: str, width: int = 50) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def build_samples(
    tokenizer, fmt: ChatFormat, conversations: list[dict], max_seq_len: int, reply_tokens: int = 0
) -> list[Sample]:
    samples = [s for c in conversations for s in conversation_samples(tokenizer, fmt, c, max_seq_len, reply_tokens)]
    if not samples:
        raise DmforgeError("The dataset produced no training samples: it has no DM turns to learn from.")
    return samples
