"""The registry's grammar, checked by llama.cpp's own grammar engine: gold calls pass, broken ones cannot."""

from __future__ import annotations

import pytest

from conftest import CORPUS
from dmforge.config import DecodeConfig
from dmforge.evaluation.runtime import Runtime, grammar_accepts
from dmforge.scenarios import check_paths
from dmforge.tools.grammar import registry_grammar
from dmforge.tools.registry import load_registry


@pytest.fixture(scope="module")
def runtime(smollm2_gguf):
    """The offline base's own GGUF: its vocabulary is what the grammar constrains."""
    return Runtime(smollm2_gguf, 2048)


@pytest.fixture(scope="module")
def grammar():
    return registry_grammar(load_registry())


def test_every_gold_dm_turn_of_the_corpus_is_accepted(runtime, grammar):
    turns = [t.text for s in check_paths([CORPUS]).scenarios for t in s.dm_turns]
    rejected = [t for t in turns if not grammar_accepts(runtime, grammar, t)]
    assert len(turns) > 1000 and rejected == []


@pytest.mark.parametrize(
    "text",
    [
        "You see it. [roll: perceptoin]",  # not a skill
        "Roll. [roll: stealth, dc=99]",  # dc out of range
        "Strike! [attack: longsword]",  # attack needs a target
        "Ouch. [damage: 1d8+3, type=sharp]",  # not a damage type
        "Hm. [roll: stealth, advantage, disadvantage]",  # exclusive flags
        "Boom. [cast: fireball]",  # not a registered tool
        "Odd [laughs] text.",  # brackets are calls only
        "An unclosed [roll: stealth",
        "A stray ] bracket.",
    ],
)
def test_broken_calls_cannot_be_generated(runtime, grammar, text):
    assert not grammar_accepts(runtime, grammar, text)


@pytest.mark.parametrize(
    "text",
    [
        "Plain narration, no call at all.",
        "Make a Dexterity saving throw.\n[roll: dexterity save, dc=14]",
        "The blade bites.\n[damage: 2d6+1d4+3, target=ogre, type=slashing]",
        "[initiative]",
        "Rest.\n[heal: 10, target=Mira]\n[condition: poisoned, remove, target=Mira]",
        "[roll: 4d6kh3]",
    ],
)
def test_valid_replies_pass_in_any_keyword_order(runtime, grammar, text):
    assert grammar_accepts(runtime, grammar, text)


def test_the_lazy_form_starts_at_a_bracket(runtime):
    lazy = registry_grammar(load_registry(), lazy=True)
    assert lazy.splitlines()[2] == "root ::= call text (call text)*"
    assert grammar_accepts(runtime, lazy, "[roll: stealth] and then some text")
    assert not grammar_accepts(runtime, lazy, "[roll: stelth]")


def test_constrained_generation_writes_only_valid_calls(runtime, grammar):
    """The untrained base, made to open a bracket, can only complete it as a registered, valid call."""
    from dmforge.evaluation.metrics import reply_brackets

    forced = grammar.replace("root ::= text (call text)*", "root ::= call")
    assert forced != grammar
    messages = [
        {"role": "system", "content": "You are the Dungeon Master."},
        {"role": "user", "content": "Ana: I sneak past the guard."},
    ]
    reply = runtime.reply(messages, DecodeConfig(n_predict=96), forced)
    _, brackets, valid, problems = reply_brackets(reply.text, load_registry())
    assert reply.stop == "end" and brackets == valid == 1, (reply.text, problems)


@pytest.mark.parametrize("lazy", [False, True], ids=["full", "lazy"])
def test_max_calls_ends_a_repeated_call_line_in_llama_cpp(runtime, lazy):
    """`decode.max_calls` is what a short penalty window relies on against a call line the model repeats."""
    from dmforge.tools.grammar import decode_grammar

    decode = DecodeConfig(max_calls=2, grammar="lazy" if lazy else "full")
    bounded = decode_grammar(load_registry(), decode)
    two = "[roll: stealth]\n[roll: perception] You look around."
    assert grammar_accepts(runtime, bounded, two)
    assert not grammar_accepts(runtime, bounded, two.replace("\n", "\n[roll: stealth]\n", 1))
    if not lazy:
        assert grammar_accepts(runtime, bounded, "No call at all.")
    unbounded = decode_grammar(load_registry(), decode.model_copy(update={"max_calls": None}))
    assert grammar_accepts(runtime, unbounded, "\n".join(["[roll: stealth]"] * 6))
