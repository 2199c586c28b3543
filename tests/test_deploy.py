"""Deploying into the app: atomic copy with a backup, config for cactus.ts, and refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import SMOLLM2_CHAT_FORMAT
from dmforge.config import DmforgeConfig
from dmforge.deploy.app import deploy as _deploy
from dmforge.errors import DmforgeError
from dmforge.tools.registry import load_registry

CONFIG = DmforgeConfig()


def deploy(run: Path, app: Path, quant: str | None = None, config: DmforgeConfig = CONFIG):
    return _deploy(run, app, config, load_registry(), quant)


def _exported_run(tmp_path: Path, content: bytes = b"GGUF-v1", passed: bool = True, evaluated: bool = True) -> Path:
    run = tmp_path / "run"
    (run / "gguf").mkdir(parents=True, exist_ok=True)
    gguf = run / "gguf" / "dungeon-master-q4_k_m.gguf"
    gguf.write_bytes(content)
    (run / "gguf" / "f16.gguf").write_bytes(b"F16-" + content)
    (run / "eval").mkdir(exist_ok=True)
    report = run / "eval" / "report.json"
    if evaluated:
        report.write_text(json.dumps({"ship": {"quant": "Q4_K_M", "reason": "the smallest that keeps F16's calls"}}))
    else:
        report.unlink(missing_ok=True)
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
    result = deploy(run, app)
    assert result.model == app / "assets" / "models" / "dungeon-master.gguf"
    assert result.model.read_bytes() == b"GGUF-v1" and result.backup is None
    values = json.loads((app / "assets" / "models" / "dungeon-master.json").read_text())
    assert values["modelPath"] == "assets/models/dungeon-master.gguf" and values["mmprojPath"] is None
    assert values["n_ctx"] == 1024 and values["stop"] == ["<|im_end|>"] and values["jinja"] is True
    assert values["toolResultRole"] == "tool" and "{system}" in values["systemTemplate"]
    assert values["quantization"] == "Q4_K_M" and values["shippedBecause"] == "the smallest that keeps F16's calls"
    # Every sampler field is explicit (Cactus would fill omitted ones with platform defaults), the reply is
    # bounded, and the tool-call grammar the evaluation used travels with the model.
    completion = values["completion"]
    for field in ("n_predict", "temperature", "top_k", "top_p", "min_p", "penalty_repeat", "penalty_last_n", "seed"):
        assert field in completion
    assert completion["n_predict"] == CONFIG.decode.n_predict and completion["stop"] == ["<|im_end|>"]
    assert completion["grammar"].startswith("# dmforge") and completion["grammar_lazy"] is False
    assert values["messageFraming"]["assistant"] == 6 and values["replyHeaderTokens"] == 4
    ts = result.config_ts.read_text()
    assert "export const dungeonMasterModel = {" in ts and '"modelPath": "assets/models/dungeon-master.gguf"' in ts
    assert "Android" in ts and "const { lm, error } = await CactusLM.init(" in ts
    assert "export function dungeonMasterWindow" in ts
    assert (app / values["modelPath"]).is_file(), "the modelPath written resolves inside the app"


def test_redeploy_keeps_the_previous_model_as_a_backup(tmp_path: Path):
    app = _app(tmp_path)
    deploy(_exported_run(tmp_path, b"old model"), app)
    result = deploy(_exported_run(tmp_path, b"new model"), app)
    assert result.model.read_bytes() == b"new model"
    assert result.backup == result.model.with_name("dungeon-master.gguf.previous")
    assert result.backup.read_bytes() == b"old model"


def test_a_failure_midway_leaves_the_old_model_in_place(tmp_path: Path, monkeypatch):
    app = _app(tmp_path)
    deploy(_exported_run(tmp_path, b"old model"), app)
    run = _exported_run(tmp_path, b"new model")
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == "dungeon-master.gguf":
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(DmforgeError, match="previous model is untouched"):
        deploy(run, app)
    models = app / "assets" / "models"
    assert (models / "dungeon-master.gguf").read_bytes() == b"old model"
    assert not list(models.glob(".*partial")), "no half-written file is left"


def test_an_export_that_failed_verification_is_not_deployed(tmp_path: Path):
    with pytest.raises(DmforgeError, match="failed verification"):
        deploy(_exported_run(tmp_path, passed=False), _app(tmp_path))


def test_the_app_folder_is_checked(tmp_path: Path):
    run = _exported_run(tmp_path)
    with pytest.raises(DmforgeError, match="does not exist"):
        deploy(run, tmp_path / "nowhere")
    (tmp_path / "not-an-app").mkdir()
    with pytest.raises(DmforgeError, match=r"no package\.json"):
        deploy(run, tmp_path / "not-an-app")
    with pytest.raises(DmforgeError, match="has no exported GGUF"):
        deploy(tmp_path / "empty-run", _app(tmp_path))


def test_the_evaluated_choice_ships_unless_a_type_is_named(tmp_path: Path):
    app = _app(tmp_path)
    assert deploy(_exported_run(tmp_path), app).values["quantization"] == "Q4_K_M"
    named = deploy(_exported_run(tmp_path), app, quant="f16")
    assert named.values["quantization"] == "F16" and named.model.read_bytes() == b"F16-GGUF-v1"
    with pytest.raises(DmforgeError, match=r"has no Q8_0 GGUF.*--quant Q8_0"):
        deploy(_exported_run(tmp_path), app, quant="Q8_0")


def test_a_run_that_was_never_evaluated_is_not_deployed_blindly(tmp_path: Path):
    with pytest.raises(DmforgeError, match=r"Run `dmforge eval RUN`, or name the file with --quant"):
        deploy(_exported_run(tmp_path, evaluated=False), _app(tmp_path))


def test_a_lazy_grammar_is_triggered_by_a_pattern(tmp_path: Path):
    config = DmforgeConfig(decode={"grammar": "lazy"})
    completion = deploy(_exported_run(tmp_path), _app(tmp_path), config=config).values["completion"]
    assert (
        completion["grammar_lazy"] is True
        and completion["grammar"].splitlines()[2] == "root ::= call text (call text)*"
    )
    # Type 2 (a pattern): a one-token word trigger would also need `preserved_tokens`, which the jinja path drops.
    assert completion["grammar_triggers"] == [{"type": 2, "value": "\\[", "token": 0}]


def test_no_grammar_is_sent_when_it_is_off(tmp_path: Path):
    config = DmforgeConfig(decode={"grammar": "off"})
    completion = deploy(_exported_run(tmp_path), _app(tmp_path), config=config).values["completion"]
    assert "grammar" not in completion and "grammar_triggers" not in completion
