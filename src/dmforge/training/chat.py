"""Conversations → token ids and loss masks, through the model's own chat template.

One source of truth: the text trained on is what `tokenizer.apply_chat_template` renders, which
is the template embedded in the GGUF and rendered by the app with `jinja: true`. Nothing here
formats a prompt by hand.

Masks: every DM (assistant) turn is trained, with the special token that ends it, so the model
learns to stop. Everything else (system, players, tool results, the template's role headers)
is context only. The spans come from rendering prefixes of the conversation: the text up to a
DM turn with `add_generation_prompt=True` is exactly the prompt the app sends before that turn.

A conversation longer than `max_seq_len` is split between exchanges (a User turn and the DM
turns and tool results that answer it), each piece keeping the system message. A DM turn is
never cut: if one exchange cannot fit, that is an error naming the scenario.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dmforge.errors import DmforgeError

ToolResultStyle = Literal["auto", "tool_role", "user_role"]
IGNORE = -100


@dataclass
class Sample:
    """One training sequence: token ids, labels (-100 where not trained), and where it came from."""

    conversation: str
    input_ids: list[int]
    labels: list[int]
    dm_spans: list[tuple[int, int]] = field(default_factory=list)  # token index ranges of trained turns
    prompt_lengths: list[int] = field(default_factory=list)  # tokens before each trained turn

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


@dataclass(frozen=True)
class ChatFormat:
    """How a tokenizer's template renders dmforge conversations; decided once per model."""

    tool_role: bool  # tool results go in the template's tool role; else in a user turn
    tool_prefix: str  # text before tool results when they go in a user turn
    end_of_turn: str  # the special token that closes a DM turn
    prefix_stable: bool  # rendering a prefix of a conversation gives a prefix of the text


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


_PROBE = [
    {"role": "system", "content": "SYSTEM-PROBE"},
    {"role": "user", "content": "USER-PROBE"},
    {"role": "assistant", "content": "DM-PROBE [roll: perception]"},
    {"role": "tool", "content": "[roll: perception] => TOOL-PROBE"},
    {"role": "assistant", "content": "DM-PROBE-2"},
]


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
    return ChatFormat(tool_role, tool_prefix, end, stable)


def _exchanges(messages: list[dict]) -> list[list[dict]]:
    """Non-system messages grouped so that each group starts at a user turn (or the DM's opening)."""
    groups: list[list[dict]] = []
    for m in messages:
        if m["role"] == "user" or not groups:
            groups.append([])
        groups[-1].append(m)
    return groups


def _tokenize(tokenizer, text: str):
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)


def render_sequence(
    tokenizer, fmt: ChatFormat, messages: list[dict], conversation: str, last_turn_only: bool = False
) -> Sample:
    """Render one message list (system first) into ids and labels that train its DM turns.

    With `last_turn_only`, only the final DM turn is trained (and checked): the form used for
    templates that rewrite earlier turns once later ones follow.
    """
    chat = template_messages(messages, fmt)
    full = _render(tokenizer, chat)
    encoded = _tokenize(tokenizer, full)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    labels = [IGNORE] * len(ids)
    sample = Sample(conversation, ids, labels)
    for i, message in enumerate(chat):
        if message["role"] != "assistant" or (last_turn_only and i != len(chat) - 1):
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
        first = next((t for t, (a, _) in enumerate(offsets) if a >= start), len(ids))
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
        sample.prompt_lengths.append(first)
    return sample


def _per_turn_samples(tokenizer, fmt: ChatFormat, messages: list[dict], conversation: str) -> list[Sample]:
    """For templates that rewrite history: one sample per DM turn, trained on that turn alone."""
    samples = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        samples.append(render_sequence(tokenizer, fmt, messages[: i + 1], conversation, last_turn_only=True))
    return samples


def conversation_samples(tokenizer, fmt: ChatFormat, conversation: dict, max_seq_len: int) -> list[Sample]:
    """All training samples of one conversation, split between exchanges to fit `max_seq_len`."""
    cid = conversation["id"]
    messages = conversation["messages"]
    system, rest = messages[:1], messages[1:]
    pieces: list[list[dict]] = []
    current: list[dict] = []
    for exchange in _exchanges(rest):
        candidate = current + exchange
        if current and _length(tokenizer, fmt, system + candidate) > max_seq_len:
            pieces.append(current)
            candidate = exchange
        if _length(tokenizer, fmt, system + exchange) > max_seq_len:
            raise DmforgeError(
                f"{cid}: the exchange starting `{_clip(exchange[0]['content'])}` needs "
                f"{_length(tokenizer, fmt, system + exchange)} tokens with the system prompt, more than "
                f"max_seq_len={max_seq_len}. Raise --max-seq-len (the app's n_ctx must be as large) or split the "
                "exchange in the scenario. No DM turn is ever truncated."
            )
        current = candidate
    if current:
        pieces.append(current)

    samples: list[Sample] = []
    for piece in pieces:
        if not any(m["role"] == "assistant" for m in piece):
            continue  # a piece of player turns only has nothing to train
        if fmt.prefix_stable:
            samples.append(render_sequence(tokenizer, fmt, system + piece, cid))
        else:
            samples += _per_turn_samples(tokenizer, fmt, system + piece, cid)
    for sample in samples:
        if sample.trained_tokens == 0:
            raise DmforgeError(f"{cid}: a training sample has an empty loss mask; nothing in it would be learned.")
        if len(sample.input_ids) > max_seq_len:
            raise DmforgeError(f"{cid}: a sample of {len(sample.input_ids)} tokens exceeds max_seq_len={max_seq_len}.")
    return samples


def _length(tokenizer, fmt: ChatFormat, messages: list[dict]) -> int:
    return len(_tokenize(tokenizer, _render(tokenizer, template_messages(messages, fmt)))["input_ids"])


def _clip(text: str, width: int = 50) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def build_samples(tokenizer, fmt: ChatFormat, conversations: list[dict], max_seq_len: int) -> list[Sample]:
    samples = [s for c in conversations for s in conversation_samples(tokenizer, fmt, c, max_seq_len)]
    if not samples:
        raise DmforgeError("The dataset produced no training samples: it has no DM turns to learn from.")
    return samples
