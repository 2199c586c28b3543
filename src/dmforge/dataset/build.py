"""Build the training dataset: check → split → conversations → augment → dedupe → write.

The output folder holds `train.jsonl` and `validation.jsonl` (one conversation per line), the
same data as a Hugging Face `DatasetDict` in `hf/`, `stats.json` and `manifest.json` (what went
in: every scenario's fingerprint and the resolved config). It is written to a staging folder
and swapped in whole, so an interrupted build never leaves a half-dataset behind.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dmforge import __version__
from dmforge.config import DataConfig
from dmforge.dataset.arms import ARMS_RENAME, swap_arms
from dmforge.dataset.augment import rename_scenario
from dmforge.dataset.conversation import conversation_fingerprint, to_conversation
from dmforge.dataset.split import read_validation_list, split_scenarios
from dmforge.errors import DmforgeError
from dmforge.files import check_replaceable, refuse_overlap, staged_dir, write_json, write_text
from dmforge.scenarios import CheckReport, Scenario, Severity, TurnKind, check_paths
from dmforge.tools.registry import Registry

SPLITS = ("train", "validation")


@dataclass
class DatasetStats:
    scenarios: dict[str, int] = field(default_factory=dict)  # per split
    conversations: dict[str, int] = field(default_factory=dict)  # per split, augmented copies included
    augmented: int = 0
    duplicates_removed: int = 0
    user_turns: int = 0
    dm_turns: int = 0
    dm_turns_without_calls: int = 0
    tool_calls: int = 0
    calls_per_tool: dict[str, int] = field(default_factory=dict)
    calls_per_category: dict[str, int] = field(default_factory=dict)
    scenarios_per_category: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _stats(splits: dict[str, list[Scenario]], conversations: dict[str, list[dict]], augmented: int, dupes: int):
    originals = [s for split in SPLITS for s in splits[split]]
    turns = [t for s in originals for t in s.turns]
    dm = [t for t in turns if t.kind is TurnKind.DM]
    per_category: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        for scenario in splits[split]:
            per_category.setdefault(scenario.header.category, dict.fromkeys(SPLITS, 0))[split] += 1
    return DatasetStats(
        scenarios={split: len(splits[split]) for split in SPLITS},
        conversations={split: len(conversations[split]) for split in SPLITS},
        augmented=augmented,
        duplicates_removed=dupes,
        user_turns=sum(t.kind is TurnKind.USER for t in turns),
        dm_turns=len(dm),
        dm_turns_without_calls=sum(not t.calls for t in dm),
        tool_calls=sum(len(t.calls) for t in dm),
        calls_per_tool=dict(sorted(Counter(c.name for t in dm for c in t.calls).items())),
        calls_per_category=dict(sorted(Counter(s.header.category for s in originals for _ in s.calls).items())),
        scenarios_per_category=dict(sorted(per_category.items())),
    )


def _refuse_errors(report: CheckReport, scenarios_dir: Path) -> None:
    errors = [d for d in report.diagnostics if d.severity is Severity.ERROR]
    if not errors:
        return
    shown = "; ".join(f"{d.file}:{d.line} {d.message}" for d in errors[:3])
    # `report.errors` counts every error, also those past the diagnostics cap that are not listed.
    more = f" (and {report.errors - 3} more)" if report.errors > 3 else ""
    raise DmforgeError(
        f"The scenarios in {scenarios_dir} have {report.errors} error(s), so no dataset was built: {shown}{more}. "
        f"Run `dmforge data check {scenarios_dir}` for every problem with its fix, then build again."
    )


def held_out_ids(config: DataConfig, scenarios: list[Scenario]) -> set[str] | None:
    """The ids `data.validation_list` holds out, or None for the seeded split."""
    return read_validation_list(config.validation_list, scenarios) if config.validation_list else None


def corpus_fingerprint(scenarios: list[Scenario], config: DataConfig) -> str:
    """Changes when any scenario's text or any data option changes: the key for incremental retraining."""
    digest = hashlib.sha256(config.model_dump_json(exclude={"out", "scenarios", "validation_list"}).encode())
    for scenario in sorted(scenarios, key=lambda s: s.id):
        digest.update(f"{scenario.id}\0{scenario.fingerprint}\n".encode())
    held_out = held_out_ids(config, scenarios)
    if held_out is not None:  # the list's content decides the split, wherever the file lives
        digest.update(("held out:" + "\n".join(sorted(held_out))).encode())
    return digest.hexdigest()


