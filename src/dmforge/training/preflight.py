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

import psutil
import torch

from dmforge.config import TrainConfig
from dmforge.contract.chat import Sample
from dmforge.errors import DmforgeError
from dmforge.models.hardware import Hardware
from dmforge.training.batches import collate
from dmforge.training.batches import to_device as _to
from dmforge.training.frozen import FrozenCache
from dmforge.training.loop import make_plan
from dmforge.training.loss import dm_turn_loss
from dmforge.training.weights import token_weights


@dataclass
class PreflightReport:
    tokens_per_second: float  # a step whose samples are new (the first epoch)
    peak_memory_bytes: int
    memory_bytes: int
    seconds_per_epoch: float  # the first epoch
    total_seconds: float
    total_steps: int
    # A step whose frozen layers' outputs are kept (every epoch after the first); None without the cache.
    cached_tokens_per_second: float | None = None
    # The share of the machine's CPU time other processes took while the steps were timed.
    busy_share: float = 0.0

    @property
    def later_epoch_seconds(self) -> float:
        if self.cached_tokens_per_second is None:
            return self.seconds_per_epoch
        return self.seconds_per_epoch * self.tokens_per_second / self.cached_tokens_per_second

    def seconds_for(self, steps: float, steps_per_epoch: float) -> float:
        """Training seconds for `steps` optimizer steps, the first epoch at its own speed."""
        epochs = steps / steps_per_epoch
        first = min(epochs, 1.0)
        return first * self.seconds_per_epoch + max(0.0, epochs - 1.0) * self.later_epoch_seconds

    def steps_within(self, seconds: float, steps_per_epoch: float) -> int:
        """The most optimizer steps that fit in `seconds`."""
        if seconds <= self.seconds_per_epoch:
            epochs = seconds / self.seconds_per_epoch
        else:
            epochs = 1.0 + (seconds - self.seconds_per_epoch) / self.later_epoch_seconds
        return max(1, int(epochs * steps_per_epoch))

    def summary(self) -> str:
        speed = f"{self.tokens_per_second:.0f} tokens/s"
        epoch = f"about {_duration(self.seconds_per_epoch)} per epoch"
        if self.cached_tokens_per_second is not None:
            speed += f" ({self.cached_tokens_per_second:.0f} once the frozen layers' outputs are kept)"
            epoch = (
                f"about {_duration(self.seconds_per_epoch)} for the first epoch and "
                f"{_duration(self.later_epoch_seconds)} for each after it"
            )
        text = (
            f"{speed}; {epoch}, {_duration(self.total_seconds)} for {self.total_steps} steps; peak memory "
            f"{self.peak_memory_bytes / 2**30:.1f} GB of {self.memory_bytes / 2**30:.1f} GB"
        )
        if self.busy_share >= BUSY:
            text += (
                f". Other programs took {self.busy_share:.0%} of the CPU while the steps were timed, so this "
                "forecast is pessimistic: training runs faster on an idle machine"
            )
        return text


# Above this share of the CPU taken by other processes, the timed steps ran slower than training will alone.
BUSY = 0.15


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


def _cpu_seconds() -> tuple[float, float]:
    """Busy CPU seconds of the whole machine and of this process, so far."""
    machine = psutil.cpu_times()
    busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
    own = psutil.Process().cpu_times()
    return busy, own.user + own.system + getattr(own, "children_user", 0.0) + getattr(own, "children_system", 0.0)


def run_preflight(
    model, samples: list[Sample], config: TrainConfig, hardware: Hardware, pad_id: int, cache: FrozenCache | None = None
) -> PreflightReport:
    longest = sorted(samples, key=lambda s: len(s.input_ids), reverse=True)
    steps = max(1, config.preflight_steps)
    rng = torch.get_rng_state()
    if hardware.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    weights = token_weights(config, samples)

    def timed_step(batch: list[Sample]) -> float:
        tensors = _to(collate(batch, pad_id, weights), hardware.device)
        started = time.monotonic()
        ids, mask = tensors["input_ids"], tensors["attention_mask"]
        decoded = cache.last_hidden(batch, ids, mask) if cache is not None else None
        loss, weight = dm_turn_loss(model, ids, mask, tensors["labels"], tensors["weights"], decoded)
        (loss / max(weight, 1.0)).backward()
        return time.monotonic() - started

    tokens, seconds = 0, 0.0
    machine_before, own_before, wall_before = *_cpu_seconds(), time.monotonic()
    batch: list[Sample] = []
    for step in range(steps):
        batch = longest[step * config.batch_size : (step + 1) * config.batch_size] or longest[: config.batch_size]
        elapsed = timed_step(batch)
        if step > 0 or steps == 1:  # the first step pays one-off warm-up costs
            seconds += elapsed
            tokens += sum(len(s.input_ids) for s in batch)
    cached_tps = None
    if cache is not None:  # the last batch again, its frozen layers' outputs kept, as in every later epoch
        cached_tps = sum(len(s.input_ids) for s in batch) / max(timed_step(batch), 1e-9)
    machine_after, own_after, wall_after = *_cpu_seconds(), time.monotonic()
    model.zero_grad(set_to_none=True)
    torch.set_rng_state(rng)

    others = (machine_after - machine_before) - (own_after - own_before)
    busy = max(0.0, others / max((wall_after - wall_before) * (psutil.cpu_count() or 1), 1e-9))
    peak = torch.cuda.max_memory_allocated() if hardware.device == "cuda" else _peak_rss()
    tps = tokens / max(seconds, 1e-9)
    plan = make_plan(samples, config)
    epoch_tokens = sum(len(s.input_ids) for s in samples)
    if cache is not None:  # every sample's kept states, beside what the steps themselves took
        peak += int(cache.bytes_per_token * epoch_tokens)
    steps_per_epoch = plan.batches_per_epoch / config.grad_accum
    report = PreflightReport(
        tps, peak, hardware.memory_bytes, epoch_tokens / tps, 0.0, plan.total_steps, cached_tps, min(busy, 1.0)
    )
    report.total_seconds = report.seconds_for(plan.total_steps, steps_per_epoch)
    if peak > config.memory_fraction * hardware.memory_bytes:
        raise DmforgeError(
            f"Preflight: training would need about {peak / 2**30:.1f} GB, more than "
            f"{config.memory_fraction:.0%} of this machine's {hardware.memory_bytes / 2**30:.1f} GB. Lower "
            "--max-seq-len or train.batch_size, or pick a smaller --base, then run again."
        )
    return report
