"""The one-command pipeline behind `./train.sh`: each stage in order, with a status line per stage.

Stages so far: check the scenarios, then fine-tune (which builds the dataset into the run folder,
runs the preflight, trains, and merges). Evaluation, GGUF export and deployment join this list as
they land; until then the pipeline stops after training and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from dmforge.config import DmforgeConfig
from dmforge.errors import DmforgeError
from dmforge.scenarios import check_paths
from dmforge.tools.registry import Registry

STAGES = ("check", "train")


@dataclass
class PipelineResult:
    run_dir: Path
    merged: Path
    metrics: dict
    seconds: float


def _stage(console: Console, index: int, name: str, detail: str) -> None:
    console.print(f"\n[bold]{index}/{len(STAGES)} {name}[/]  {detail}")


def run_pipeline(config: DmforgeConfig, registry: Registry, console: Console) -> PipelineResult:
    from dmforge.training.finetune import finetune

    started = time.monotonic()
    data = config.data

    _stage(console, 1, "check", f"reading scenarios in {escape(str(data.scenarios))}")
    report = check_paths([data.scenarios], registry, data.max_file_bytes)
    if report.errors:
        raise DmforgeError(
            f"Stage `check` failed: the scenarios have {report.errors} error(s). "
            f"Run `dmforge data check {data.scenarios}` to see each one with its fix, then run ./train.sh again."
        )
    console.print(
        f"  [green]ok[/]: {len(report.scenarios)} scenarios, {report.dm_turns} DM turns, "
        f"{report.tool_calls} tool calls, {report.warnings} warnings"
    )

    _stage(console, 2, "train", f"LoRA fine-tune of {escape(config.model.base)}")
    try:
        result = finetune(config, registry, console)
    except DmforgeError as exc:
        raise DmforgeError(f"Stage `train` failed: {exc}", exc.exit_code) from exc
    m = result.metrics
    seconds = time.monotonic() - started
    console.print(
        f"\n[bold green]Done in {seconds / 60:.1f} min.[/] {m['steps']} steps; validation loss "
        f"{_num(m['final_val_loss'])} (best {_num(m['best_val_loss'])} at step {m['best_step']}).\n"
        f"  run folder:   {escape(str(result.run_dir))}\n"
        f"  merged model: {escape(str(result.merged))}\n"
        f"  loss curve:   {escape(str(result.run_dir / 'loss.png'))}\n"
        "This release stops after training: evaluation, GGUF export and deployment into the app are the next "
        "stages and are not part of it yet."
    )
    return PipelineResult(result.run_dir, result.merged, m, seconds)


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"
