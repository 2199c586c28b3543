"""`dmforge eval` end to end on real models: every column through llama.cpp, the shipped file chosen by rule.

The run is built around the base model itself (merged = base) so that this test needs no training;
the pipeline's own run is evaluated by the end-to-end test of ./train.sh.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CORPUS, ROOT, model_run

pytestmark = pytest.mark.slow


HELD_OUT = ("combat/ghoul-crypt-ambush.md", "social/the-fine-print.md")


@pytest.fixture(scope="module")
def exported_run(smollm2_base, tmp_path_factory):
    """The base as a run, exported, with two corpus scenarios as its validation split."""
    from dmforge.config import DataConfig
    from dmforge.dataset import to_conversation
    from dmforge.export.run import export_run
    from dmforge.scenarios import check_paths

    run = model_run(smollm2_base.path, tmp_path_factory.mktemp("eval") / "run")
    held_out = check_paths([CORPUS / name for name in HELD_OUT]).scenarios
    (run / "dataset").mkdir()
    lines = [json.dumps(to_conversation(s, DataConfig())) + "\n" for s in held_out]
    (run / "dataset" / "validation.jsonl").write_text("".join(lines))
    assert export_run(run, []).passed
    return run


def _eval(*args: str) -> dict:
    command = [sys.executable, "-m", "dmforge", "eval", *args, "--json"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_eval_scores_every_column_through_llama_cpp_and_chooses_the_file_to_ship(exported_run, tmp_path: Path):
    report = _eval(str(exported_run), "--max-turns", "4", "--diagnostics")
    ship = report["ship"]["quant"]
    columns = list(report["models"])
    assert columns[:2] == ["base", "F16"] and columns[-1] == f"{ship} greedy" and report["turns"] == 4
    assert report["source"] == "the validation split"
    for metrics in report["models"].values():
        for key in ("call_decision_accuracy", "intent_match", "exact_call_match", "call_validity", "loop_rate"):
            assert key in metrics, key
        assert metrics["turns"] == 4 and metrics["perplexity"] > 1
    # merged = base: the base's own GGUF and the F16 export are the same weights, so they score the same.
    assert report["models"]["base"]["perplexity"] == pytest.approx(report["models"]["F16"]["perplexity"], rel=1e-3)
    assert "full grammar" in report["decoding"]["F16"] and report["decoding"][f"{ship} greedy"] == "greedy"
    # The grammar makes every bracket a valid call; greedy alone does not promise that.
    assert report["models"]["F16"]["call_validity"] in (None, 1.0)

    # The rule: the smallest file that keeps F16's intent, decision and validity within 0.02, and its KL within 0.1.
    candidates = {row["quant"]: row for row in report["ship"]["candidates"]}
    sizes = [row["bytes"] for row in report["ship"]["candidates"]]
    assert sizes == sorted(sizes) and set(candidates) >= {"F16", "Q8_0", "Q4_K_M", "Q4_0", "Q5_0"}
    assert all(row["evaluated"] for row in candidates.values()), "--diagnostics scores every file"
    assert not candidates[ship]["shortfalls"] and candidates[ship]["intent_delta_vs_f16"] >= -0.02 - 1e-9
    for q in [q for q, row in candidates.items() if row["bytes"] < candidates[ship]["bytes"]]:
        assert candidates[q]["shortfalls"], f"{q} is smaller than {ship} and kept F16's behaviour"
    assert candidates["Q4_K_M"]["fallback_share"] > 0.5 and candidates["Q8_0"]["fallback_share"] == 0

    out = exported_run / "eval"
    for name in ("report.md", "report.html", "report.json", "metrics.png", "details.jsonl", "turns.jsonl"):
        assert (out / name).is_file(), name
    details = [json.loads(line) for line in (out / "details.jsonl").read_text().splitlines()]
    assert len(details) == 4 * len(columns) and {"gold", "prediction", "verdict", "stop"} <= set(details[0])
    assert "| intent match (right tool and roll) |" in (out / "report.md").read_text()
    assert f"Ships: **{ship}**" in (out / "report.md").read_text()

    # A second evaluation of the same turns reuses every column instead of generating again.
    again = _eval(str(exported_run), "--max-turns", "4", "--diagnostics")
    assert set(again["reused"]) == set(columns)

    # Without --diagnostics: the base, F16 and the files the ship rule needs, no greedy or grammar-free column.
    plain = _eval(str(exported_run), "--max-turns", "4")
    assert plain["ship"]["quant"] == ship and not any(" greedy" in c or "no grammar" in c for c in plain["models"])
    # ...the base screened on the calls each reply opens with, and what ships scored on whole replies.
    assert "opens with" in plain["decoding"]["base"] and "opens with" not in plain["decoding"][ship]

    # Other scenarios get their own folder; the run's validation report and its ship decision stay as they were.
    before = (out / "report.json").read_bytes()
    scenarios = tmp_path / "held-out"
    (scenarios / "combat").mkdir(parents=True)
    shutil.copy(CORPUS / "combat" / "bone-ferry-death-save.md", scenarios / "combat")
    other = _eval(str(exported_run), "--scenarios", str(scenarios), "--max-turns", "2")
    assert (out / "report.json").read_bytes() == before
    assert other["ship"]["quant"] == ship and other["source"] == str(scenarios) and other["turns"] == 2
    assert set(other["models"]) == {"base", "F16", ship}
    assert (exported_run / "eval-held-out" / "report.json").is_file()
    assert (exported_run / "eval-held-out" / "report.html").is_file()
