"""Evaluation metrics on hand-made predictions: each verdict is what a person would say."""

from __future__ import annotations

import pytest

from dmforge.evaluation.metrics import aggregate, continuation_consistent, score_turn

GOLD = "The goblin lunges. Make a Dexterity saving throw.\n[roll: dexterity save, dc=12]"


@pytest.fixture
def score(registry):
    return lambda predicted, gold=GOLD, **kw: score_turn(predicted, gold, registry, **kw)


def test_perfect_prediction(score):
    v = score("It lunges at you! Dexterity save, quickly. [roll: dexterity save, dc=12]")
    assert v.decision_correct and v.exact_match and v.brackets == v.valid_brackets == 1 and not v.problems


def test_keyword_and_flag_order_do_not_matter(score):
    gold = "Sneak past. [roll: stealth, advantage, dc=14]"
    assert score("[roll: Stealth, advantage,  dc = 14]", gold).exact_match
    assert score("[condition: prone, remove, target=Ogre]", "[condition: prone, remove, target=ogre]").exact_match
    assert not score("[roll: stealth, dc=15, advantage]", gold).exact_match  # malformed: flag after keyword


def test_wrong_tool(score):
    v = score("Roll to hit! [attack: dagger, target=goblin]")
    assert v.decision_correct and not v.exact_match and v.valid_brackets == 1


def test_wrong_arguments(score):
    v = score("[roll: dexterity save, dc=15]")
    assert v.decision_correct and not v.exact_match and v.valid_brackets == 1
    bad = score("[roll: dexterity sav]")
    assert bad.valid_brackets == 0 and bad.brackets == 1 and any("Did you mean" in p for p in bad.problems)


def test_malformed_bracket(score):
    v = score("Roll it [roll: dc=12, dexterity save]")
    assert v.brackets == 1 and v.valid_brackets == 0 and v.predicted_calls == [] and not v.decision_correct
    unknown = score("[cast: fireball]")
    assert unknown.valid_brackets == 0 and "unknown tool 'cast'" in unknown.problems


def test_spurious_call(score):
    v = score("[initiative]", gold="The tavern is warm and loud. What do you do?")
    assert not v.decision_correct and not v.exact_match


def test_missing_call(score):
    v = score("The goblin lunges but you dodge easily.")
    assert not v.decision_correct and not v.exact_match and v.brackets == 0


def test_quiet_on_quiet_is_a_correct_decision(score):
    v = score("Rain drums on the roof.", gold="The inn is quiet tonight.")
    assert v.decision_correct and v.exact_match


def test_continuation_rule():
    assert continuation_consistent("[roll: stealth, dc=12] => 15, success", "Fifteen is enough; you slip by.")
    assert continuation_consistent("[roll: stealth, dc=12] => 15, success", "You succeed and slip past.")
    assert not continuation_consistent("[roll: stealth, dc=12] => 8, failure", "You succeed and slip past unseen.")
    assert not continuation_consistent("[attack: axe, target=orc] => 17, hit", "Your axe misses the orc.")
    assert not continuation_consistent("[damage: 1d8] => 7", "The orc staggers back.")
    assert continuation_consistent("[damage: 1d8] => 7", "Seven damage: the orc staggers back.")


def test_in_character_and_mentions(score):
    v = score("As an AI, I cannot roll dice.", gold="Thorin, roll it.", party=["Thorin Ironfist"], location="Moria")
    assert not v.in_character and v.mentions_expected == 1 and v.mentions_found == 0
    w = score("Thorin, the dice are yours.", gold="Thorin, roll it.", party=["Thorin Ironfist"])
    assert w.in_character and w.mentions_found == 1


def test_aggregate(score):
    verdicts = [
        score("[roll: dexterity save, dc=12]"),  # perfect
        score("Nothing happens."),  # missing
        score("[initiative]", gold="Quiet."),  # spurious
        score("Quiet night.", gold="Quiet."),  # quiet on quiet
        score("[roll: dexterity sav]"),  # invalid
    ]
    m = aggregate(verdicts)
    assert m["turns"] == 5
    assert m["call_decision_accuracy"] == pytest.approx(3 / 5)
    assert m["call_precision"] == pytest.approx(2 / 3) and m["call_recall"] == pytest.approx(2 / 3)
    assert m["call_f1"] == pytest.approx(2 / 3)
    assert m["exact_call_match"] == pytest.approx(1 / 4)
    assert m["call_validity"] == pytest.approx(2 / 3)
    assert m["per_tool"]["roll"]["support"] == 3 and m["per_tool"]["initiative"]["f1"] == 0.0
    assert m["in_character_rate"] == 1.0


