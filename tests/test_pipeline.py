"""The pipeline's bookkeeping without models: which run folder, which stages are done, how failures read.

The real nine-stage run, and its rerun that skips every finished stage, is in test_train_sh.py.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from rich.text import Text

from conftest import SMOLLM2_CHAT_FORMAT, VALID
from dmforge.config import DmforgeConfig
from dmforge.errors import DmforgeError
from dmforge.files import write_json
from dmforge.pipeline import (
    PipelineResult,
    _exported,
    _Progress,
    _stage_failures,
    _trained,
    pick_run_dir,
    summary,
)
from dmforge.registry.runs import EvalReport, ShipRecord
from dmforge.training.finetune import run_identity


def _config(tmp_path: Path, **train) -> DmforgeConfig:
    return DmforgeConfig(train={"runs_root": tmp_path / "runs", **train})


def _finished_run(run: Path, config: DmforgeConfig, corpus: str = "corpus-a") -> None:
    """The files finetune leaves behind, in the order it writes them."""
    (run / "merged").mkdir(parents=True)
    write_json(run / "identity.json", run_identity(config, corpus))
    (run / "config.yaml").write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    (run / "merged" / "config.json").write_text("{}")
    write_json(run / "manifest.json", {})
    write_json(run / "metrics.json", {"steps": 30})


def test_the_first_run_gets_runs_base_and_a_rerun_finds_it_again(tmp_path: Path):
    config = _config(tmp_path)
    first = pick_run_dir(config, "corpus-a")
    assert first == tmp_path / "runs" / "smollm2-135m"
    _finished_run(first, config)
    assert pick_run_dir(config, "corpus-a") == first


def test_changed_scenarios_or_training_options_start_a_new_folder_and_keep_the_old(tmp_path: Path):
    config = _config(tmp_path)
    first = pick_run_dir(config, "corpus-a")
    _finished_run(first, config)

    changed_corpus = pick_run_dir(config, "corpus-b")
    assert changed_corpus != first and changed_corpus.name.startswith("smollm2-135m-")
    changed_rank = pick_run_dir(_config(tmp_path, lora_r=8), "corpus-a")
    assert changed_rank != first
    # Options that never change the weights reuse the run.
    assert pick_run_dir(_config(tmp_path, threads=1, eval_every=5), "corpus-a") == first
    assert (
        pick_run_dir(DmforgeConfig(train={"runs_root": tmp_path / "runs"}, eval={"max_turns": 3}), "corpus-a") == first
    )


def test_a_run_folder_given_explicitly_is_always_used(tmp_path: Path):
    config = _config(tmp_path, run_dir=tmp_path / "mine")
    assert pick_run_dir(config, "anything") == tmp_path / "mine"


def test_training_counts_as_done_only_when_finished_with_the_same_options(tmp_path: Path):
    config = _config(tmp_path, max_steps=30)
    run = tmp_path / "run"
    _finished_run(run, config)
    assert _trained(run, config, "corpus-a")
    assert _trained(run, _config(tmp_path, max_steps=30, threads=2), "corpus-a"), "threads do not change the weights"
    assert not _trained(run, _config(tmp_path, max_steps=60), "corpus-a"), "more steps continue the run"

    # A restart that crashed: identity.json rewritten after the last metrics.json.
    later = (run / "metrics.json").stat().st_mtime + 5
    os.utime(run / "identity.json", (later, later))
    assert not _trained(run, config, "corpus-a")


def test_a_merged_model_missing_means_training_is_not_done(tmp_path: Path):
    config = _config(tmp_path)
    run = tmp_path / "run"
    _finished_run(run, config)
    (run / "merged" / "config.json").unlink()
    assert not _trained(run, config, "corpus-a")


def test_an_export_is_reused_only_when_it_passed_for_the_same_request_and_its_files_exist(tmp_path: Path):
    config = _config(tmp_path)
    run = tmp_path / "run"
    _finished_run(run, config)
    gguf = run / "gguf" / "dungeon-master-q4_k_m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    export = {
        "passed": True,
        "requested": [],
        "max_size_gb": 2.0,
        "files": {"Q4_K_M": str(gguf)},
        "sha256": {"Q4_K_M": "0" * 64},
        "checks": [],
        "chat_format": SMOLLM2_CHAT_FORMAT,
    }
    write_json(run / "gguf" / "export.json", export)
    assert _exported(run, config).files == export["files"]
    write_json(run / "gguf" / "export.json", export | {"sha256": {}})
    assert _exported(run, config) is None, "an export from before file hashes is exported again"
    write_json(run / "gguf" / "export.json", export)
    assert _exported(run, DmforgeConfig(train={"runs_root": tmp_path}, export={"quants": ["Q6_K"]})) is None
    write_json(run / "gguf" / "export.json", export | {"passed": False})
    assert _exported(run, config) is None
    write_json(run / "gguf" / "export.json", export)
    gguf.unlink()
    assert _exported(run, config) is None
    gguf.write_bytes(b"GGUF")
    later = (run / "gguf" / "export.json").stat().st_mtime + 5
    os.utime(run / "metrics.json", (later, later))  # retrained since: the GGUF is stale
    assert _exported(run, config) is None


def _progress() -> _Progress:
    progress = _Progress(Console(file=io.StringIO()))
    progress.announce("export", "")
    return progress


def test_an_unexpected_failure_names_the_stage_and_keeps_the_traceback_in_a_file(tmp_path: Path):
    with pytest.raises(DmforgeError) as caught, _stage_failures(_progress(), tmp_path / "logs"):
        raise KeyError("rope_theta")
    message = str(caught.value)
    assert "Stage `export` failed unexpectedly with KeyError" in message
    assert "run ./train.sh again to resume" in message
    log = tmp_path / "logs" / "pipeline-error.txt"
    assert str(log) in message and "KeyError: 'rope_theta'" in log.read_text()


def test_a_full_disk_says_so_and_what_to_do(tmp_path: Path):
    with pytest.raises(DmforgeError) as caught, _stage_failures(_progress(), tmp_path):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/gguf/dungeon-master-f16.gguf")
    assert "Stage `export` failed: the disk is full (/runs/x/gguf/dungeon-master-f16.gguf)" in str(caught.value)
    assert "Free some space" in str(caught.value)


def test_a_user_error_keeps_its_fix_and_gains_the_stage(tmp_path: Path):
    with pytest.raises(DmforgeError) as caught, _stage_failures(_progress(), tmp_path):
        raise DmforgeError("Unknown quantization Q3. Choose from F16, Q8_0.", exit_code=2)
    assert str(caught.value) == "Stage `export` failed: Unknown quantization Q3. Choose from F16, Q8_0."
    assert caught.value.exit_code == 2


def test_the_summary_shows_where_things_are_the_app_values_and_the_columns(tmp_path: Path):
    metrics = {"call_decision_accuracy": 0.75, "exact_call_match": 0.5, "perplexity": 9.25}
    result = PipelineResult(
        run_dir=tmp_path / "runs" / "smollm2-135m",
        gguf=tmp_path / "runs" / "smollm2-135m" / "gguf" / "dungeon-master-q8_0.gguf",
        report=EvalReport(
            title="t",
            run_dir="r",
            source="the validation split",
            n_ctx=1024,
            turns=40,
            models={"base": metrics, "F16": metrics, "Q8_0": metrics, "Q8_0 greedy": metrics},
            decoding={"F16": "greedy, repeat penalty 1.1 over 64, full grammar"},
            ship=ShipRecord(quant="Q8_0", reason="the smallest file ..."),
        ),
        deployed={
            "path": "app/assets/models/dungeon-master.gguf",
            "config_ts": "app/src/dmforge/dungeonMasterModel.ts",
            "modelPath": "assets/models/dungeon-master.gguf",
            "n_ctx": 1024,
            "stop": ["<|im_end|>"],
        },
        seconds=1500.0,
        stage_seconds={"train": 1200.0, "check": 1.0},
    )
    text = Text.from_markup(summary(result)).plain
    assert "Done in 25.0 min (train 20.0 min)" in text
    assert "modelPath       'assets/models/dungeon-master.gguf'" in text
    assert "dungeon-master-q8_0.gguf" in text and "report.html" in text and "playtest.md" in text
    assert "Q8_0 ships" in text and "full grammar" in text
    row = next(line for line in text.splitlines() if "exact call match" in line)
    assert row.split()[-4:] == ["0.500", "0.500", "0.500", "0.500"]


def test_train_sh_stops_at_check_with_the_command_that_lists_the_errors(tmp_path: Path):
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "ambush.md").write_text(
        VALID.replace("[roll: survival]\n\n## TOOLCALL", "[roll survival\n\n## TOOLCALL")
    )
    result = subprocess.run(
        [sys.executable, "-m", "dmforge", "pipeline", "--scenarios", str(scenarios)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[1/9] check" in result.stdout
    assert "Stage `check` failed" in result.stderr and f"dmforge data check {scenarios}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists(), "nothing is written before the scenarios are valid"


def test_train_sh_quant_option_is_validated_before_anything_runs(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "dmforge", "pipeline", "--quant", "q3_k_xl"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "deploy.quant" in result.stderr and "'Q8_0'" in result.stderr and "Traceback" not in result.stderr
    assert "[1/9] check" not in result.stdout


def test_an_evaluation_column_is_reused_only_for_the_same_turns_of_an_unchanged_model(tmp_path: Path):
    from dmforge.evaluation.columns import cached

    key = {"source": "the validation split", "turns": [["goblin-ambush", 3], ["the-fine-print", 1]]}
    model = tmp_path / "dungeon-master-f16.gguf"
    model.write_text("{}")
    column = tmp_path / "eval" / "models" / "F16.json"
    write_json(column, {"key": key, "metrics": {"call_f1": 0.4}, "details": []})
    later = model.stat().st_mtime + 5
    os.utime(column, (later, later))

    assert cached(column, key, model)["metrics"] == {"call_f1": 0.4}
    assert cached(column, key | {"turns": key["turns"][:1]}, model) is None, "other turns"
    assert cached(column, key | {"source": "held-out/"}, model) is None, "another scenario folder"
    assert cached(column, key | {"decode": {"temperature": 0.7}}, model) is None, "other decoding"
    os.utime(model, (later + 5, later + 5))  # exported again after the column was scored
    assert cached(column, key, model) is None
    assert cached(tmp_path / "missing.json", key, model) is None
