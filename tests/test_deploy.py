"""Deploying into the app: all-or-nothing switches, kept versions outside the bundle, rollback, refusals."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, finished_run
from dmforge.config import DmforgeConfig
from dmforge.deploy import switch
from dmforge.deploy.app import deploy as _deploy
from dmforge.deploy.app import deploy_version, rollback
from dmforge.errors import DmforgeError
from dmforge.registry.versions import load_versions
from dmforge.tools.registry import load_registry

MODEL = Path("assets/models/dungeon-master.gguf")
VALUES = Path("assets/models/dungeon-master.json")
TS = Path("src/dmforge/dungeonMasterModel.ts")
TOOLS = Path("src/dmforge/dmTools.ts")


def _config(tmp_path: Path, **sections) -> DmforgeConfig:
    return DmforgeConfig(train={"runs_root": tmp_path / "runs"}, **sections)


def deploy(run: Path, app: Path, quant: str | None = None, config: DmforgeConfig | None = None):
    config = config or _config(run.parent.parent if run.parent.name == "runs" else run.parent)
    return _deploy(run, app, config, load_registry(), quant)


def _run(tmp_path: Path, name: str = "run", content: bytes = b"GGUF-v1", **kw) -> Path:
    return finished_run(tmp_path / "runs" / name, content, **kw)


def _app(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    (app / "package.json").write_text('{"name": "dnd-game"}')
    return app


def _app_set(app: Path) -> dict[str, bytes]:
    return {str(p): (app / p).read_bytes() for p in (MODEL, VALUES, TS, TOOLS) if (app / p).exists()}


def test_deploy_writes_the_model_and_the_config(tmp_path: Path):
    run, app = _run(tmp_path), _app(tmp_path)
    result = deploy(run, app)
    assert result.model == app / MODEL and result.version == "v1" and result.replaced is None
    assert result.model.read_bytes() == b"GGUF-v1"
    values = json.loads((app / VALUES).read_text())
    assert values["modelPath"] == "assets/models/dungeon-master.gguf" and values["mmprojPath"] is None
    assert values["n_ctx"] == 1024 and values["stop"] == ["<|im_end|>"] and values["jinja"] is True
    assert values["toolResultRole"] == "tool" and "{system}" in values["systemTemplate"]
    assert values["quantization"] == "Q4_K_M" and values["shippedBecause"] == "the smallest that keeps F16's calls"
    assert values["version"] == "v1" and len(values["sha256"]) == 64
    # Every sampler field is explicit (Cactus would fill omitted ones with platform defaults), the reply is
    # bounded, and the tool-call grammar the evaluation used travels with the model.
    completion = values["completion"]
    for field in ("n_predict", "temperature", "top_k", "top_p", "min_p", "penalty_repeat", "penalty_last_n", "seed"):
        assert field in completion
    assert completion["n_predict"] == DmforgeConfig().decode.n_predict and completion["stop"] == ["<|im_end|>"]
    assert completion["grammar"].startswith("# dmforge") and completion["grammar_lazy"] is False
    assert values["messageFraming"]["assistant"] == 6 and values["replyHeaderTokens"] == 4
    ts = result.config_ts.read_text()
    assert "export const dungeonMasterModel = {" in ts and '"modelPath": "assets/models/dungeon-master.gguf"' in ts
    assert "Android" in ts and "const { lm, error } = await CactusLM.init(" in ts
    assert "export function dungeonMasterWindow" in ts
    # The tool contract travels with the model: dmTools.ts beside it, made from the registry, kept and hashed.
    tools = (app / TOOLS).read_text()
    assert "import { dungeonMasterModel, dungeonMasterWindow } from './dungeonMasterModel';" in tools
    assert "export async function runDmTurn(" in tools and '"perception"' in tools
    kept_files = json.loads((result.kept / "kept.json").read_text())["files"]
    assert kept_files["dmTools.ts"] == hashlib.sha256((app / TOOLS).read_bytes()).hexdigest()
    assert (app / values["modelPath"]).is_file(), "the modelPath written resolves inside the app"
    # The set is kept outside the bundle, and nothing but the model and its values is in assets/.
    assert result.kept.parent == app / ".dmforge" / "versions" and (result.kept / "dungeon-master.gguf").is_file()
    assert sorted(p.name for p in (app / "assets" / "models").iterdir()) == [
        "dungeon-master.gguf",
        "dungeon-master.json",
    ]
    assert (app / ".dmforge" / ".gitignore").read_text().endswith("*\n")


def test_each_deploy_keeps_the_earlier_models_outside_the_bundle_and_rollback_restores_them(tmp_path: Path):
    app = _app(tmp_path)
    deploy(_run(tmp_path, "one", b"old model"), app)
    before = _app_set(app)
    result = deploy(_run(tmp_path, "two", b"new model"), app)
    assert result.version == "v2" and result.replaced.startswith("v1-") and (app / MODEL).read_bytes() == b"new model"
    assert not list((app / "assets").rglob("*previous*")), "no backup inside the bundle"
    assert sorted(p.name.split("-")[0] for p in switch.kept_root(app).iterdir()) == ["v1", "v2"]

    back = rollback(app, _config(tmp_path))
    assert back.version == "v1" and _app_set(app) == before, "byte-identical model, JSON and TypeScript"
    assert load_versions(tmp_path / "runs").deployed[str(app.resolve())] == "v1"
    again = rollback(app, _config(tmp_path))  # the one before v1 is v2 again
    assert again.version == "v2" and (app / MODEL).read_bytes() == b"new model"


def test_deploy_version_switches_to_a_kept_version_even_after_its_run_is_gone(tmp_path: Path):
    import shutil

    app, config = _app(tmp_path), _config(tmp_path)
    deploy(_run(tmp_path, "one", b"first"), app)
    first = _app_set(app)
    deploy(_run(tmp_path, "two", b"second"), app)
    shutil.rmtree(tmp_path / "runs" / "one")
    result = deploy_version(app, "v1", config, load_registry())
    assert result.version == "v1" and _app_set(app) == first
    with pytest.raises(DmforgeError, match=r"no version 'v9' \(known: v1, v2\)"):
        deploy_version(app, "v9", config, load_registry())


def test_a_first_deploy_over_a_hand_placed_model_can_be_rolled_back(tmp_path: Path):
    app = _app(tmp_path)
    (app / MODEL).parent.mkdir(parents=True)
    (app / MODEL).write_bytes(b"the model the app had")
    deploy(_run(tmp_path), app)
    back = rollback(app, _config(tmp_path))
    assert back.replaced.startswith("v1-") and back.kept.name == "unversioned-1"
    assert (app / MODEL).read_bytes() == b"the model the app had" and not (app / VALUES).exists()


def test_rollback_without_an_earlier_model_says_so(tmp_path: Path):
    app = _app(tmp_path)
    deploy(_run(tmp_path), app)
    with pytest.raises(DmforgeError, match="no earlier model to roll back to"):
        rollback(app, _config(tmp_path))


def test_a_tampered_gguf_is_refused_and_the_app_keeps_its_model(tmp_path: Path):
    app = _app(tmp_path)
    deploy(_run(tmp_path, "one", b"good"), app)
    before = _app_set(app)
    run = _run(tmp_path, "two", b"verified bytes")
    (run / "gguf" / "dungeon-master-q4_k_m.gguf").write_bytes(b"verified bytes, then edited")
    with pytest.raises(DmforgeError, match="not the file that was verified"):
        deploy(run, app)
    assert _app_set(app) == before


def test_a_damaged_kept_copy_is_refused(tmp_path: Path):
    import shutil

    app, config = _app(tmp_path), _config(tmp_path)
    deploy(_run(tmp_path, "one", b"first"), app)
    deploy(_run(tmp_path, "two", b"second"), app)
    shutil.rmtree(tmp_path / "runs" / "one")
    kept = next(switch.kept_root(app).glob("v1-*"))
    (kept / "dungeon-master.gguf").write_bytes(b"bit rot")
    with pytest.raises(DmforgeError, match="no longer matches its sha256"):
        deploy_version(app, "v1", config, load_registry())
    assert (app / MODEL).read_bytes() == b"second"


@pytest.mark.parametrize("failing", ["dungeon-master.gguf", "dungeonMasterModel.ts"])
def test_a_failure_midway_puts_the_whole_old_set_back(tmp_path: Path, monkeypatch, failing: str):
    app = _app(tmp_path)
    deploy(_run(tmp_path, "one", b"old model"), app)
    before = _app_set(app)
    run = _run(tmp_path, "two", b"new model")
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == failing and "staging" in str(src):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(DmforgeError, match="previous model and config are in place"):
        deploy(run, app)
    assert _app_set(app) == before, "model, JSON and TypeScript are the old set"
    assert not list((app / "assets").rglob(".*partial")) and not (app / ".dmforge" / "journal.json").exists()
    monkeypatch.setattr(os, "replace", real_replace)
    assert deploy(run, app).version == "v2", "the next deploy goes through"


_DEPLOY_SCRIPT = """
import os, sys
from pathlib import Path
from dmforge.config import DmforgeConfig
from dmforge.deploy.app import deploy
from dmforge.tools.registry import load_registry
run, app, runs, crash = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "crash"
if crash:  # die like kill -9 right after the first file is swapped in
    real = os.replace
    def replace(src, dst):
        real(src, dst)
        if "staging" in str(src):
            os._exit(137)
    os.replace = replace
