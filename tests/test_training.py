"""Real LoRA training of SmolLM2-135M: the loss falls, resume is exact, Ctrl-C loses nothing."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from conftest import CORPUS
from dmforge.config import load_config
from dmforge.errors import DmforgeError
from dmforge.tools.registry import load_registry
from dmforge.training.finetune import finetune

pytestmark = pytest.mark.slow
QUIET = Console(quiet=True)


def _small_corpus(tmp_path: Path) -> Path:
    root = tmp_path / "scenarios"
    for name in ("combat/ghoul-crypt-ambush.md", "social/the-fine-print.md", "puzzle/hourglass-chamber.md"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(CORPUS / name, root / name)
    return root


def _config(tmp_path: Path, run: str, **train):
    options = {
        "max_steps": 4,
        "grad_accum": 1,
        "save_every": 2,
        "eval_every": 2,
        "preflight_steps": 0,
        "max_seq_len": 1024,
        "run_dir": tmp_path / run,
        **train,
    }
    return load_config(
        None, {"data": {"scenarios": _small_corpus(tmp_path), "validation_fraction": 0.5}, "train": options}
    )


def _assert_same(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    assert a[0].keys() == b[0].keys()
    for key in a[0]:
        assert torch.equal(a[0][key], b[0][key]), key
    for pid, state in a[1]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b[1]["state"][pid][name]), (pid, name)


def _failing_step(monkeypatch, on_call: int, error: BaseException):
    """Make the optimizer's `on_call`-th step raise `error`, as a crash or a Ctrl-C would."""
    calls = {"n": 0}
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == on_call:
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return original


def _checkpoint(run: Path, step: int) -> tuple[dict, dict]:
    path = run / "checkpoints" / f"step-{step:06d}"
    return load_file(path / "adapter.safetensors"), torch.load(path / "trainer.pt", weights_only=True)["optimizer"]


def test_resume_after_a_crash_continues_from_the_saved_step_with_identical_state(tmp_path: Path, monkeypatch):
    registry = load_registry()
    straight = finetune(_config(tmp_path, "straight"), registry, QUIET)
    assert straight.metrics["steps"] == 4

    original = _failing_step(monkeypatch, 3, RuntimeError("power cut"))
    with pytest.raises(RuntimeError, match="power cut"):
        finetune(_config(tmp_path, "crashed"), registry, QUIET)
    assert [p.name for p in (tmp_path / "crashed" / "checkpoints").iterdir()] == ["step-000002"]
    _assert_same(_checkpoint(tmp_path / "straight", 2), _checkpoint(tmp_path / "crashed", 2))
    assert _checkpoint(tmp_path / "crashed", 2)[1]["state"], "the optimizer state is saved, not only the weights"

    monkeypatch.setattr(torch.optim.AdamW, "step", original)
    resumed = finetune(_config(tmp_path, "crashed"), registry, QUIET)
    assert resumed.metrics["steps"] == 4
    _assert_same(_checkpoint(tmp_path / "straight", 4), _checkpoint(tmp_path / "crashed", 4))
    assert straight.metrics["train_loss"] == resumed.metrics["train_loss"]


def _interrupt_in_forward(monkeypatch, on_call: int):
    """Ctrl-C while step `on_call` computes its loss, before its optimizer step: where it almost always lands."""
    from dmforge.training import loop

    calls = {"n": 0}
    original = loop._step_loss

    def step_loss(*args, **kwargs):
        calls["n"] += 1
        result = original(*args, **kwargs)  # dropout has drawn from the generator by now
        if calls["n"] == on_call:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(loop, "_step_loss", step_loss)


def test_ctrl_c_saves_a_checkpoint_and_the_rerun_resumes_exactly(tmp_path: Path, monkeypatch):
    registry = load_registry()
    finetune(_config(tmp_path, "straight", save_every=100), registry, QUIET)

    _interrupt_in_forward(monkeypatch, 4)
    with pytest.raises(DmforgeError, match="Interrupted at step 3") as info:
        finetune(_config(tmp_path, "interrupted", save_every=100), registry, QUIET)
    assert info.value.exit_code == 130
    assert (tmp_path / "interrupted" / "checkpoints" / "step-000003").is_dir()
    monkeypatch.undo()
    finetune(_config(tmp_path, "interrupted", save_every=100), registry, QUIET)
    _assert_same(_checkpoint(tmp_path / "straight", 4), _checkpoint(tmp_path / "interrupted", 4))

    # A real SIGINT during the optimizer step is held until the step is applied, validated and saved.
    original = torch.optim.AdamW.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    with pytest.raises(DmforgeError, match="Interrupted at step 3"):
        finetune(_config(tmp_path, "signalled", save_every=100), registry, QUIET)
    monkeypatch.undo()
    finetune(_config(tmp_path, "signalled", save_every=100), registry, QUIET)
    _assert_same(_checkpoint(tmp_path / "straight", 4), _checkpoint(tmp_path / "signalled", 4))