def _write_hf(stage: Path, conversations: dict[str, list[dict]]) -> None:
    # Imported here: `datasets` pulls in pyarrow and pandas, which `data check` never needs.
    import datasets

    datasets.disable_progress_bars()
    text_pair = {"key": datasets.Value("string"), "value": datasets.Value("string")}
    call = {"name": datasets.Value("string"), "call": datasets.Value("string"), "arguments": [text_pair]}
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "scenario": datasets.Value("string"),
            "category": datasets.Value("string"),
            "title": datasets.Value("string"),
            "world": datasets.Value("string"),
            "location": datasets.Value("string"),
            "party": [datasets.Value("string")],
            "tags": [datasets.Value("string")],
            "augmented": datasets.Value("bool"),
            "messages": [
                {
                    "role": datasets.Value("string"),
                    "content": datasets.Value("string"),
                    "name": datasets.Value("string"),
                    "tool_calls": [call],
                    "tool_results": [{**call, "result": datasets.Value("string")}],
                }
            ],
        }
    )
    # `from_list([])` would drop the schema, so an empty split is built from empty columns instead.
    dataset = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_list(rows, features=features)
            if rows
            else datasets.Dataset.from_dict({name: [] for name in features}, features=features)
            for split, rows in conversations.items()
        }
    )
    dataset.save_to_disk(str(stage / "hf"))


def build_dataset(
    config: DataConfig,
    registry: Registry,
    out: Path | None = None,
    report: CheckReport | None = None,
    in_run_folder: bool = False,
) -> tuple[DatasetStats, Path]:
    """Build the dataset from `config.scenarios` into `out` (default `config.out`); return stats and path.

    `report` is the check of those scenarios when the caller made it already. `in_run_folder` says `out`
    lies in a run folder dmforge has claimed, where a dataset of an older dmforge (made before output
    folders carried a marker) may be replaced.
    """
    out = Path(out or config.out)
    # Refused before any work: `--out data/scenarios` once replaced every scenario with a dataset.
    refuse_overlap(out, config.scenarios, "scenarios folder")
    if not in_run_folder:
        check_replaceable(out)
    report = report or check_paths([config.scenarios], registry, config.max_file_bytes)
    _refuse_errors(report, config.scenarios)
    train, validation = split_scenarios(
        report.scenarios, config.validation_fraction, config.seed, held_out_ids(config, report.scenarios)
    )
    splits = {"train": train, "validation": validation}

    conversations: dict[str, list[dict]] = {split: [] for split in SPLITS}
    augmented = 0
    for split in SPLITS:
        for scenario in splits[split]:
            conversations[split].append(to_conversation(scenario, config))
            # Only training scenarios are augmented: a renamed copy of a validation story in the
            # training set would leak it.
            for k in range(1, config.augment_copies + 1) if split == "train" else ():
                copy = rename_scenario(scenario, registry, config.seed, k)
                if copy is not None:
                    conversations[split].append(to_conversation(copy, config, f"{scenario.id}#aug{k}"))
                    augmented += 1
            for k in range(1, config.arms_copies + 1) if split == "train" else ():
                armed = swap_arms(scenario, registry, config.seed, k)
                if armed is not scenario:
                    armed = rename_scenario(armed, registry, config.seed, ARMS_RENAME + k) or armed
                    conversations[split].append(to_conversation(armed, config, f"{scenario.id}#arms{k}"))
                    augmented += 1

    dupes = 0
    if config.dedupe:
        seen: set[str] = set()
        for split in SPLITS:
            kept = []
            for conversation in conversations[split]:
                fp = conversation_fingerprint(conversation)
                if fp in seen:
                    dupes += 1
                    continue
                seen.add(fp)
                kept.append(conversation)
            conversations[split] = kept

    stats = _stats(splits, conversations, augmented, dupes)
    manifest = {
        "dmforge_version": __version__,
        "corpus_fingerprint": corpus_fingerprint(report.scenarios, config),
        "config": json.loads(config.model_dump_json()),
        "splits": {split: [s.id for s in splits[split]] for split in SPLITS},
        "scenarios": {s.id: s.fingerprint for s in report.scenarios},
    }
    with staged_dir(out, replace_unmarked=in_run_folder) as stage:
        for split in SPLITS:
            lines = (json.dumps(c, ensure_ascii=False) for c in conversations[split])
            write_text(stage / f"{split}.jsonl", "".join(line + "\n" for line in lines))
        _write_hf(stage, conversations)
        write_json(stage / "stats.json", stats.to_json())
        write_json(stage / "manifest.json", manifest)
    return stats, out
