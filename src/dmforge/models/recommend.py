"""Which base fits this machine: the preflight's measured speed, scaled to every base in the catalog.

Training cost grows with a model's parameters, so one measured run (the preflight's timed steps on
the base being trained) estimates what every other base would take on the same hardware, for the
same recipe and data. The estimate is printed after the preflight, with the bases that fit the time
budget (`train.max_minutes`, or an hour when none is set): the largest of them usually learns the
DM's job best, and a hub base needs the network once to download.
"""

from __future__ import annotations

from dataclasses import dataclass

from dmforge.models.catalog import Preset, load_catalog

DEFAULT_BUDGET_MINUTES = 60.0


@dataclass(frozen=True)
class Estimate:
    name: str
    minutes: float
    fits: bool
    preset: Preset


def estimates(measured_minutes: float, measured_params_m: float, budget_minutes: float | None) -> list[Estimate]:
    """Every Cactus-ready base's estimated training time for the recipe the preflight just timed."""
    budget = budget_minutes or DEFAULT_BUDGET_MINUTES
    out = []
    for name, preset in load_catalog().items():
        if not preset.cactus:
            continue
        minutes = measured_minutes * preset.parameters_m / max(measured_params_m, 1.0)
        out.append(Estimate(name, minutes, minutes <= budget, preset))
    return sorted(out, key=lambda e: e.preset.parameters_m)


def advice(current: str, measured_minutes: float, measured_params_m: float, budget_minutes: float | None) -> str:
    """One paragraph for the console: how long each base would take here, and which fit the budget."""
    rows = estimates(measured_minutes, measured_params_m, budget_minutes)
    budget = budget_minutes or DEFAULT_BUDGET_MINUTES
    times = ", ".join(f"{e.name} {_duration(e.minutes)}" for e in rows)
    fitting = [e for e in rows if e.fits]
    if not fitting:
        verdict = f"none fits {budget:g} min; lower train.epochs or set train.max_minutes."
    else:
        largest = fitting[-1]
        verdict = f"within {budget:g} min the largest that fits is {largest.name} (use {largest.preset.quant})"
        if largest.name != current:
            verdict += f"; --base {largest.name} should play DM better than {current}"
        verdict += "."
    return f"this recipe on this machine would take about {times}: {verdict}"


def _duration(minutes: float) -> str:
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"