def test_a_model_that_never_calls_scores_zero_call_f1_however_many_quiet_turns_it_gets_right(score):
    quiet = [score("The road is empty.", gold="The road is empty.") for _ in range(6)]
    missed = [score("You see the goblins.") for _ in range(2)]  # gold: [roll: dexterity save, dc=12]
    m = aggregate(quiet + missed)
    assert m["call_decision_accuracy"] == pytest.approx(6 / 8)
    assert m["call_f1"] == 0.0 and m["call_precision"] is None
    assert aggregate(quiet)["call_f1"] is None, "nothing to call and nothing called: not measured"


def test_where_both_call_separates_the_wrong_tool_from_the_wrong_argument(score):
    verdicts = [
        score("[roll: perception]", gold="[roll: perception]"),  # right tool, right skill
        score("[roll: insight]", gold="[roll: perception]"),  # right tool, wrong skill
        score("[roll: insight]", gold="[roll: persuasion]"),  # right tool, wrong skill
        score("[attack: dagger, target=orc]", gold="[roll: stealth]"),  # wrong tool
        score("[roll: 1d6]", gold="[roll: 2d6]"),  # dice either way: the same subject, not the same intent
        score("[roll: perception]", gold="Quiet."),  # only the model calls: not counted
        score("Quiet.", gold="[roll: perception]"),  # only the gold calls: not counted
    ]
    m = aggregate(verdicts)
    assert m["both_call_turns"] == 5
    assert m["tool_accuracy"] == pytest.approx(4 / 5)
    assert m["argument_accuracy"] == pytest.approx(1 / 5)
    assert m["both_roll_turns"] == 4 and m["roll_subject_accuracy"] == pytest.approx(2 / 4)
    assert m["roll_confusion"] == {
        "perception": {"perception": 1, "insight": 1},
        "persuasion": {"insight": 1},
        "dice": {"dice": 1},
    }


def test_call_decision_per_category(score):
    verdicts = [
        score("[initiative]", gold="[initiative]"),
        score("Quiet.", gold="[initiative]"),
        score("Quiet.", gold="Quiet."),
    ]
    m = aggregate(verdicts, ["combat", "combat", "social"])
    assert m["decision_per_category"]["combat"] == {
        "turns": 2,
        "call_decision_accuracy": 0.5,
        "gold_call_share": 1.0,
        "predicted_call_share": 0.5,
        "missed_calls": 1,
        "extra_calls": 0,
    }
    assert m["decision_per_category"]["social"]["call_decision_accuracy"] == 1.0
    assert aggregate(verdicts)["decision_per_category"] == {}


def test_call_decision_after_a_player_and_after_a_result_are_told_apart(score):
    hit = "[attack: longsword, target=goblin] => 17, hit"
    verdicts = [
        score("[roll: perception]", gold="You see nothing."),  # a roll the action did not need
        score("[roll: stealth]", gold="[roll: stealth]"),
        score("Seventeen hits.", gold="[damage: 1d8+3, target=goblin]", tool_results=hit),  # the chain missed
        score("[damage: 1d8+3, target=goblin]", gold="[damage: 1d8+3, target=goblin]", tool_results=hit),
        score("It misses.", gold="It misses.", tool_results="[attack: dagger, target=Ana] => 8, miss"),
    ]
    moments = aggregate(verdicts)["decision_by_moment"]
    assert moments["after a player's line"] == {
        "turns": 2,
        "call_decision_accuracy": 0.5,
        "gold_call_share": 0.5,
        "predicted_call_share": 1.0,
        "missed_calls": 0,
        "extra_calls": 1,
    }
    after = moments["after a tool result"]
    assert after["turns"] == 3 and after["missed_calls"] == 1 and after["extra_calls"] == 0
    assert after["call_decision_accuracy"] == pytest.approx(2 / 3)
    assert list(aggregate(verdicts[:2])["decision_by_moment"]) == ["after a player's line"], "no result: no row"
