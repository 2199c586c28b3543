"""Checkpoints: everything needed to continue a run as if it had never stopped.

A checkpoint holds the adapter weights, the optimizer and scheduler state, the random-number
generators, and the loop's counters and histories. It is written to a staging folder and renamed
into place, so a crash while saving leaves the previous checkpoint intact. Tensors are saved with
safetensors or `torch.save` and read back with `weights_only=True`: no pickled code is ever loaded.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dmforge.files import fsync_file, partial_path, staged_dir

KEEP = 2  # checkpoints kept besides the best adapter


@dataclass
class LoopState:
    step: int = 0  # optimizer steps completed
    tokens: int = 0  # trained (DM) tokens seen
    seconds: float = 0.0  # training time so far (the steps), across resumes
    validation_seconds: float = 0.0  # time in validation passes so far; a CPU budget counts it too
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    val_loss: list[tuple[int, float]] = field(default_factory=list)
    val_calls: list[tuple[int, dict]] = field(default_factory=list)  # (step, Validation.to_json()) per evaluation
    best_val: float | None = None  # the validation loss of the adapter that ships
    best_score: float | None = None  # its call score (see validation.py)
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def write_trainable_state(path: Path, model) -> None:
    """The trainable weights into `path`: written beside under a name of its own, flushed, and renamed, so a
    crash never leaves a torn file under the real name."""
    tmp = partial_path(path)
    try:
        save_file(trainable_state(model), tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_trainable_state(model, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, model, optimizer, scheduler, state: LoopState, rng: dict | None = None) -> Path:
    """Write `step-NNNNNN`; `rng` is the random state to resume with (default: the current one)."""
    target = folder / f"step-{state.step:06d}"
    with staged_dir(target, replace_unmarked=True) as stage:
        save_file(trainable_state(model), stage / "adapter.safetensors")
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng or rng_state()},
            stage / "trainer.pt",
        )
        (stage / "state.json").write_text(json.dumps(asdict(state), indent=2))
    for old in sorted(folder.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(folder: Path) -> Path | None:
    done = [p for p in sorted(folder.glob("step-*")) if (p / "state.json").is_file()]
    return done[-1] if done else None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> LoopState:
    load_trainable_state(model, load_file(path / "adapter.safetensors"))
    trainer = torch.load(path / "trainer.pt", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    _set_rng_state(trainer["rng"])
    raw = json.loads((path / "state.json").read_text())
    raw["train_loss"] = [tuple(x) for x in raw["train_loss"]]
    raw["val_loss"] = [tuple(x) for x in raw["val_loss"]]
    raw["val_calls"] = [tuple(x) for x in raw.get("val_calls", [])]
    return LoopState(**raw)
