"""The one-command pipeline behind `./train.sh`: each stage in order, with a status line per stage.

Stages: check the scenarios; fine-tune (which builds the dataset into the run folder, runs the
preflight, trains and merges); export to GGUF and verify it in llama.cpp; deploy into the app when
an app folder is given. Evaluation joins this list when it lands.
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

STAGES = ("check", "train", "export", "deploy")


@dataclass
class PipelineResult:
    run_dir: Path
    merged: Path
    metrics: dict
    seconds: float
    gguf: Path | None = None
    deployed: Path | None = None


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
    console.print(
        f"  [green]ok[/]: {m['steps']} steps; validation loss {_num(m['final_val_loss'])} "
        f"(best {_num(m['best_val_loss'])} at step {m['best_step']})"
    )

    from dmforge.export.run import export_run

    _stage(console, 3, "export", f"GGUF {', '.join(config.export.quants)}, verified in llama.cpp")
    exported = export_run(result.run_dir, config.export.quants, config.export.max_size_gb, console)
    if not exported.passed:
        failed = [f"{c['file']} {c['name']}: {c['reason']}" for c in exported.report["checks"] if not c["passed"]]
        raise DmforgeError("Stage `export` failed verification: " + "; ".join(failed))
    shipped = exported.files[config.export.quants[0]]
    for warning in exported.report["warnings"]:
        console.print(f"  [yellow]warning:[/] {escape(warning)}")
    console.print(
        f"  [green]ok[/]: every check passed; {escape(shipped.name)} is {shipped.stat().st_size / 2**20:.0f} MB"
    )

    deployed = None
    if config.deploy.app:
        from dmforge.deploy.app import deploy

        _stage(console, 4, "deploy", f"into {escape(str(config.deploy.app))}")
        done = deploy(result.run_dir, config.deploy.app, data, config.deploy.quant)
        deployed = done.model
        console.print(f"  [green]ok[/]: {escape(str(done.model))}; config in {escape(str(done.config_ts))}")
        console.print(
            f"  modelPath: {done.values['modelPath']!r}, n_ctx: {done.values['n_ctx']}, "
            f"stop: {done.values['stop']!r}, jinja: true"
        )
    else:
        _stage(console, 4, "deploy", "skipped: no app folder given (--app PATH or deploy.app in the config)")

    seconds = time.monotonic() - started
    console.print(
        f"\n[bold green]Done in {seconds / 60:.1f} min.[/]\n"
        f"  run folder:   {escape(str(result.run_dir))}\n"
        f"  model (GGUF): {escape(str(shipped))}\n"
        f"  loss curve:   {escape(str(result.run_dir / 'loss.png'))}\n"
        + (
            f"  in the app:   {escape(str(deployed))}\n"
            if deployed
            else f"  To put it in the app: dmforge deploy --app PATH {escape(str(result.run_dir))}\n"
        )
        + "Evaluation of tool calls and narration is the next stage and is not part of this release yet."
    )
    return PipelineResult(result.run_dir, result.merged, m, seconds, shipped, deployed)


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"
