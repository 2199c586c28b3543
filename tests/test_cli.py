"""The `dmforge` command as a user runs it: exit codes, JSON for scripts, and never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CORPUS, ROOT, VALID


def dmforge(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dmforge", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def assert_no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stdout + result.stderr


def test_check_corpus_json_is_clean():
    result = dmforge("data", "check", str(CORPUS), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"files", "scenarios", "dm_turns", "tool_calls", "errors", "warnings", "diagnostics"} <= set(report)
    assert report["errors"] == 0 and report["warnings"] == 0
    assert report["scenarios"] >= 60 and report["dm_turns"] >= 300 and report["tool_calls"] >= 150


def test_check_defaults_to_the_configured_folder():
    result = dmforge("data", "check")
    assert result.returncode == 0 and "0 errors" in result.stdout


def test_errors_exit_1_with_file_line_and_fix(tmp_path: Path):
    (tmp_path / "combat").mkdir()
    bad = tmp_path / "combat" / "bad.md"
    bad.write_text(VALID.replace("[roll: survival]\n\n## TOOLCALL", "[roll: survivl]\n\n## TOOLCALL"))
    (tmp_path / "combat" / "ok.md").write_text(VALID.replace("Category: combat\n", "Mood: odd\n"))
    result = dmforge("data", "check", str(tmp_path), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["errors"] >= 1 and report["warnings"] == 1 and report["scenarios"] == 1
    diag = next(d for d in report["diagnostics"] if d["code"] == "tool-bad-arguments")
    assert diag["file"] == str(bad) and diag["line"] == 18 and diag["severity"] == "error"
    assert "survival" in diag["message"] and diag["hint"]
    human = dmforge("data", "check", str(tmp_path))
    assert human.returncode == 1 and "bad.md" in human.stdout and "tool-bad-arguments" in human.stdout
    assert "[roll: survivl]" in human.stdout, "call text must not be eaten as Rich markup"
    assert_no_traceback(human)


def test_warnings_alone_exit_0(tmp_path: Path):
    (tmp_path / "a.md").write_text(VALID.replace("Category: combat\n", "Mood: odd\n"))
    result = dmforge("data", "check", str(tmp_path / "a.md"), "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["warnings"] == 1


@pytest.mark.parametrize(
    "args",
    [("data", "check", "no/such/folder"), ("data", "check", "--bogus"), ("data", "build", "--scenarios", "nowhere")],
)
def test_usage_errors_exit_2_without_traceback(args):
    result = dmforge(*args)
    assert result.returncode == 2
    assert_no_traceback(result)
    assert result.stderr.strip()


def test_bad_config_is_one_paragraph(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  seed: lots\n")
    result = dmforge("data", "check", "--config", str(config))
    assert result.returncode == 1 and "data.seed" in result.stderr
    assert_no_traceback(result)


def test_build_refuses_broken_scenarios_without_traceback(tmp_path: Path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a.md").write_text("## DM\n")
    result = dmforge("data", "build", "--scenarios", str(tmp_path / "s"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "no dataset was built" in result.stderr
    assert not (tmp_path / "out").exists()
    assert_no_traceback(result)


def test_build_prints_stats_and_json(tmp_path: Path):
    out = tmp_path / "ds"
    result = dmforge("data", "build", "--scenarios", str(CORPUS), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    checked = json.loads(dmforge("data", "check", str(CORPUS), "--json").stdout)
    assert stats["out"] == str(out) and stats["tool_calls"] == checked["tool_calls"] > 0
    human = dmforge("data", "build", "--scenarios", str(CORPUS), "--out", str(out))
    assert "calls per tool" in human.stdout and "DM turns without calls" in human.stdout
    armed = dmforge("data", "build", "--scenarios", str(CORPUS), "--out", str(out), "--arms", "1", "--json")
    assert armed.returncode == 0, armed.stderr
    assert json.loads(armed.stdout)["augmented"] > 0 == stats["augmented"]


def test_version():
    result = dmforge("--version")
    assert result.returncode == 0 and result.stdout.startswith("dmforge ")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("finetune", "--base", "gpt-99"), "Unknown base model `gpt-99`"),
        (("finetune", "--base", "/no/such/model.gguf"), "does not exist"),
        (("finetune", "--max-seq-len", "8"), "--max-seq-len"),
    ],
)
def test_bad_base_or_option_is_a_clear_error(args, fragment, tmp_path: Path):
    result = dmforge(*args, "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert_no_traceback(result)
    assert not (tmp_path / "run").exists(), "nothing is written before the inputs are known to be good"


def test_bad_train_config_value_names_the_key(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  learning_rate: 5\n  lora_rnak: 8\n")
    result = dmforge("finetune", "--config", str(config))
    assert result.returncode == 1
    assert (
        "train.learning_rate" in result.stderr
        and "`train.lora_rnak` is not an option. Did you mean `lora_r`?" in result.stderr
    )
    assert_no_traceback(result)


def test_models_list():
    result = dmforge("models", "list")
    assert result.returncode == 0
    for name in ("smollm2-135m", "gemma3-270m", "qwen3-0.6b", "qwen3-1.7b", "gemma3-1b", "smollm2-360m", "llama3.2-1b"):
        assert name in result.stdout
    data = json.loads(dmforge("models", "list", "--json").stdout)
    assert data["smollm2-135m"]["cactus"] is True and data["lfm2-350m"]["cactus"] is False
