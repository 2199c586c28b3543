"""End to end as a newcomer runs it: ./train.sh on the sample corpus (reusing the installed .venv)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_train_sh_runs_the_data_stage_and_says_where_it_stopped(tmp_path: Path):
    out = tmp_path / "dataset"
    result = subprocess.run(
        ["bash", str(ROOT / "train.sh"), "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1/2 check" in result.stdout and "2/2 build" in result.stdout
    assert "stops after the data stage" in " ".join(result.stdout.split())
    stats = json.loads((out / "stats.json").read_text())
    assert stats["tool_calls"] >= 150 and stats["dm_turns"] >= 300

    import datasets

    hf = datasets.load_from_disk(str(out / "hf"))
    assert set(hf) == {"train", "validation"} and hf["validation"].num_rows > 0


def test_package_json_train_script_calls_train_sh():
    package = json.loads((ROOT / "package.json").read_text())
    assert package["scripts"]["train"] == "./train.sh"
