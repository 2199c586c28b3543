"""The loss weights land on the tokens they name: narration 1, calls, arguments, and each turn's opening."""

from __future__ import annotations

import torch

from dmforge.config import TrainConfig
from dmforge.contract.chat import conversation_samples, detect_chat_format
from dmforge.training.validation import _tally_openings
from dmforge.training.weights import TokenWeights, intent_balance, token_weights

# A fight in three DM turns: a call after a player, a call after a hit, narration after the damage.
MESSAGES = [
    ("system", "S"),
    ("user", "Ana: I swing my axe at the goblin."),
    ("assistant", "[attack: handaxe, target=goblin]\nYou lunge across the mud."),
    ("tool", "[attack: handaxe, target=goblin] => 15, hit"),
    ("assistant", "[damage: 1d6+3, type=slashing, target=goblin]\nFifteen hits."),
    ("tool", "[damage: 1d6+3, type=slashing, target=goblin] => 7"),
    ("assistant", "The goblin drops into the ditch."),
]
CONVERSATION = {"id": "x", "messages": [{"role": role, "content": text} for role, text in MESSAGES]}


def _sample(tok):
    (sample,) = conversation_samples(tok, detect_chat_format(tok), CONVERSATION, 512)
    return sample


def _row(sample) -> torch.Tensor:
    return torch.tensor([1.0 if label != -100 else 0.0 for label in sample.labels])


def test_each_turn_knows_whether_a_player_or_a_tool_result_spoke_last(smollm2_tokenizer):
    sample = _sample(smollm2_tokenizer)
    assert sample.after_tool == [False, True, True]
    assert len(sample.after_tool) == len(sample.dm_spans)


def test_weights_fall_on_the_call_the_argument_and_the_opening(smollm2_tokenizer):
    tok = smollm2_tokenizer
    sample = _sample(tok)
    row = _row(sample)
    TokenWeights(call=3.0, argument=10.0, decision=20.0).fill(row, sample)
    attack, damage = sample.calls
    openings = [first for first, _ in sample.dm_spans]
    # The first two turns open with their call, the third (quiet) with narration: all three weigh 20.
    assert openings[:2] == [attack.start, damage.start]
    assert [float(row[t]) for t in openings] == [20.0, 20.0, 20.0]
    assert tok.decode(sample.input_ids[attack.argument.start : attack.argument.stop]).strip() == "handaxe"
    assert all(float(row[t]) == 10.0 for t in attack.argument)
    rest_of_call = [t for t in range(attack.start + 1, attack.end) if t not in attack.argument]
    assert rest_of_call and all(float(row[t]) == 3.0 for t in rest_of_call)
    _, quiet_end = sample.quiet_turns[0]
    assert float(row[quiet_end]) == 3.0
    narration = [t for t in range(*sample.dm_spans[2]) if t not in (openings[2], quiet_end)]
    assert narration and all(float(row[t]) == 1.0 for t in narration)
    assert float(row[0]) == 0.0  # the system prompt is never trained


def test_an_unset_decision_weight_is_the_call_weight(smollm2_tokenizer):
    sample = _sample(smollm2_tokenizer)
    config = TrainConfig(call_loss_weight=4.0, argument_loss_weight=4.0)
    row = _row(sample)
    token_weights(config, [sample]).fill(row, sample)
    assert {float(row[first]) for first, _ in sample.dm_spans} == {4.0}
    row = _row(sample)
    token_weights(config.model_copy(update={"decision_loss_weight": 12.0}), [sample]).fill(row, sample)
    assert {float(row[first]) for first, _ in sample.dm_spans} == {12.0}


def test_the_quiet_opening_weight_lands_only_on_turns_that_answer_a_player_without_a_call(smollm2_tokenizer):
    tok = smollm2_tokenizer
    messages = [
        ("system", "S"),
        ("user", "Ana: I open the door and look around."),
        ("assistant", "The door swings open on an empty larder."),
        *MESSAGES[1:],
    ]
    conversation = {"id": "y", "messages": [{"role": role, "content": text} for role, text in messages]}
    (sample,) = conversation_samples(tok, detect_chat_format(tok), conversation, 512)
    assert sample.after_tool == [False, False, True, True]
    row = _row(sample)
    TokenWeights(call=3.0, argument=10.0, decision=5.0, quiet_opening=12.0).fill(row, sample)
    openings = [float(row[first]) for first, _ in sample.dm_spans]
    # Quiet after a player: 12. The attack's and the damage's openings: the decision weight. Quiet after the
    # damage result: the decision weight too, because after a result the model under-calls.
    assert openings == [12.0, 5.0, 5.0, 5.0]
    row = _row(sample)
    token_weights(TrainConfig(quiet_opening_loss_weight=12.0), [sample]).fill(row, sample)
    assert [float(row[first]) for first, _ in sample.dm_spans] == [12.0, 3.0, 3.0, 3.0]


def test_balanced_argument_weights_keep_their_mean_and_favour_rare_intents(smollm2_tokenizer):
    sample = _sample(smollm2_tokenizer)
    frequent = _sample(smollm2_tokenizer)
    frequent.calls = [frequent.calls[0]] * 4  # `attack: handaxe` four times, `damage: 1d6+3` once
    balance = intent_balance([sample, frequent])
    counts = {"attack: handaxe": 5, "damage: 1d6+3": 1}
    assert set(balance) == set(counts)
    assert balance["damage: 1d6+3"] > balance["attack: handaxe"]
    mean = sum(balance[i] * n for i, n in counts.items()) / sum(counts.values())
    assert abs(mean - 1.0) < 1e-9


def test_openings_are_scored_apart_after_a_player_and_after_a_tool_result(smollm2_tokenizer):
    tok = smollm2_tokenizer
    sample = _sample(tok)
    ids = torch.tensor(sample.input_ids)
    bracket = frozenset({int(ids[sample.calls[0].start])})
    # A model that opens every turn with the gold's first token, except that it narrates after the hit.
    predicted = ids.clone()
    hit_turn = sample.dm_spans[1][0]
    predicted[hit_turn] = ids[sample.dm_spans[2][0]]
    openings = {False: [0, 0], True: [0, 0]}
    _tally_openings(sample, predicted == ids, predicted, bracket, openings)
    assert openings == {False: [1, 1], True: [1, 2]}
    # Opening the quiet turn with a bracket is wrong there too.
    predicted = ids.clone()
    predicted[sample.dm_spans[2][0]] = next(iter(bracket))
    openings = {False: [0, 0], True: [0, 0]}
    _tally_openings(sample, predicted == ids, predicted, bracket, openings)
    assert openings == {False: [1, 1], True: [1, 2]}
