"""Screens: the references (base, F16) scored on the calls each reply opens with, what ships on whole replies.

A model trained with its calls first decides every call in the lines its reply opens with, so F16's
screen, at about a third of a column's cost, measures what its whole column would. The cut must be
checked on whole replies (those of the file being compared), a file is compared with F16 cut alike,
and what ships is always scored on whole replies.
"""

from __future__ import annotations

from pathlib import Path

from dmforge.config import DecodeConfig, load_config
from dmforge.contract.chat import detect_chat_format
from dmforge.evaluation.batch import batch_replies
from dmforge.evaluation.columns import opening_metrics
from dmforge.evaluation.metrics import opening_calls, opening_complete
from dmforge.evaluation.run import _choose_and_score_quants
from dmforge.evaluation.runtime import Runtime
from dmforge.evaluation.turns import EvalTurn, by_conversation, eval_turns
from dmforge.registry.runs import ExportReport
from dmforge.tools.registry import load_registry


def test_a_reply_opens_with_the_lines_that_start_with_a_bracket():
    assert opening_calls("[initiative]\n[attack: spear, target=Jem]\nThe deserters act first.") == (
        "[initiative]\n[attack: spear, target=Jem]"
    )
    assert opening_calls("  [roll: stealth]  \nYou slip past.") == "[roll: stealth]"
    assert opening_calls("Sixteen hits.\n[damage: 1d8+3]") == ""
    assert not opening_complete("[roll: perc") and not opening_complete("[roll: perception]\n")
    assert opening_complete("[roll: perception]\nThe") and opening_complete("Six")


TURNS = [
    EvalTurn("a", 2, [], "[attack: spear, target=Jem]\nHe lunges.", None, ["Jem"], "bridge"),
    EvalTurn("a", 4, [], "[damage: 1d8+1, target=Jem]\nIt bites.", "[attack: spear] => 17, hit", ["Jem"], "bridge"),
    EvalTurn("b", 2, [], "The door is open.", None, ["Ana"], "crypt"),
]


def _column(predictions: list[str]) -> dict:
    from dmforge.evaluation.columns import _verdict

    registry = load_registry()
    details = [
        {
            "conversation": t.conversation,
            "turn": t.index,
            "prediction": p,
            "verdict": _verdict(t, p, registry, False).to_json(),
        }
        for t, p in zip(TURNS, predictions, strict=True)
    ]
    return {"details": details}


def test_the_cut_is_faithful_only_when_no_reply_calls_after_its_narration_begins():
    registry = load_registry()
    calls_first = _column(["[attack: spear, target=Jem]\nHe lunges.", "He misses.", "The door creaks."])
    metrics, faithful = opening_metrics(calls_first, TURNS, registry)
    assert faithful
    assert metrics["turns"] == 3 and abs(metrics["call_decision_accuracy"] - 2 / 3) < 1e-9
    late = _column(["He lunges.\n[attack: spear, target=Jem]", "He misses.", "The door creaks."])
    assert not opening_metrics(late, TURNS, registry)[1]


def _metrics(intent: float, decision: float, validity: float = 1.0) -> dict:
    return {"intent_match": intent, "call_decision_accuracy": decision, "call_validity": validity}


def _export(tmp_path: Path, kls: dict[str, float]) -> ExportReport:
    files = {}
    for size, quant in enumerate(["Q4_0", "Q4_K_M", "Q8_0", "F16"], start=1):
        files[quant] = tmp_path / f"model-{quant}.gguf"
        files[quant].write_bytes(b"x" * size * 1000)
    rows = [{"quant": q, "kl_vs_f16": kl, "fallback_share": 0.0} for q, kl in kls.items()]
    return ExportReport(
        passed=True,
        files={q: str(f) for q, f in files.items()},
        checks=[],
        quantizations=rows,
        chat_format={},
        requested=list(files),
        max_size_gb=2.0,
    )


def _choose(tmp_path: Path, results: dict[str, dict], f16: dict, **eval_options):
    """The ship decision with `results` standing in for scored columns; which columns it asked for."""
    asked: list[str] = []

    def run(column, perplexity=True):
        assert not column.opening_only  # candidates, and F16 when it must be, are scored on whole replies
        asked.append(column.name)
        return results[column.name]

    export = _export(tmp_path, {"Q4_0": 0.05, "Q4_K_M": 0.05, "Q8_0": 0.01})
    config = load_config(None, {"eval": eval_options})
    files = {q: Path(f) for q, f in export.files.items()}
    ship = _choose_and_score_quants(run, files, f16, config.decode, None, config, export, TURNS, load_registry())
    return ship, asked


CALLS_FIRST = ["[attack: spear, target=Jem]\nHe lunges.", "He misses.", "The door creaks."]
LATE = ["He lunges.\n[attack: spear, target=Jem]", "He misses.", "The door creaks."]
SILENT = ["He lunges.", "He misses.", "The door creaks."]


