"""The learning-rate schedule under a time budget: it ends with the budget, however the forecast erred."""

from __future__ import annotations

import itertools

import torch

from dmforge.config import TrainConfig
from dmforge.training.loop import make_optimizer


def _rates(config: TrainConfig, total_steps: int, seconds_per_step: float, steps: int) -> list[float]:
    model = torch.nn.Linear(4, 4)
    elapsed = [0.0]
    optimizer, scheduler = make_optimizer(model, config, total_steps, clock=lambda: elapsed[0])
    rates = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        elapsed[0] += seconds_per_step
        rates.append(scheduler.get_last_lr()[0])
    return rates


def test_a_run_slower_than_forecast_still_decays_to_the_floor_as_the_budget_ends():
    # Planned 100 steps into 10 minutes; each step really takes 12 s, so the budget ends at step 50.
    config = TrainConfig(max_minutes=10, warmup_steps=0, learning_rate=1e-3)
    rates = _rates(config, total_steps=100, seconds_per_step=12.0, steps=50)
    assert rates[-1] < 1.02e-4  # at the floor (a tenth of the peak) as the budget ends
    by_steps = _rates(TrainConfig(max_minutes=None, warmup_steps=0, learning_rate=1e-3), 100, 12.0, 50)
    assert by_steps[-1] > 5e-4  # without the clock, a run cut at step 50 stops halfway down the cosine
    assert all(a >= b for a, b in itertools.pairwise(rates))


def test_a_run_faster_than_forecast_follows_its_steps():
    config = TrainConfig(max_minutes=10, warmup_steps=0, learning_rate=1e-3)
    fast = _rates(config, total_steps=100, seconds_per_step=1.0, steps=100)
    plain = _rates(TrainConfig(max_minutes=None, warmup_steps=0, learning_rate=1e-3), 100, 1.0, 100)
    assert fast == plain


def test_a_fixed_number_of_steps_keeps_its_schedule_whatever_the_clock():
    # max_steps is the user's schedule (and a resumed run must repeat it exactly): the budget only caps it.
    capped = _rates(TrainConfig(max_minutes=10, max_steps=100, warmup_steps=0), 100, 12.0, 50)
    plain = _rates(TrainConfig(max_minutes=None, max_steps=100, warmup_steps=0), 100, 12.0, 50)
    assert capped == plain
