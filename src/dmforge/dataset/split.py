"""A deterministic train/validation split by whole scenario, stratified by category.

Turns of one scenario never straddle the split (that would leak the validation story into
training). Within each category the scenarios are ranked by a seeded hash of their id, not
by a shuffled list, so adding a new file moves at most one other scenario across the line
and an incremental retrain sees almost the same validation set. A validation list
(`data.validation_list`) pins the held-out set instead, whatever the corpus grows by.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

from dmforge.errors import DmforgeError
from dmforge.scenarios.model import Scenario


def _rank(seed: int, scenario_id: str) -> str:
    return hashlib.sha256(f"{seed}:{scenario_id}".encode()).hexdigest()


def validation_count(n: int, fraction: float) -> int:
    """How many of a category's n scenarios are held out: at least one once there are two."""
    if n < 2 or fraction <= 0:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def read_validation_list(path: Path, scenarios: list[Scenario]) -> set[str]:
    """The scenario ids a validation list file holds out: one per line, paths relative to the scenarios folder,
    blank lines and `#` comments ignored. Every id must name a scenario that was read."""
    try:
        lines = path.read_text("utf-8").splitlines()
    except OSError as exc:
        raise DmforgeError(
            f"Cannot read the validation list {path} (data.validation_list): {exc.strerror}. Fix the path, or "
            "remove the option to hold out a seeded share of each category."
        ) from exc
    known = {s.id for s in scenarios}
    held_out = set()
    for number, line in enumerate(lines, 1):
        scenario_id = line.split("#", 1)[0].strip()
        if not scenario_id:
            continue
        if scenario_id not in known:
            raise DmforgeError(
                f"{path}, line {number}: `{scenario_id}` is not a scenario in the folder (or has errors). Write its "
                "path relative to the scenarios folder, such as combat/goblin-ambush.md, or delete the line."
            )
        held_out.add(scenario_id)
    return held_out


def split_scenarios(
    scenarios: list[Scenario], fraction: float, seed: int, held_out: set[str] | None = None
) -> tuple[list[Scenario], list[Scenario]]:
    """(train, validation): the seeded share of each category, or exactly `held_out` when it is given."""
    if held_out is not None:
        return [s for s in scenarios if s.id not in held_out], [s for s in scenarios if s.id in held_out]
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
