"""Deploying into the app: atomic copy with a backup, config for cactus.ts, and refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import SMOLLM2_CHAT_FORMAT
from dmforge.config import DataConfig
from dmforge.deploy.app import deploy
from dmforge.errors import DmforgeError


def _exported_run(tmp_path: Path, content: bytes = b"GGUF-v1", passed: bool = True) -> Path:
    run = tmp_path / "run"
    (run / "gguf").mkdir(parents=True, exist_ok=True)
    gguf = run / "gguf" / "dungeon-master-q4_k_m.gguf"
    gguf.write_bytes(content)
    (run / "gguf" / "export.json").write_text(
        json.dumps(
            {
                "passed": passed,
                "files": {"F16": str(run / "gguf" / "f16.gguf"), "Q4_K_M": str(gguf)},
                "requested": ["Q4_K_M"],
                "checks": [{"file": gguf.name, "name": "rope_base", "passed": passed}],
                "chat_format": SMOLLM2_CHAT_FORMAT,
                "max_seq_len": 1024,
            }
        )
    )
    return run


def _app(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "dnd-game"}')
    return app


def test_deploy_writes_the_model_and_the_config(tmp_path: Path):
    run, app = _exported_run(tmp_path), _app(tmp_path)
    result = deploy(run, app, DataConfig())
    assert result.model == app / "assets" / "models" / "dungeon-master.gguf"
    assert result.model.read_bytes() == b"GGUF-v1" and result.backup is None
    values = json.loads((app / "assets" / "models" / "dungeon-master.json").read_text())
    assert values["modelPath"] == "assets/models/dungeon-master.gguf" and values["mmprojPath"] is None
    assert values["n_ctx"] == 1024 and values["stop"] == ["<|im_end|>"] and values["jinja"] is True
    assert values["toolResultRole"] == "tool" and "{system}" in values["systemTemplate"]
    ts = result.config_ts.read_text()
    assert "export const dungeonMasterModel = {" in ts and '"modelPath": "assets/models/dungeon-master.gguf"' in ts
    assert "Android" in ts
    assert (app / values["modelPath"]).is_file(), "the modelPath written resolves inside the app"


def test_redeploy_keeps_the_previous_model_as_a_backup(tmp_path: Path):
    app = _app(tmp_path)
    deploy(_exported_run(tmp_path, b"old model"), app, DataConfig())
    result = deploy(_exported_run(tmp_path, b"new model"), app, DataConfig())
    assert result.model.read_bytes() == b"new model"
    assert result.backup == result.model.with_name("dungeon-master.gguf.previous")
    assert result.backup.read_bytes() == b"old model"


def test_a_failure_midway_leaves_the_old_model_in_place(tmp_path: Path, monkeypatch):
    app = _app(tmp_path)
    deploy(_exported_run(tmp_path, b"old model"), app, DataConfig())
    run = _exported_run(tmp_path, b"new model")
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == "dungeon-master.gguf":
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(DmforgeError, match="previous model is untouched"):
        deploy(run, app, DataConfig())
    models = app / "assets" / "models"
    assert (models / "dungeon-master.gguf").read_bytes() == b"old model"
    assert not list(models.glob(".*partial")), "no half-written file is left"


def test_an_export_that_failed_verification_is_not_deployed(tmp_path: Path):
    with pytest.raises(DmforgeError, match="failed verification"):
        deploy(_exported_run(tmp_path, passed=False), _app(tmp_path), DataConfig())


def test_the_app_folder_is_checked(tmp_path: Path):
    run = _exported_run(tmp_path)
    with pytest.raises(DmforgeError, match="does not exist"):
        deploy(run, tmp_path / "nowhere", DataConfig())
    (tmp_path / "not-an-app").mkdir()
    with pytest.raises(DmforgeError, match=r"no package\.json"):
        deploy(run, tmp_path / "not-an-app", DataConfig())
    with pytest.raises(DmforgeError, match="has no exported GGUF"):
        deploy(tmp_path / "empty-run", _app(tmp_path), DataConfig())
