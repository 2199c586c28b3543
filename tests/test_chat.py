"""Training text = inference text, token for token; masks cover exactly the DM turns."""

from __future__ import annotations

import pytest

from dmforge.errors import DmforgeError
from dmforge.models.templates import GEMMA
from dmforge.training.chat import (
    IGNORE,
    build_samples,
    conversation_samples,
    detect_chat_format,
    template_messages,
)


def test_smollm2_format(smollm2_tokenizer):
    fmt = detect_chat_format(smollm2_tokenizer)
    assert fmt.tool_role and fmt.end_of_turn == "<|im_end|>" and fmt.prefix_stable


def test_training_tokens_equal_inference_tokens(smollm2_tokenizer, corpus_conversations):
    tok = smollm2_tokenizer
    fmt = detect_chat_format(tok)
    checked = 0
    for conversation in corpus_conversations[:25]:
        for sample in conversation_samples(tok, fmt, conversation, max_seq_len=4096):
            # The whole sequence is what the template renders for these messages, tokenized as the app does.
            messages = template_messages(conversation["messages"], fmt)
            assert sample.input_ids == tok.apply_chat_template(messages, tokenize=True, return_dict=False)
            dm_indices = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
            for i, prompt_len, (first, last) in zip(dm_indices, sample.prompt_lengths, sample.dm_spans, strict=True):
                prompt = tok.apply_chat_template(
                    messages[:i], add_generation_prompt=True, tokenize=True, return_dict=False
                )
                assert sample.input_ids[:prompt_len] == prompt, "the prompt before a DM turn is the inference prompt"
                reply = tok(messages[i]["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
                assert sample.input_ids[first:last] == reply, "the trained span is the reply and its end token"
                checked += 1
    assert checked > 100


def test_mask_covers_exactly_the_dm_turns(smollm2_tokenizer, corpus_conversations):
    tok = smollm2_tokenizer
    fmt = detect_chat_format(tok)
    for conversation in corpus_conversations[:20]:
        (sample,) = conversation_samples(tok, fmt, conversation, max_seq_len=4096)
        trained = [i for i, label in enumerate(sample.labels) if label != IGNORE]
        spans = [i for first, last in sample.dm_spans for i in range(first, last)]
        assert trained == spans
        dm_texts = [m["content"] for m in conversation["messages"] if m["role"] == "assistant"]
        assert len(sample.dm_spans) == len(dm_texts), "every DM turn is trained, not only the last"
        for (first, last), text in zip(sample.dm_spans, dm_texts, strict=True):
            assert tok.decode(sample.input_ids[first:last]) == text + "<|im_end|>"
        assert all(sample.labels[i] == sample.input_ids[i] for i in trained)
        untrained = tok.decode([t for t, lab in zip(sample.input_ids, sample.labels, strict=True) if lab == IGNORE])
        for m in conversation["messages"]:
            if m["role"] != "assistant":
                assert m["content"] in untrained


def test_long_conversations_split_between_exchanges_without_losing_a_turn(smollm2_tokenizer, corpus_conversations):
    tok = smollm2_tokenizer
    fmt = detect_chat_format(tok)
    whole = build_samples(tok, fmt, corpus_conversations, 4096)
    split = build_samples(tok, fmt, corpus_conversations, 1024)
    assert len(split) > len(whole)
    assert all(len(s.input_ids) <= 1024 for s in split)
    assert sum(len(s.dm_spans) for s in split) == sum(len(s.dm_spans) for s in whole)
    assert sum(s.trained_tokens for s in split) == sum(s.trained_tokens for s in whole)


def test_a_dm_turn_that_cannot_fit_is_an_error_not_a_truncation(smollm2_tokenizer, corpus_conversations):
    fmt = detect_chat_format(smollm2_tokenizer)
    with pytest.raises(DmforgeError, match=r"more than max_seq_len=128.*No DM turn is ever truncated"):
        build_samples(smollm2_tokenizer, fmt, corpus_conversations[:3], 128)


def test_a_conversation_without_dm_turns_has_nothing_to_learn(smollm2_tokenizer):
    fmt = detect_chat_format(smollm2_tokenizer)
    conversation = {"id": "x", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]}
    with pytest.raises(DmforgeError, match="no training samples"):
        build_samples(smollm2_tokenizer, fmt, [conversation], 512)


def test_templates_without_a_tool_role_get_results_in_a_user_turn(smollm2_tokenizer, corpus_conversations):
    tok = smollm2_tokenizer
    original = tok.chat_template
    try:
        # A ChatML variant that refuses unknown roles, as many templates do.
        tok.chat_template = (
            "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
            "{{ raise_exception('unknown role') }}{% endif %}"
            "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
        )
        fmt = detect_chat_format(tok, "auto", "Tool results:\n")
        assert not fmt.tool_role
        conversation = next(c for c in corpus_conversations if any(m["role"] == "tool" for m in c["messages"]))
        (sample,) = conversation_samples(tok, fmt, conversation, 4096)
        text = tok.decode(sample.input_ids)
        assert "<|im_start|>tool" not in text and "<|im_start|>user\nTool results:\n[" in text
    finally:
        tok.chat_template = original


def test_templates_that_rewrite_history_get_one_sample_per_turn(smollm2_tokenizer, corpus_conversations):
    tok = smollm2_tokenizer
    original = tok.chat_template
    try:
        # Earlier assistant turns are shortened once a later message exists (like reasoning-stripping templates).
        tok.chat_template = (
            "{% for m in messages %}{% set c = m['content'] %}"
            "{% if m['role'] == 'assistant' and not loop.last %}{% set c = c[:20] %}{% endif %}"
            "{{ '<|im_start|>' + m['role'] + '\n' + c + '<|im_end|>\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
        )
        fmt = detect_chat_format(tok)
        assert not fmt.prefix_stable
        conversation = corpus_conversations[0]
        samples = conversation_samples(tok, fmt, conversation, 4096)
        dm_count = sum(m["role"] == "assistant" for m in conversation["messages"])
        assert len(samples) == dm_count and all(len(s.dm_spans) == 1 for s in samples)
        last = samples[-1]
        first, end = last.dm_spans[0]
        assert tok.decode(last.input_ids[first:end]) == conversation["messages"][-1]["content"] + "<|im_end|>"
    finally:
        tok.chat_template = original


def test_supplied_gemma_template_renders_system_and_tool_turns(smollm2_tokenizer):
    from jinja2 import Environment

    messages = [
        {"role": "system", "content": "Be grim."},
        {"role": "user", "content": "I look."},
        {"role": "assistant", "content": "Roll. [roll: perception]"},
        {"role": "tool", "content": "[roll: perception] => 12"},
        {"role": "assistant", "content": "You see it."},
    ]
    text = Environment().from_string(GEMMA).render(messages=messages, bos_token="<bos>", add_generation_prompt=False)
    assert text == (
        "<bos><start_of_turn>user\nBe grim.\n\nI look.<end_of_turn>\n"
        "<start_of_turn>model\nRoll. [roll: perception]<end_of_turn>\n"
        "<start_of_turn>user\n[roll: perception] => 12<end_of_turn>\n"
        "<start_of_turn>model\nYou see it.<end_of_turn>\n"
    )
