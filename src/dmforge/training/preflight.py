"""Preflight: time a few real training steps before the long run and refuse what cannot fit.

The steps run on the longest samples (the worst case for memory), and leave the model, its
gradients and the random-number generators exactly as they were, so the run that follows is the
same with or without a preflight.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass

import torch

from dmforge.config import TrainConfig
from dmforge.errors import DmforgeError
from dmforge.models.hardware import Hardware
from dmforge.training.batches import collate
from dmforge.training.batches import to_device as _to
from dmforge.training.chat import Sample
from dmforge.training.loop import make_plan
from dmforge.training.loss import dm_turn_loss
from dmforge.training.weights import token_weights


@dataclass
class PreflightReport:
    tokens_per_second: float
    peak_memory_bytes: int
    memory_bytes: int
    seconds_per_epoch: float
    total_seconds: float
    total_steps: int

    def summary(self) -> str:
        return (
            f"{self.tokens_per_second:.0f} tokens/s; about {_duration(self.seconds_per_epoch)} per epoch, "
            f"{_duration(self.total_seconds)} for {self.total_steps} steps; peak memory "
            f"{self.peak_memory_bytes / 2**30:.1f} GB of {self.memory_bytes / 2**30:.1f} GB"
        )


def _duration(seconds: float) -> str:
    return (
        f"{seconds:.0f} s"
        if seconds < 90
        else f"{seconds / 60:.1f} min"
        if seconds < 5400
        else f"{seconds / 3600:.1f} h"
    )


def _peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux kilobytes


def run_preflight(
    model, samples: list[Sample], config: TrainConfig, hardware: Hardware, pad_id: int
) -> PreflightReport:
    longest = sorted(samples, key=lambda s: len(s.input_ids), reverse=True)
    steps = max(1, config.preflight_steps)
    rng = torch.get_rng_state()
    if hardware.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens, seconds = 0, 0.0
    weights = token_weights(config, samples)
    for step in range(steps):
        batch = longest[step * config.batch_size : (step + 1) * config.batch_size] or longest[: config.batch_size]
        tensors = _to(collate(batch, pad_id, weights), hardware.device)
        started = time.monotonic()
        loss, weight = dm_turn_loss(
            model, tensors["input_ids"], tensors["attention_mask"], tensors["labels"], tensors["weights"]
        )
        (loss / max(weight, 1.0)).backward()
        if step > 0 or steps == 1:  # the first step pays one-off warm-up costs
            seconds += time.monotonic() - started
            tokens += sum(len(s.input_ids) for s in batch)
        del loss
    model.zero_grad(set_to_none=True)
    torch.set_rng_state(rng)

    peak = torch.cuda.max_memory_allocated() if hardware.device == "cuda" else _peak_rss()
    tps = tokens / max(seconds, 1e-9)
    plan = make_plan(samples, config)
    epoch_tokens = sum(len(s.input_ids) for s in samples)
    per_epoch = epoch_tokens / tps
    steps_per_epoch = plan.batches_per_epoch / config.grad_accum
    report = PreflightReport(
        tps, peak, hardware.memory_bytes, per_epoch, per_epoch * plan.total_steps / steps_per_epoch, plan.total_steps
    )
    if peak > config.memory_fraction * hardware.memory_bytes:
        raise DmforgeError(
            f"Preflight: training would need about {peak / 2**30:.1f} GB, more than "
            f"{config.memory_fraction:.0%} of this machine's {hardware.memory_bytes / 2**30:.1f} GB. Lower "
            "--max-seq-len or train.batch_size, or pick a smaller --base, then run again."
        )
    return report
