"""The one-command pipeline behind `./train.sh`: each stage in order, with a status line per stage.

Stages so far: check the scenarios, build the dataset. Training, evaluation, GGUF export and
deployment join this list as they land; until then the pipeline stops after the data stage
and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from dmforge.config import DmforgeConfig
from dmforge.dataset import build_dataset
from dmforge.errors import DmforgeError
from dmforge.scenarios import check_paths
from dmforge.tools.registry import Registry


@dataclass
class PipelineResult:
    dataset: Path
    seconds: float


def run_pipeline(config: DmforgeConfig, registry: Registry, console: Console) -> PipelineResult:
    started = time.monotonic()
    data = config.data

    console.print(f"[bold]1/2 check[/]  reading scenarios in {escape(str(data.scenarios))}")
    report = check_paths([data.scenarios], registry, data.max_file_bytes)
    if report.errors:
        raise DmforgeError(
            f"Stage `check` failed: the scenarios have {report.errors} error(s). "
            f"Run `dmforge data check {data.scenarios}` to see each one with its fix, then run ./train.sh again."
        )
    console.print(
        f"           [green]ok[/]: {len(report.scenarios)} scenarios, {report.dm_turns} DM turns, "
        f"{report.tool_calls} tool calls, {report.warnings} warnings"
    )

    console.print(f"[bold]2/2 build[/]  writing the dataset to {escape(str(data.out))}")
    with console.status("building the dataset…"):
        stats, out = build_dataset(data, registry)
    console.print(
        f"           [green]ok[/]: {stats.conversations['train']} training and "
        f"{stats.conversations['validation']} validation conversations"
    )
    seconds = time.monotonic() - started
    console.print(
        f"\n[bold]Done in {seconds:.1f} s.[/] The dataset is in {escape(str(out))}. "
        "This release stops after the data stage: LoRA training, evaluation, GGUF export and deployment "
        "into the app are the next stages and are not part of it yet."
    )
    return PipelineResult(dataset=out, seconds=seconds)
