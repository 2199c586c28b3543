"""The opening margin: how far a reply's first token leans to a call, as the app's greedy decoding sees it."""

from __future__ import annotations

import numpy as np

from dmforge.config import DecodeConfig

SYSTEM = {"role": "system", "content": "You are the Dungeon Master. Ask for a check when the rules need one."}
SHOTS = [  # a model that has seen three replies open with a call opens the fourth with one
    message
    for line in ("I climb the wall.", "I search the chest.", "I listen at the door.")
    for message in ({"role": "user", "content": line}, {"role": "assistant", "content": "[roll: perception]"})
]


def test_a_reply_opens_with_a_call_exactly_when_its_margin_is_positive(smollm2_gguf):
    from dmforge.evaluation.runtime import Runtime

    runtime = Runtime(smollm2_gguf, 512)
    decode = DecodeConfig(n_predict=16)
    prompts = {
        "primed": [SYSTEM, *SHOTS, {"role": "user", "content": "I sneak past the guard."}],
        "chat": [SYSTEM, {"role": "user", "content": "Good evening! What a lovely tavern this is."}],
    }
    margins = {}
    for name, messages in prompts.items():
        margins[name] = runtime.opening_margin(messages, decode)
        opens = runtime.reply(messages, decode, stop_loops=False).text.startswith("[")
        assert opens == (margins[name] > 0), (name, margins[name])
    assert margins["primed"] > 0 > margins["chat"], margins


def test_the_penalties_lower_a_token_the_prompt_just_used_and_leave_the_logits_alone_when_off(smollm2_gguf):
    import llama_cpp

    from dmforge.evaluation.runtime import Runtime

    runtime = Runtime(smollm2_gguf, 512)
    messages = [SYSTEM, {"role": "user", "content": "I roll, roll, roll the barrel down the hill."}]
    ids = runtime.prompt_ids(messages)
    runtime._load(ids)
    logits = llama_cpp.llama_get_logits_ith(runtime.llm._ctx.ctx, -1)
    raw = np.ctypeslib.as_array(logits, shape=(runtime.llm.n_vocab(),)).copy()  # the next eval overwrites them

    plain = runtime.sampler(DecodeConfig(penalty_repeat=1.0, dry_multiplier=0.0), None, ids)
    strict = runtime.sampler(DecodeConfig(penalty_repeat=1.5, penalty_last_n=64, dry_multiplier=0.0), None, ids)
    try:
        unpenalized = plain.penalized_logits(runtime.llm._ctx.ctx, -1)
        penalized = strict.penalized_logits(runtime.llm._ctx.ctx, -1)
    finally:
        plain.free()
        strict.free()
    assert np.allclose(unpenalized, raw)
    recent = ids[-1]  # the last prompt token is inside any penalty window
    assert penalized[recent] < raw[recent]  # divided by the penalty when positive, multiplied when negative
    prompt = set(ids)
    unseen = next(t for t in range(len(raw)) if t not in prompt)
    assert penalized[unseen] == raw[unseen]
