"""Batched replies in a small context: many conversations of different lengths through one KV cache.

At `n_ctx` 512 each sequence's prompt and reply fill most of its share of the cache, and as sequences
of different lengths come and go the free cells end up scattered. llama.cpp places a batch only in a
contiguous run of free cells, so a fragmented cache refuses a prompt chunk or a step's batch although
enough cells are free; the evaluation must split the batch and go on, not fail the run nor compact the
cache (llama.cpp's defrag aborts the process in the app's vintage). A phone-sized context is exactly
what a user sweeping `n_ctx` asks for.
"""

from __future__ import annotations

from dmforge.config import DecodeConfig
from dmforge.contract.chat import detect_chat_format
from dmforge.evaluation.batch import batch_replies
from dmforge.evaluation.runtime import Runtime
from dmforge.evaluation.turns import by_conversation, eval_turns


def test_a_small_context_shared_by_four_sequences_replies_to_every_turn(
    smollm2_gguf, smollm2_tokenizer, corpus_conversations
):
    runtime = Runtime(smollm2_gguf, 512)
    fmt = detect_chat_format(smollm2_tokenizer)
    decode = DecodeConfig(n_predict=160, temperature=0.0, penalty_repeat=1.0)
    long_ones = sorted(corpus_conversations, key=lambda c: -len(c["messages"]))[:6]
    turns = eval_turns(long_ones, fmt, smollm2_tokenizer, 512, decode.n_predict)
    groups = by_conversation(turns)
    prompts = [[t.prompt for t in group][:6] for group in groups]
    replies = batch_replies(runtime, prompts, decode, parallel=4)
    assert [len(r) for r in replies] == [len(p) for p in prompts]
    assert sum(r.tokens for conversation in replies for r in conversation) > 0


def test_flash_attention_gives_the_same_replies_as_plain_attention(
    smollm2_gguf, smollm2_tokenizer, corpus_conversations
):
    """Flash attention only skips the other sequences' cells of the shared cache: the replies must not change.

    Greedy decoding with no penalty leaves no sampler between the logits and the reply, so a difference
    in attention shows as a different reply; rounding may flip a rare near-tie, hence the margin.
    """
    runtime = Runtime(smollm2_gguf, 1024)
    fmt = detect_chat_format(smollm2_tokenizer)
    decode = DecodeConfig(n_predict=48, temperature=0.0, penalty_repeat=1.0)
    turns = eval_turns(corpus_conversations[:8], fmt, smollm2_tokenizer, 1024, decode.n_predict)
    prompts = [[t.prompt for t in group][:3] for group in by_conversation(turns)]
    plain = batch_replies(runtime, prompts, decode, parallel=4, flash_attention=False)
    flash = batch_replies(runtime, prompts, decode, parallel=4)
    pairs = [(a.text, b.text) for x, y in zip(plain, flash, strict=True) for a, b in zip(x, y, strict=True)]
    assert len(pairs) == sum(len(p) for p in prompts) >= 12
    assert sum(a == b for a, b in pairs) >= 0.9 * len(pairs)