def _whole(predictions: list[str], intent: float, decision: float) -> dict:
    """A whole column: its own figures, and replies that `opening_metrics` cuts."""
    return {"metrics": _metrics(intent, decision), **_column(predictions)}


# F16 screened: on the calls its replies open with, decision 2/3 and intent 1/2.
F16_SCREEN = {
    "metrics": opening_metrics(_column(CALLS_FIRST), TURNS, load_registry())[0],
    "key": {"opening_only": True},
}


def test_with_f16_screened_a_file_is_scored_whole_and_compared_with_it_on_the_calls_its_replies_open_with(tmp_path):
    results = {
        "Q4_0": _whole(SILENT, 0.5, 0.9),  # whole-reply figures look fine, but it lost the opening call
        "Q4_K_M": _whole(CALLS_FIRST, 0.1, 0.1),  # its openings are F16's: the comparison is on those
    }
    ship, asked = _choose(tmp_path, results, F16_SCREEN)
    assert asked == ["Q4_0", "Q4_K_M"] and ship.quant == "Q4_K_M"  # F16 never scored whole
    rows = {row["quant"]: row for row in ship.candidates}
    assert rows["Q4_0"]["shortfalls"] and rows["Q4_0"]["screened"] and rows["Q4_0"]["evaluated"]
    assert not rows["Q4_K_M"]["shortfalls"] and rows["Q4_K_M"]["intent_delta_vs_f16"] == 0
    assert rows["Q4_K_M"]["intent_match"] == 0.1  # the table shows the file's own whole-reply figures
    assert not rows["Q8_0"]["evaluated"]


def test_a_file_that_calls_after_its_narration_makes_f16_scored_whole_and_the_rule_compare_whole_replies(tmp_path):
    results = {
        "Q4_0": _whole(LATE, 0.5, 0.8),
        "F16": _whole(LATE, 0.5, 0.8),
    }
    ship, asked = _choose(tmp_path, results, F16_SCREEN)
    assert asked == ["Q4_0", "F16"] and ship.quant == "Q4_0"
    assert not ship.candidates[0]["screened"] and not ship.candidates[0]["shortfalls"]


def test_when_nothing_smaller_keeps_f16s_behaviour_f16_ships_and_is_scored_whole(tmp_path):
    results = {q: _whole(SILENT, 0.0, 0.3) for q in ("Q4_0", "Q4_K_M", "Q8_0")}
    results["F16"] = _whole(CALLS_FIRST, 0.5, 0.8)
    ship, asked = _choose(tmp_path, results, F16_SCREEN)
    assert ship.quant == "F16" and asked == ["Q4_0", "Q4_K_M", "Q8_0", "F16"]
    assert ship.candidates[-1]["evaluated"] and ship.candidates[-1]["intent_match"] == 0.5


def test_with_screens_off_f16_was_scored_whole_and_the_rule_compares_whole_replies(tmp_path):
    f16 = {"metrics": _metrics(0.5, 0.8), "key": {"opening_only": False}}
    results = {"Q4_0": _whole(SILENT, 0.4, 0.8), "Q4_K_M": _whole(SILENT, 0.5, 0.8)}
    ship, asked = _choose(tmp_path, results, f16)
    assert asked == ["Q4_0", "Q4_K_M"] and ship.quant == "Q4_K_M"
    assert not any(row["screened"] for row in ship.candidates)


def test_screens_is_the_option_that_replaced_screen_quants():
    assert load_config(None, {"eval": {"screens": False}}).eval.screens is False
    from dmforge.config import _migrate

    assert _migrate({"eval": {"screen_quants": False}}) == {"eval": {"screens": False}}


def test_a_screen_stops_at_the_first_line_of_narration_and_is_the_start_of_the_whole_reply(
    smollm2_gguf, smollm2_tokenizer, corpus_conversations
):
    runtime = Runtime(smollm2_gguf, 1024)
    fmt = detect_chat_format(smollm2_tokenizer)
    decode = DecodeConfig(n_predict=48, temperature=0.0, penalty_repeat=1.0)
    turns = eval_turns(corpus_conversations[:2], fmt, smollm2_tokenizer, 1024, decode.n_predict)
    prompts = [[t.prompt for t in group][:3] for group in by_conversation(turns)]
    whole = batch_replies(runtime, prompts, decode, parallel=1)
    opening = batch_replies(runtime, prompts, decode, parallel=1, opening_only=True)
    pairs = [(w, o) for ws, os in zip(whole, opening, strict=True) for w, o in zip(ws, os, strict=True)]
    assert pairs and any(o.stop == "opening" for _, o in pairs)
    for w, o in pairs:
        assert o.tokens <= w.tokens
        assert opening_calls(o.text) == opening_calls(w.text)
        if o.stop == "opening":
            assert o.tokens < w.tokens or w.stop != "end"