def test_kill_9_at_a_random_point_of_training_resumes_to_the_same_weights(tmp_path: Path):
    """`kill -9` skips every handler; the run resumes from its last whole checkpoint to the same result."""
    import random

    import yaml

    registry = load_registry()
    straight = _config(tmp_path, "straight", save_every=1)
    finetune(straight, registry, QUIET)

    killed = _config(tmp_path, "killed", save_every=1)
    config_file = tmp_path / "killed.yaml"
    config_file.write_text(yaml.safe_dump(json.loads(killed.model_dump_json())))
    child = subprocess.Popen(
        [sys.executable, "-m", "dmforge", "finetune", "--config", str(config_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = tmp_path / "killed" / "checkpoints" / "step-000001"
    deadline = time.monotonic() + 300
    while not first.is_dir() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    # Seen now, because only the last two checkpoints are kept: on a fast CPU step 3 prunes step 1
    # within the delay below.
    assert first.is_dir(), "the child trained at least one step before it was killed"
    # Anywhere in the three steps, validations, checkpoints and merge left (8.8 s on the
    # fastest CPU measured): mid-step, mid-validation, mid-checkpoint.
    delay = random.Random().uniform(0.0, 2.0)
    time.sleep(delay)
    child.kill()
    child.wait(30)
    assert child.returncode == -signal.SIGKILL, "the child was still running when it was killed"
    finetune(killed, registry, QUIET)
    print(f"killed {delay:.2f} s after the first checkpoint")  # shown if the comparison below fails
    _assert_same(_checkpoint(tmp_path / "straight", 4), _checkpoint(tmp_path / "killed", 4))
    assert not list((tmp_path / "killed").rglob(".*.partial")), "half-written files of the killed run are gone"


def test_a_changed_corpus_is_not_resumed_silently(tmp_path: Path):
    registry = load_registry()
    finetune(_config(tmp_path, "run", max_steps=1, eval_every=1), registry, QUIET)
    config = _config(tmp_path, "run", max_steps=2)  # copies the corpus afresh; then a game master edits it
    scenario = next((tmp_path / "scenarios").rglob("*.md"))
    scenario.write_text(scenario.read_text().replace("## DM\n", "## DM\nA new line.\n", 1))
    dataset = (tmp_path / "run" / "dataset" / "train.jsonl").read_bytes()
    with pytest.raises(DmforgeError, match="the scenarios changed"):
        finetune(config, registry, QUIET)
    assert (tmp_path / "run" / "dataset" / "train.jsonl").read_bytes() == dataset, "the refused run keeps its data"


def test_preflight_refuses_what_would_not_fit(tmp_path: Path):
    config = _config(tmp_path, "big", preflight_steps=1, memory_fraction=0.001)
    with pytest.raises(DmforgeError, match=r"Preflight: training would need about .* GB.*--max-seq-len"):
        finetune(config, load_registry(), QUIET)


def test_a_tiny_budget_is_planned_from_the_preflight_and_the_forecast_holds(tmp_path: Path):
    """The preflight plans the steps that fill `max_minutes`; the planned steps then take about what it said.

    The bound is loose (a factor of two) because CI machines are shared; docs/hardware.md quotes the
    forecast against the real time of a full run on an idle machine.
    """
    config = _config(tmp_path, "budget", max_steps=None, max_minutes=0.75, preflight_steps=2, eval_every=1000)
    result = finetune(config, load_registry(), QUIET)
    forecast, metrics = result.metrics["forecast"], result.metrics
    assert forecast["budget_minutes"] == 0.75 and forecast["steps"] >= 2
    # The plan fills the budget: training ends at the planned step, or (on a slower moment) at the budget.
    spent = metrics["train_seconds"] + metrics["validation_seconds"]  # the budget's clock counts both
    assert metrics["steps"] == forecast["steps"] or spent >= 0.75 * 60
    assert 0.5 <= metrics["train_seconds"] / forecast["seconds"] <= 2.0, (metrics["train_seconds"], forecast)
    assert 0.0 <= forecast["busy_share"] <= 1.0
    # The plan is kept for a resume, and the schedule read the clock: each step's rate is the cosine at
    # whichever is further along, its steps or the training seconds before it (the planner writes its steps
    # into max_steps, which once switched the clock off, so a slow run stopped with the rate halfway down).
    plan = json.loads((result.run_dir / "logs" / "plan.json").read_text())
    assert plan["max_steps"] == forecast["steps"]
    rows = [json.loads(line) for line in (result.run_dir / "logs" / "train.jsonl").read_text().splitlines()]
    total, peak, budget = forecast["steps"], config.train.learning_rate, config.train.max_minutes * 60
    warmup = min(config.train.warmup_steps, max(total - 1, 0))
    clock = 0.0  # the budget's clock: the steps and the validation passes between them
    for row in rows:
        if "lr" not in row:
            clock += row.get("val_seconds", 0.0)
            continue
        if row["step"] < warmup:
            expected = (row["step"] + 1) / (warmup + 1)
        else:
            progress = max((row["step"] - warmup) / max(1, total - warmup), clock / budget)
            expected = 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))
        assert row["lr"] == pytest.approx(peak * expected, rel=1e-6), row
        clock += row["seconds"]
