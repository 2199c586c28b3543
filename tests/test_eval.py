"""`dmforge eval` end to end on real models: base, "fine-tuned" and GGUF columns, reports and playtest.

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

from conftest import CORPUS, ROOT, SMOLLM2_CHAT_FORMAT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported_run(smollm2_base, tmp_path_factory):
    from dmforge.export.run import export_run

    run = tmp_path_factory.mktemp("eval") / "run"
    shutil.copytree(smollm2_base.path, run / "merged")
    (run / "manifest.json").write_text(
        json.dumps(
            {
                "base": {"spec": "smollm2-135m", "path": str(smollm2_base.path)},
                "chat_format": SMOLLM2_CHAT_FORMAT,
                "max_seq_len": 1024,
            }
        )
    )
    assert export_run(run, ["Q8_0"]).passed
    return run


def test_eval_writes_three_columns_reports_and_a_playtest(exported_run, tmp_path: Path):
    scenarios = tmp_path / "held-out"
    for name in ("combat/ghoul-crypt-ambush.md", "social/the-fine-print.md"):
        (scenarios / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(CORPUS / name, scenarios / name)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dmforge",
            "eval",
            str(exported_run),
            "--scenarios",
            str(scenarios),
            "--max-turns",
            "3",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["models"]) == {"base", "fine-tuned", "gguf"} and report["turns"] == 3
    for metrics in report["models"].values():
        for key in (
            "call_decision_accuracy",
            "exact_call_match",
            "call_validity",
            "in_character_rate",
            "perplexity",
            "turns",
        ):
            assert key in metrics
        assert metrics["turns"] == 3 and metrics["perplexity"] > 1
    # merged = base here, so transformers columns agree exactly, and the Q8_0 GGUF closely
    assert report["models"]["base"]["perplexity"] == pytest.approx(report["models"]["fine-tuned"]["perplexity"])
    assert report["models"]["gguf"]["perplexity"] == pytest.approx(report["models"]["base"]["perplexity"], rel=0.05)
    out = exported_run / "eval"
    for name in (
        "report.md",
        "report.html",
        "report.json",
        "metrics.png",
        "details.jsonl",
        "playtest.md",
        "playtest.json",
    ):
        assert (out / name).is_file(), name
    details = [json.loads(line) for line in (out / "details.jsonl").read_text().splitlines()]
    assert len(details) == 9 and {"prompt", "gold", "prediction", "verdict"} <= set(details[0])
    assert "| call decision accuracy |" in (out / "report.md").read_text()
    playtest = json.loads((out / "playtest.json").read_text())
    assert [e["role"] for e in playtest["transcript"]].count("player") == 5
