"""Versions, lineage and the gate without training: the bookkeeping the maintenance loop rests on.

The real loop (a full run, three scenarios added, an update stopped by the gate) is in test_train_sh.py.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, finished_run
from dmforge.contract.chat import Sample
from dmforge.errors import DmforgeError
from dmforge.export.adapter import export_adapter
from dmforge.registry.gate import judge
from dmforge.registry.lineage import plan_run
from dmforge.registry.runs import TRAINED_LAYERS, read_export, read_manifest
from dmforge.registry.versions import load_versions, register
from dmforge.training.incremental import incremental_samples, scaled_steps

OPTIONS = {"model": {"base": "smollm2-135m"}}


def _run(tmp_path: Path, name: str, scenarios: dict[str, str], content: bytes = b"GGUF", **kw) -> Path:
    run = finished_run(tmp_path / "runs" / name, content, scenarios=scenarios, **kw)
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    return run


def test_runs_are_numbered_in_order_and_a_rerun_updates_its_own_version(tmp_path: Path):
    runs = tmp_path / "runs"
    first = register(runs, _run(tmp_path, "a", {"x.md": "1"}))
    second = register(runs, _run(tmp_path, "b", {"x.md": "1", "y.md": "2"}, kind="incremental", parent="v1"))
    assert (first.id, second.id) == ("v1", "v2") and second.parent == "v1" and second.kind == "incremental"
    assert first.gguf.quant == "Q4_K_M" and first.gguf.sha256 == read_export(runs / "a").sha256["Q4_K_M"]
    assert first.metrics["call_decision_accuracy"] == 0.7 and first.scenarios == {"x.md": "1"}
    again = register(runs, runs / "a", ship_quant="F16")  # evaluated again, another file chosen: same number
    assert again.id == "v1" and again.gguf.quant == "F16" and again.created == first.created
    assert [v.id for v in load_versions(runs).versions] == ["v1", "v2"]


def test_a_run_that_failed_verification_is_not_a_version(tmp_path: Path):
    with pytest.raises(DmforgeError, match="failed verification"):
        register(tmp_path / "runs", _run(tmp_path, "a", {"x.md": "1"}, passed=False))
    assert not (tmp_path / "runs" / "versions.json").exists()


def test_a_damaged_versions_list_is_an_error_that_names_it(tmp_path: Path):
    (tmp_path / "versions.json").write_text('{"versions": [{"id": 3}]}')
    with pytest.raises(DmforgeError, match=r"versions\.json is damaged.*move it away"):
        load_versions(tmp_path)


def test_the_plan_follows_the_scenarios(tmp_path: Path):
    runs = tmp_path / "runs"
    assert plan_run(runs, OPTIONS, {"x.md": "1"}).lineage is None, "no version yet: a full run"
    register(runs, _run(tmp_path, "a", {"x.md": "1", "y.md": "2"}))
    same = plan_run(runs, OPTIONS, {"x.md": "1", "y.md": "2"})
    assert same.lineage is None and "are those of v1" in same.reason, "v1's own (full) run, resumed or done"
    grown = plan_run(runs, OPTIONS, {"x.md": "1", "y.md": "changed", "z.md": "3"})
    assert grown.lineage.parent == "v1" and grown.lineage.changed == ("y.md", "z.md")
    assert grown.lineage.adapter == str(runs / "a" / "adapter")
    assert "1 file(s) added, 1 changed" in grown.reason
    shrunk = plan_run(runs, OPTIONS, {"x.md": "1"})
    assert shrunk.lineage is None and "removed (y.md)" in shrunk.reason
    assert plan_run(runs, OPTIONS, {"x.md": "1", "y.md": "2", "z.md": "3"}, from_scratch=True).lineage is None
    other = plan_run(runs, {"model": {"base": "qwen3-0.6b"}}, {"x.md": "1", "y.md": "2", "z.md": "3"})
    assert other.lineage is None, "another base or other options never continue v1"


def test_an_incremental_version_is_the_parent_of_the_next_and_resumes_with_its_own_lineage(tmp_path: Path):
    runs = tmp_path / "runs"
    register(runs, _run(tmp_path, "a", {"x.md": "1"}))
    lineage = plan_run(runs, OPTIONS, {"x.md": "1", "y.md": "2"}).lineage
    run_b = _run(tmp_path, "b", {"x.md": "1", "y.md": "2"}, kind="incremental", parent="v1")
    identity = json.loads((run_b / "identity.json").read_text())
    identity["lineage"] = lineage.to_json() | {"replay_ratio": 1.0}
    (run_b / "identity.json").write_text(json.dumps(identity))
    register(runs, run_b)
    assert plan_run(runs, OPTIONS, {"x.md": "1", "y.md": "2"}).lineage == lineage, "same files: v2's own run"
    assert plan_run(runs, OPTIONS, {"x.md": "1", "y.md": "2", "w.md": "4"}).lineage.parent == "v2"
    (run_b / "adapter" / "adapter_model.safetensors").unlink()
    gone = plan_run(runs, OPTIONS, {"x.md": "1", "y.md": "2", "w.md": "4"})
    assert gone.lineage is None and "adapter" in gone.reason


def test_a_version_that_trained_its_layers_own_weights_is_never_continued(tmp_path: Path):
    runs = tmp_path / "runs"
    run = finished_run(runs / "a", b"GGUF", scenarios={"x.md": "1"})
    (run / TRAINED_LAYERS).write_bytes(b"weights")  # `train.method: full`: no adapter folder
    register(runs, run)
    plan = plan_run(runs, OPTIONS, {"x.md": "1", "y.md": "2"})
    assert plan.lineage is None and "train.method: full" in plan.reason
    with pytest.raises(DmforgeError, match=r"no LoRA adapter to export.*deploy.mode: merged"):
        export_adapter(run, tmp_path, tmp_path / "merged.gguf", [])


def _sample(conversation: str) -> Sample:
    return Sample(conversation=conversation, input_ids=[1, 2], labels=[1, 2])


def test_an_incremental_run_trains_on_the_changed_files_and_a_seeded_replay():
    samples = [_sample(f"c{i}") for i in range(40)]
    scenario_of = [f"s{i % 10}.md" for i in range(40)]  # four samples per scenario file
    chosen, new, replayed = incremental_samples(samples, scenario_of, {"s3.md", "s7.md"}, 1.5, seed=4)
    assert (new, replayed) == (8, 12) and len(chosen) == 20
    assert {s.conversation for s in chosen[:8]} == {f"c{i}" for i in range(40) if i % 10 in (3, 7)}
    assert all(scenario_of[int(s.conversation[1:])] not in {"s3.md", "s7.md"} for s in chosen[8:])
    again, _, _ = incremental_samples(samples, scenario_of, {"s3.md", "s7.md"}, 1.5, seed=4)
    assert [s.conversation for s in again] == [s.conversation for s in chosen], "resumable: the same replay"
    _, new, replayed = incremental_samples(samples, scenario_of, {"new.md"}, 1.0, seed=4)
    assert (new, replayed) == (0, 1), "changed files all held out: one replay sample keeps the run defined"
    assert scaled_steps(40, 20, 40) == 20 and scaled_steps(40, 6, 160) == 2 and scaled_steps(5, 1, 1000) == 1


def test_the_gate_stops_a_regression_beyond_the_tolerance_only():
    old = {"call_decision_accuracy": 0.70, "intent_match": 0.30, "exact_call_match": 0.10, "call_validity": 1.0}
    metrics = list(old)
    close = judge(old | {"intent_match": 0.285}, old, metrics, 0.02, "v1")
    assert close.passed
    worse = judge(old | {"call_decision_accuracy": 0.55}, old, metrics, 0.02, "v1")
    assert not worse.passed and [r.metric for r in worse.rows if not r.passed] == ["call_decision_accuracy"]
    assert "call decision" in worse.table() and "0.700" in worse.table() and "WORSE" in worse.table()
    unmeasured = judge(old | {"call_validity": None}, old, metrics, 0.0, "v1")
    assert unmeasured.passed, "a model that made no call has no validity: decision accuracy judges it"
    assert not judge(old | {"loop_rate": 0.3}, old | {"loop_rate": 0.0}, ["loop_rate"], 0.02, "v1").passed


def test_versions_json_lists_both_versions_their_parent_link_metrics_and_deltas(tmp_path: Path):
    runs = tmp_path / "runs"
    register(runs, _run(tmp_path, "a", {"x.md": "1"}))
    better = {"call_decision_accuracy": 0.8, "intent_match": 0.35, "exact_call_match": 0.1}
    register(runs, _run(tmp_path, "b", {"x.md": "1", "y.md": "2"}, kind="incremental", parent="v1", metrics=better))
    config = tmp_path / "config.yaml"
    config.write_text(f"train:\n  runs_root: {runs}\n")
    dmforge = str(ROOT / ".venv" / "bin" / "dmforge")
    shown = subprocess.run([dmforge, "versions", "--json", "-c", str(config)], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)["versions"]
    assert [r["id"] for r in rows] == ["v2", "v1"] and rows[0]["parent"] == "v1" and rows[1]["parent"] is None
    assert rows[0]["deltas"]["call_decision_accuracy"] == pytest.approx(0.1)
    assert rows[0]["metrics"]["intent_match"] == 0.35 and rows[1]["deltas"] == {}
    wide = os.environ | {"COLUMNS": "200"}
    table = subprocess.run([dmforge, "versions", "-c", str(config)], capture_output=True, text=True, env=wide)
    assert table.returncode == 0 and "from v1" in table.stdout and "0.800 +0.100" in table.stdout


def test_a_manifest_records_the_scenario_hashes_and_the_lineage(tmp_path: Path):
    run = _run(tmp_path, "b", {"x.md": "1"}, kind="incremental", parent="v1")
    manifest = read_manifest(run)
    assert manifest.scenarios == {"x.md": "1"} and manifest.kind == "incremental" and manifest.parent == "v1"
    (run / "manifest.json").write_text('{"base": 1}')
    with pytest.raises(DmforgeError, match=r"manifest\.json is not a record.*dmforge finetune"):
        read_manifest(run)


def test_replay_sampling_is_uniform_over_the_unchanged_files():
    counts = {f"s{i}.md": 0 for i in range(10)}
    samples = [_sample(f"c{i}") for i in range(100)]
    scenario_of = [f"s{i % 10}.md" for i in range(100)]
    for seed in range(200):
        chosen, _, _ = incremental_samples(samples, scenario_of, {"s0.md"}, 0.5, seed=random.Random(seed).random())
        for s in chosen[10:]:
            counts[scenario_of[int(s.conversation[1:])]] += 1
    assert counts["s0.md"] == 0 and min(v for k, v in counts.items() if k != "s0.md") > 0