deploy(run, app, DmforgeConfig(train={"runs_root": runs}), load_registry())
"""


def _deploy_process(run: Path, app: Path, runs: Path, crash: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _DEPLOY_SCRIPT, str(run), str(app), str(runs), "crash" if crash else "-"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_kill_9_during_deploy_leaves_the_old_model_and_config_intact(tmp_path: Path):
    app = _app(tmp_path)
    deploy(_run(tmp_path, "one", b"old model"), app)
    before = _app_set(app)
    # A model large enough that copying and hashing it takes a while: the kill lands mid-deploy.
    run = _run(tmp_path, "two", os.urandom(1 << 20) * 96)
    process = _deploy_process(run, app, tmp_path / "runs")
    deadline = time.monotonic() + 60
    while not list((app / ".dmforge").rglob("*.partial")) and not (app / ".dmforge" / "staging").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert _app_set(app) == before, "killed while the new set was copied: the app has its old model and config"
    assert not list((app / "assets").rglob(".*partial"))
    assert deploy(run, app).version == "v2", "the next deploy cleans up after the killed one and goes through"


def test_a_kill_while_files_are_swapped_is_undone_before_the_next_deploy(tmp_path: Path):
    app = _app(tmp_path)
    deploy(_run(tmp_path, "one", b"old model"), app)
    before = _app_set(app)
    run = _run(tmp_path, "two", b"new model")
    process = _deploy_process(run, app, tmp_path / "runs", crash=True)
    assert process.wait(timeout=120) == 137, process.communicate()
    assert (app / ".dmforge" / "journal.json").is_file() and _app_set(app) != before, "killed midway through"
    with switch.app_lock(app):
        note = switch.recover(app)
    assert "put back" in note and _app_set(app) == before
    # A deploy after such a kill recovers by itself first; rollback then still finds v1.
    process = _deploy_process(run, app, tmp_path / "runs", crash=True)
    process.wait(timeout=120)
    assert deploy(run, app).version == "v2" and (app / MODEL).read_bytes() == b"new model"
    assert rollback(app, _config(tmp_path)).version == "v1" and _app_set(app) == before


def test_two_deploys_never_interleave(tmp_path: Path):
    run, app = _run(tmp_path), _app(tmp_path)
    with switch.app_lock(app):
        process = _deploy_process(run, app, tmp_path / "runs")
        _, err = process.communicate(timeout=120)
    assert process.returncode != 0 and b"deploy or rollback is running" in err
    assert not (app / MODEL).exists()


def test_an_export_that_failed_verification_is_not_deployed(tmp_path: Path):
    with pytest.raises(DmforgeError, match="failed verification"):
        deploy(_run(tmp_path, passed=False), _app(tmp_path))


def test_the_app_folder_is_checked(tmp_path: Path):
    run = _run(tmp_path)
    with pytest.raises(DmforgeError, match="does not exist"):
        deploy(run, tmp_path / "nowhere")
    (tmp_path / "not-an-app").mkdir()
    with pytest.raises(DmforgeError, match=r"no package\.json"):
        deploy(run, tmp_path / "not-an-app")
    with pytest.raises(DmforgeError, match="has no exported GGUF"):
        deploy(tmp_path / "runs" / "empty-run", _app(tmp_path))


def test_the_evaluated_choice_ships_unless_a_type_is_named(tmp_path: Path):
    app = _app(tmp_path)
    assert deploy(_run(tmp_path), app).values["quantization"] == "Q4_K_M"
    named = deploy(_run(tmp_path), app, quant="f16")
    assert named.values["quantization"] == "F16" and named.model.read_bytes() == b"F16-GGUF-v1"
    with pytest.raises(DmforgeError, match=r"has no Q8_0 GGUF.*--quant Q8_0"):
        deploy(_run(tmp_path), app, quant="Q8_0")


def test_export_ship_in_the_config_is_what_deploy_ships(tmp_path: Path):
    config = _config(tmp_path, export={"ship": "F16"})
    assert deploy(_run(tmp_path), _app(tmp_path), config=config).values["quantization"] == "F16"


def test_a_run_that_was_never_evaluated_is_not_deployed_blindly(tmp_path: Path):
    with pytest.raises(DmforgeError, match=r"Run `dmforge eval RUN`, or name the file with --quant"):
        deploy(_run(tmp_path, evaluated=False), _app(tmp_path))


def test_a_lazy_grammar_is_triggered_by_a_pattern(tmp_path: Path):
    config = _config(tmp_path, decode={"grammar": "lazy"})
    completion = deploy(_run(tmp_path), _app(tmp_path), config=config).values["completion"]
    assert (
        completion["grammar_lazy"] is True
        and completion["grammar"].splitlines()[2]
        == "root ::= call text (call text){0,3}"  # the first call and 3 more: decode.max_calls
    )
    # Type 2 (a pattern): a one-token word trigger would also need `preserved_tokens`, which the jinja path drops.
    assert completion["grammar_triggers"] == [{"type": 2, "value": "\\[", "token": 0}]


def test_no_grammar_is_sent_when_it_is_off(tmp_path: Path):
    config = _config(tmp_path, decode={"grammar": "off"})
    completion = deploy(_run(tmp_path), _app(tmp_path), config=config).values["completion"]
    assert "grammar" not in completion and "grammar_triggers" not in completion
