"""Which base to train: the preflight's measured speed, scaled to every base in the catalog, and only
measured quality behind any advice to switch.

Training cost grows with a model's parameters, so one measured run (the preflight's timed steps on
the base being trained) estimates what every other base would take on the same hardware, for the
same recipe and data. That part is arithmetic. Whether another base plays DM *better* is not: a
larger base is not a better DM until it has been trained on the corpus and scored, so a switch is
suggested only towards a base whose catalog row carries a measured held-out intent match
(`measured_intent`) above the current base's, that fits the time budget (`train.max_minutes`, or an
hour when none is set), and with what loading it takes (a hub base needs a download this machine may
not be able to make).
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
    """One paragraph for the console: how long each base would take here, and whether a measured one is better."""
    rows = estimates(measured_minutes, measured_params_m, budget_minutes)
    budget = budget_minutes or DEFAULT_BUDGET_MINUTES
    times = ", ".join(f"{e.name} {_duration(e.minutes)}" for e in rows)
    mine = next((e.preset.measured_intent for e in rows if e.name == current), None)
    better = [
        e
        for e in rows
        if e.fits
        and e.name != current
        and e.preset.measured_intent is not None
        and (mine is None or e.preset.measured_intent > mine)
    ]
    if better:
        best = max(better, key=lambda e: e.preset.measured_intent)
        loading = " (downloaded once from the Hugging Face hub)" if best.preset.source == "hub" else ""
        verdict = (
            f"--base {best.name}{loading} measured a held-out intent match of {best.preset.measured_intent:.2f}"
            + (f" against {mine:.2f} for {current}" if mine is not None else "")
            + f" and fits {budget:g} min."
        )
    else:
        verdict = (
            f"no base measured better than {current} fits {budget:g} min; the others have no measurement on this "
            "task yet (docs/model-quality.md says how to make one)."
        )
    return f"this recipe on this machine would take about {times}: {verdict}"


def _duration(minutes: float) -> str:
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"
