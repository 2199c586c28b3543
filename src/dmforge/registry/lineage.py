"""Which run ./train.sh starts: a full one, or an incremental one from the latest version.

The scenarios are diffed against the newest version trained with the same base and options:

    nothing changed            that version's run folder ("done already", or it resumes)
    files added or edited      an incremental run from it (training/incremental.py)
    files removed              a full run: an adapter cannot be made to forget a story incrementally
    no such version            a full run (also with --from-scratch)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dmforge.registry.runs import TRAINED_LAYERS, read_identity
from dmforge.registry.versions import VersionBook, load_versions
from dmforge.training.incremental import Lineage


@dataclass(frozen=True)
class RunPlan:
    lineage: Lineage | None
    reason: str


def _lineage_of(run_dir: Path) -> Lineage | None:
    """The lineage a run folder trained with, as its identity.json records it."""
    recorded = (read_identity(run_dir) or {}).get("lineage")
    if not recorded:
        return None
    return Lineage(recorded["parent"], recorded["parent_run"], recorded["adapter"], tuple(recorded["changed"]))


def plan_run(runs_root: Path, options: dict, scenarios: dict[str, str], from_scratch: bool = False) -> RunPlan:
    """Full or incremental, and why. `options` is the run identity's config; `scenarios` id → hash."""
    if from_scratch:
        return RunPlan(None, "a full run (--from-scratch)")
    book: VersionBook = load_versions(runs_root)
    parent = book.latest(options)
    if parent is None:
        return RunPlan(None, "a full run: no earlier version was trained with this base and these options")
    if parent.scenarios == scenarios:
        return RunPlan(_lineage_of(Path(parent.run_dir)), f"the scenarios are those of {parent.id}")
    removed = sorted(set(parent.scenarios) - set(scenarios))
    if removed:
        return RunPlan(
            None,
            f"a full run: {len(removed)} scenario file(s) of {parent.id} were removed ({', '.join(removed[:3])}), "
            "and an update cannot make the model forget them",
        )
    if (Path(parent.run_dir) / TRAINED_LAYERS).is_file():
        return RunPlan(
            None, f"a full run: {parent.id} trained its layers' own weights (`train.method: full`), not an adapter"
        )
    adapter = Path(parent.run_dir) / "adapter"
    if not (adapter / "adapter_model.safetensors").is_file():
        return RunPlan(None, f"a full run: {parent.id}'s adapter ({adapter}) is gone, so there is nothing to continue")
    changed = tuple(sorted(sid for sid, digest in scenarios.items() if parent.scenarios.get(sid) != digest))
    added = sum(sid not in parent.scenarios for sid in changed)
    return RunPlan(
        Lineage(parent.id, parent.run_dir, str(adapter), changed),
        f"an incremental run from {parent.id}: {added} file(s) added, {len(changed) - added} changed",
    )
