"""The learning-rate schedule under a time budget: it ends with the budget, however the forecast erred."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from rich.console import Console

from dmforge.config import TrainConfig
from dmforge.training.loop import Plan, _start, budget_clock, make_optimizer


def _rates(
    config: TrainConfig, total_steps: int, seconds_per_step: float, steps: int, clock: bool = True
) -> list[float]:
    model = torch.nn.Linear(4, 4)
    elapsed = [0.0]
    optimizer, scheduler = make_optimizer(model, config, total_steps, clock=(lambda: elapsed[0]) if clock else None)
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


def test_without_a_clock_the_steps_alone_set_the_schedule():
    # max_steps the user set is a fixed schedule (and a resumed run must repeat it exactly): no clock is passed.
    unclocked = _rates(TrainConfig(max_minutes=10, max_steps=100, warmup_steps=0), 100, 12.0, 50, clock=False)
    plain = _rates(TrainConfig(max_minutes=None, max_steps=100, warmup_steps=0), 100, 12.0, 50)
    assert unclocked == plain


@pytest.mark.parametrize("timed", [True, False])
def test_the_loop_reads_the_clock_exactly_when_the_budget_planned_the_steps(tmp_path: Path, timed: bool):
    """The planner writes its steps into `max_steps`, so the loop cannot tell them from a user's by the config:
    finetune says so (`steps_from_budget`). A run planned for 100 steps whose budget is spent at step 1 must be
    at the floor then; a fixed 100-step schedule must not move."""
    config = TrainConfig(max_minutes=10, max_steps=100, warmup_steps=0, learning_rate=1e-3)
    model = torch.nn.Linear(4, 4)
    console = Console(quiet=True)
    _, optimizer, scheduler, state = _start(
        model, config, Plan(400, 100), tmp_path / "checkpoints", console, None, timed
    )
    state.seconds = 10 * 60
    optimizer.step()
    scheduler.step()
    rate = scheduler.get_last_lr()[0]
    assert rate == pytest.approx(1e-4) if timed else rate > 9.9e-4


def test_validation_passes_spend_the_budget_like_steps(tmp_path: Path):
    """A CPU budget is wall time the user waits: the validation passes between steps count in it, so the
    schedule is at its floor, and the run stops, when steps and passes together have spent it (leaving them
    out overran a 35-minute budget by eleven passes)."""
    config = TrainConfig(max_minutes=10, max_steps=100, warmup_steps=0, learning_rate=1e-3)
    model = torch.nn.Linear(4, 4)
    _, optimizer, scheduler, state = _start(
        model, config, Plan(400, 100), tmp_path / "checkpoints", Console(quiet=True), None, True
    )
    state.seconds, state.validation_seconds = 8 * 60, 2 * 60
    assert budget_clock(state) == 10 * 60
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-4)


def test_the_plan_leaves_room_for_the_validation_passes():
    """1000 tokens/s, one 1000-token sample a step, a 10-minute budget: 600 steps with no validation. Each pass
    over 10,000 held-out tokens forecasts 3 s, so every 50 steps cost 53 s and the plan is the most steps whose
    steps and passes fit 600 s."""
    from dmforge.contract.chat import Sample
    from dmforge.training.finetune import _passes, _steps_with_validation
    from dmforge.training.preflight import PreflightReport

    preflight = PreflightReport(1000.0, 0, 1, seconds_per_epoch=600.0, total_seconds=600.0, total_steps=600)
    held_out = [Sample("held-out", [0] * 1000, [0] * 1000) for _ in range(10)]
    config = TrainConfig(max_minutes=10, eval_every=50)
    fit = _steps_with_validation(preflight, config, 600.0, held_out)
    assert fit + 3 * _passes(fit, config, held_out) <= 600 < (fit + 1) + 3 * _passes(fit + 1, config, held_out)
    assert fit == 564  # 564 steps and 12 passes: 600 s
    assert _steps_with_validation(preflight, config, 600.0, []) == 600  # nothing to validate, nothing to leave


def test_a_budget_short_of_the_measured_plateau_says_what_it_costs_and_the_minutes_that_buy_the_rest():
    """The same machine as above: 10 minutes fit 0.94 epochs. 2.5 epochs are 1500 steps (600 s, then 900 s at the
    same speed) and 30 validation passes of 3 s: 1590 s, so 27 minutes."""
    from dmforge.contract.chat import Sample
    from dmforge.training.finetune import CALLS_PLATEAU_EPOCHS, short_budget_tip
    from dmforge.training.preflight import PreflightReport

    preflight = PreflightReport(1000.0, 0, 1, seconds_per_epoch=600.0, total_seconds=600.0, total_steps=600)
    held_out = [Sample("held-out", [0] * 1000, [0] * 1000) for _ in range(10)]
    config = TrainConfig(max_minutes=10, eval_every=50)
    tip = short_budget_tip(preflight, config, 600.0, held_out, 564)
    assert tip is not None
    assert "fits 0.9 epochs in 10 minutes" in tip and "`train.max_minutes: 27`" in tip
    # A budget that reaches the plateau has nothing to say.
    assert short_budget_tip(preflight, config, 600.0, held_out, int(CALLS_PLATEAU_EPOCHS * 600)) is None
