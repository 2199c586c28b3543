"""Screening a quantized file on the calls its replies open with, before scoring it on whole replies.

A model trained with its calls first decides every call in the lines its reply opens with, so a
file that already loses F16's call decision, intent or validity there can be rejected at a fifth of a
column's cost. The screen must measure what the whole column would (the cut is checked on F16's own
replies), and what ships must still pass the rule on whole replies.
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


def _choose(tmp_path: Path, f16_predictions: list[str], results: dict[str, dict], **eval_options):
    """The ship decision with `results` standing in for scored columns; which columns it asked for."""
    asked: list[str] = []

    def run(column, perplexity=True):
        asked.append(column.name)
        return {"metrics": results[column.name]}

    export = _export(tmp_path, {"Q4_0": 0.05, "Q4_K_M": 0.05, "Q8_0": 0.01})
    config = load_config(None, {"eval": eval_options})
    files = {q: Path(f) for q, f in export.files.items()}
    f16 = {"metrics": _metrics(0.5, 0.8), **_column(f16_predictions)}
    ship = _choose_and_score_quants(run, files, f16, config.decode, None, config, export, TURNS, load_registry())
    return ship, asked


CALLS_FIRST = ["[attack: spear, target=Jem]\nHe lunges.", "He misses.", "The door creaks."]


def test_a_file_that_fails_its_screen_is_never_scored_whole_and_what_ships_passed_on_whole_replies(tmp_path):
    # F16's replies cut to their openings: decision 2/3, intent 1/2 (of the turns where either side calls).
    results = {
        "Q4_0 calls": _metrics(0.0, 0.33),  # loses the calls already in its openings
        "Q4_K_M calls": _metrics(0.5, 2 / 3),  # keeps them there...
        "Q4_K_M": _metrics(0.4, 0.8),  # ...but not on whole replies
        "Q8_0 calls": _metrics(0.5, 2 / 3),
        "Q8_0": _metrics(0.5, 0.8),
    }
    ship, asked = _choose(tmp_path, CALLS_FIRST, results)
    assert asked == ["Q4_0 calls", "Q4_K_M calls", "Q4_K_M", "Q8_0 calls", "Q8_0"]
    assert ship.quant == "Q8_0"
    rows = {row["quant"]: row for row in ship.candidates}
    assert rows["Q4_0"]["screened"] and not rows["Q4_0"]["evaluated"] and rows["Q4_0"]["shortfalls"]
    assert rows["Q4_K_M"]["evaluated"] and rows["Q4_K_M"]["shortfalls"] and not rows["Q8_0"]["shortfalls"]


def test_without_a_faithful_cut_or_with_screens_off_every_candidate_is_scored_whole(tmp_path):
    results = {"Q4_0": _metrics(0.5, 0.8)}
    late = ["He lunges.\n[attack: spear, target=Jem]", "He misses.", "The door creaks."]
    assert _choose(tmp_path, late, results)[1] == ["Q4_0"]
    assert _choose(tmp_path, CALLS_FIRST, results, screen_quants=False)[1] == ["Q4_0"]


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
