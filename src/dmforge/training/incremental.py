"""Incremental retraining: continue a version's adapter on what changed, with a replay of the rest.

When scenarios are added or edited, retraining everything repeats work the parent version already
did. An incremental run starts from the parent's LoRA weights instead of a fresh adapter and trains
on the conversations of the added and changed files, mixed with a seeded sample of the unchanged
ones (`train.replay_ratio` of them per new sample) so that what the model learnt before is
rehearsed rather than overwritten. It takes the full run's step budget scaled by the share of the
corpus it trains on, so three new files in a corpus of forty cost a fraction of a full run.

Which files changed, and from which version, is decided by registry/lineage.py.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from dmforge.contract.chat import Sample
from dmforge.errors import DmforgeError


@dataclass(frozen=True)
class Lineage:
    """Where an incremental run starts: the parent version, its adapter, and the scenario files that changed."""

    parent: str  # version id, e.g. "v1"
    parent_run: str
    adapter: str  # the parent's PEFT adapter folder
    changed: tuple[str, ...]  # scenario ids (paths relative to the scenarios folder), added or edited

    def to_json(self) -> dict:
        return asdict(self) | {"changed": list(self.changed)}


def incremental_samples(
    samples: list[Sample], scenario_of: list[str], changed: set[str], replay_ratio: float, seed: int
) -> tuple[list[Sample], int, int]:
    """The changed files' samples plus a seeded replay sample of the others: (samples, new, replayed).

    `scenario_of[i]` is the scenario id that sample i was built from.
    """
    new = [s for s, sid in zip(samples, scenario_of, strict=True) if sid in changed]
    old = [s for s, sid in zip(samples, scenario_of, strict=True) if sid not in changed]
    # With no new training sample (every changed file went to the validation split), the replay alone
    # still moves the adapter on: one replay sample at least, so the run is well defined.
    count = min(len(old), max(1 if not new else 0, math.ceil(replay_ratio * len(new))))
    replay = random.Random(seed).sample(old, count)
    return new + replay, len(new), len(replay)


def scaled_steps(full_steps: int, part: int, whole: int) -> int:
    """The full run's steps scaled by the share of samples the incremental run trains on (at least one)."""
    return max(1, math.ceil(full_steps * part / max(whole, 1)))


def load_parent_adapter(model, adapter_dir: Path) -> None:
    """Put the parent version's LoRA weights into the fresh adapter: the incremental run continues from them."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.is_file():
        raise DmforgeError(
            f"The parent version's adapter {weights} is missing, so this update cannot continue from it. "
            "Run ./train.sh --from-scratch to train a full model instead.",
            exit_code=2,
        )
    result = set_peft_model_state_dict(model, load_file(weights))
    # Keys the fresh adapter has but the parent's file lacks would stay random: a LoRA shape or target
    # mismatch, which lineage.py rules out by matching the options. Say so rather than train on noise.
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise DmforgeError(
            f"The parent adapter {weights} does not fit this run's LoRA ({len(missing)} weights missing, e.g. "
            f"{missing[0]}). Run ./train.sh --from-scratch.",
            exit_code=2,
        )
