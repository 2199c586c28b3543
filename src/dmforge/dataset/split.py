"""A deterministic train/validation split by whole scenario, stratified by category.

Turns of one scenario never straddle the split (that would leak the validation story into
training). Within each category the scenarios are ranked by a seeded hash of their id, not
by a shuffled list, so adding a new file moves at most one other scenario across the line
and an incremental retrain sees almost the same validation set.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from dmforge.scenarios.model import Scenario


def _rank(seed: int, scenario_id: str) -> str:
    return hashlib.sha256(f"{seed}:{scenario_id}".encode()).hexdigest()


def validation_count(n: int, fraction: float) -> int:
    """How many of a category's n scenarios are held out: at least one once there are two."""
    if n < 2 or fraction <= 0:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def split_scenarios(scenarios: list[Scenario], fraction: float, seed: int) -> tuple[list[Scenario], list[Scenario]]:
    by_category: dict[str, list[Scenario]] = defaultdict(list)
    for scenario in scenarios:
        by_category[scenario.header.category].append(scenario)
    held_out: set[str] = set()
    for members in by_category.values():
        ranked = sorted(members, key=lambda s: _rank(seed, s.id))
        held_out.update(s.id for s in ranked[: validation_count(len(ranked), fraction)])
    train = [s for s in scenarios if s.id not in held_out]
    validation = [s for s in scenarios if s.id in held_out]
    return train, validation
