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


@pytest.fixture(scope="module")
def exported_run(smollm2_base, tmp_path_factory):
    from dmforge.export.run import export_run

    run = model_run(smollm2_base.path, tmp_path_factory.mktemp("eval") / "run")
    assert export_run(run, []).passed
    return run


def test_eval_scores_every_column_through_llama_cpp_and_chooses_the_file_to_ship(exported_run, tmp_path: Path):
    scenarios = tmp_path / "held-out"
    for name in ("combat/ghoul-crypt-ambush.md", "social/the-fine-print.md"):
        (scenarios / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(CORPUS / name, scenarios / name)
    command = [sys.executable, "-m", "dmforge", "eval", str(exported_run), "--scenarios", str(scenarios)]
    result = subprocess.run(
        [*command, "--max-turns", "4", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    ship = report["ship"]["quant"]
    columns = list(report["models"])
    assert columns[:2] == ["base", "F16"] and columns[-1] == f"{ship} greedy" and report["turns"] == 4
    for metrics in report["models"].values():
        for key in ("call_decision_accuracy", "intent_match", "exact_call_match", "call_validity", "loop_rate"):
            assert key in metrics, key
        assert metrics["turns"] == 4 and metrics["perplexity"] > 1
    # merged = base: the base's own GGUF and the F16 export are the same weights, so they score the same.
    assert report["models"]["base"]["perplexity"] == pytest.approx(report["models"]["F16"]["perplexity"], rel=1e-3)
    assert "full grammar" in report["decoding"]["F16"] and report["decoding"][f"{ship} greedy"] == "greedy"
    # The grammar makes every bracket a valid call; greedy alone does not promise that.
    assert report["models"]["F16"]["call_validity"] in (None, 1.0)

    # The rule: quantized files scored smallest first; the one that ships is within 0.02 of F16's intent match.
    candidates = {row["quant"]: row for row in report["ship"]["candidates"]}
    sizes = [row["bytes"] for row in report["ship"]["candidates"]]
    assert sizes == sorted(sizes) and set(candidates) >= {"F16", "Q8_0", "Q4_K_M", "Q4_0", "Q5_0"}
    assert candidates[ship]["evaluated"] and candidates[ship]["intent_delta_vs_f16"] >= -0.02 - 1e-9
    smaller = [q for q, row in candidates.items() if row["bytes"] < candidates[ship]["bytes"]]
    assert all(candidates[q]["evaluated"] for q in smaller), "every smaller file was scored and failed the rule"
    assert candidates["Q4_K_M"]["fallback_share"] > 0.5 and candidates["Q8_0"]["fallback_share"] == 0

    out = exported_run / "eval"
    for name in ("report.md", "report.html", "report.json", "metrics.png", "details.jsonl", "turns.jsonl"):
        assert (out / name).is_file(), name
    details = [json.loads(line) for line in (out / "details.jsonl").read_text().splitlines()]
    assert len(details) == 4 * len(columns) and {"gold", "prediction", "verdict", "stop"} <= set(details[0])
    assert "| intent match (right tool and roll) |" in (out / "report.md").read_text()
    assert f"Ships: **{ship}**" in (out / "report.md").read_text()

    # A second evaluation of the same turns reuses every column instead of generating again.
    again = subprocess.run([*command, "--max-turns", "4", "--json"], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert set(json.loads(again.stdout)["reused"]) == set(columns)
