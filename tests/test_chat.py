"""Training text = inference text, token for token; masks cover exactly the DM turns."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from dmforge.contract.chat import (
    IGNORE,
    build_samples,
    conversation_samples,
    detect_chat_format,
    template_messages,
)
from dmforge.errors import DmforgeError
from dmforge.models.templates import GEMMA


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


def _long_conversation(corpus_conversations, tok, fmt):
    """The corpus conversation with the most tokens: it outgrows a 512-token context many times over."""
    from dmforge.contract.chat import message_costs

    return max(corpus_conversations, key=lambda c: sum(message_costs(tok, fmt, c["messages"])))


def test_every_dm_turn_is_trained_once_after_the_window_the_app_sends(smollm2_tokenizer, corpus_conversations):
    from dmforge.contract.chat import message_costs, prompt_budget
    from dmforge.contract.window import window_start

    tok = smollm2_tokenizer
    fmt = detect_chat_format(tok)
    conversation = _long_conversation(corpus_conversations, tok, fmt)
    messages = template_messages(conversation["messages"], fmt)
    samples = conversation_samples(tok, fmt, conversation, max_seq_len=512, reply_tokens=96)
    assert len(samples) > 3 and all(s.windowed for s in samples[1:]) and all(len(s.input_ids) <= 512 for s in samples)

    # Each sample's trained turns, in order, are every DM turn of the conversation exactly once.
    trained = [tok.decode(s.input_ids[a:b]) for s in samples for a, b in s.dm_spans]
    assert trained == [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]

    # And each turn's prompt is the app's window at that point, rendered and tokenized as the app does.
    costs = message_costs(tok, fmt, messages)
    roles = [m["role"] for m in conversation["messages"]]
    budget = prompt_budget(fmt, 512, 96)
    turns = iter(i for i, m in enumerate(messages) if m["role"] == "assistant")
    for sample in samples:
        for prompt_len in sample.prompt_lengths:
            i = next(turns)
            room = min(budget, 512 - costs[i])
            window = [messages[0], *messages[window_start(roles[:i], costs[:i], room) : i]]
            expected = tok.apply_chat_template(window, add_generation_prompt=True, tokenize=True, return_dict=False)
            assert sample.input_ids[:prompt_len] == expected


def test_no_window_separates_a_call_from_its_result(smollm2_tokenizer, corpus_conversations):
    from dmforge.contract.chat import dm_turn_windows

    tok = smollm2_tokenizer
    fmt = detect_chat_format(tok)
    starts = 0
    for conversation in corpus_conversations:
        roles = [m["role"] for m in conversation["messages"]]
        for turn, start in dm_turn_windows(tok, fmt, conversation, 512, 96):
            starts += start > 1
            # A window never opens on a tool message: its DM turn (the calls) is always kept with it.
            assert roles[start] != "tool" and 1 <= start <= turn
    assert starts > 100, "the 512-token context windows many turns of the sample corpus"


def test_the_whole_sample_corpus_trains_at_512_tokens_and_windows_are_counted(smollm2_tokenizer, corpus_conversations):
    tok = smollm2_tokenizer
    fmt = detect_chat_format(tok)
    whole = build_samples(tok, fmt, corpus_conversations, 4096, 192)
    windowed = build_samples(tok, fmt, corpus_conversations, 512, 192)
    assert not any(s.windowed for s in whole) and sum(s.windowed for s in windowed) > 100
    assert sum(len(s.dm_spans) for s in windowed) == sum(len(s.dm_spans) for s in whole)
    assert sum(s.trained_tokens for s in windowed) == sum(s.trained_tokens for s in whole)


def test_only_an_exchange_that_cannot_fit_is_refused(smollm2_tokenizer, corpus_conversations):
    fmt = detect_chat_format(smollm2_tokenizer)
    with pytest.raises(DmforgeError, match=r"more than the context of 128 tokens.*No turn is ever cut"):
        build_samples(smollm2_tokenizer, fmt, corpus_conversations[:3], 128)


def test_call_tokens_and_quiet_turn_ends_are_marked(smollm2_tokenizer):
    tok = smollm2_tokenizer
    fmt = detect_chat_format(tok)
    conversation = {
        "id": "x",
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Ana: I sneak past the guard."},
            {"role": "assistant", "content": "Make a Dexterity (Stealth) check.\n[roll: stealth, dc=12]"},
            {"role": "tool", "content": "[roll: stealth, dc=12] => 15, success"},
            {"role": "assistant", "content": "Fifteen: you slip by unseen."},
        ],
    }
    (sample,) = conversation_samples(tok, fmt, conversation, 512)
    (call,) = sample.calls
    assert tok.decode(sample.input_ids[call.start : call.end]) == "\n[roll: stealth, dc=12]"
    assert tok.decode(sample.input_ids[call.start : call.intent_end]) == "\n[roll: stealth"
    ((first, quiet),) = sample.quiet_turns
    assert tok.decode([sample.input_ids[quiet]]) == "<|im_end|>" and quiet == sample.dm_spans[1][1] - 1
    assert first == sample.dm_spans[1][0] and tok.decode([sample.input_ids[first]]) == "Fif"
    assert sample.decision_tokens == [call.start, first, quiet]


def test_a_conversation_without_dm_turns_has_nothing_to_learn(smollm2_tokenizer):
    fmt = detect_chat_format(smollm2_tokenizer)
    conversation = {"id": "x", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]}
    with pytest.raises(DmforgeError, match="no training samples"):
        build_samples(smollm2_tokenizer, fmt, [conversation], 512)


@contextmanager
def chat_template(tok, template: str):
    """The session tokenizer with another template for one test, restored even when the test fails."""
    original = tok.chat_template
    tok.chat_template = template
    try:
        yield tok
    finally:
        tok.chat_template = original


def test_templates_without_a_tool_role_get_results_in_a_user_turn(smollm2_tokenizer, corpus_conversations):
    # A ChatML variant that refuses unknown roles, as many templates do.
    refuses_tool_role = (
        "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
        "{{ raise_exception('unknown role') }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    with chat_template(smollm2_tokenizer, refuses_tool_role) as tok:
        fmt = detect_chat_format(tok, "auto", "Tool results:\n")
        assert not fmt.tool_role
        conversation = next(c for c in corpus_conversations if any(m["role"] == "tool" for m in c["messages"]))
        (sample,) = conversation_samples(tok, fmt, conversation, 4096)
        text = tok.decode(sample.input_ids)
        assert "<|im_start|>tool" not in text and "<|im_start|>user\nTool results:\n[" in text


def test_templates_that_rewrite_history_get_one_sample_per_turn(smollm2_tokenizer, corpus_conversations):
    # Earlier assistant turns are shortened once a later message exists (like reasoning-stripping templates).
    rewrites_history = (
        "{% for m in messages %}{% set c = m['content'] %}"
        "{% if m['role'] == 'assistant' and not loop.last %}{% set c = c[:20] %}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + c + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    with chat_template(smollm2_tokenizer, rewrites_history) as tok:
        fmt = detect_chat_format(tok)
        assert not fmt.prefix_stable
        conversation = corpus_conversations[0]
        samples = conversation_samples(tok, fmt, conversation, 4096)
        dm_count = sum(m["role"] == "assistant" for m in conversation["messages"])
        assert len(samples) == dm_count and all(len(s.dm_spans) == 1 for s in samples)
        last = samples[-1]
        first, end = last.dm_spans[0]
        assert tok.decode(last.input_ids[first:end]) == conversation["messages"][-1]["content"] + "<|im_end|>"


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
