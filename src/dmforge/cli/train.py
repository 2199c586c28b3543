"""`dmforge finetune`: training a LoRA adapter on the scenarios."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dmforge import api
from dmforge.cli.root import (
    BaseOption,
    ConfigOption,
    MaxSeqOption,
    MaxStepsOption,
    RunDirOption,
    _train_overrides,
    app,
    console,
)
from dmforge.config import load_config


@app.command("finetune")
def finetune_command(
    base: BaseOption = None,
    scenarios: Annotated[Path | None, typer.Option(help="Folder of scenarios. Default: data/scenarios.")] = None,
    run_dir: RunDirOption = None,
    max_steps: MaxStepsOption = None,
    max_seq_len: MaxSeqOption = None,
    config_file: ConfigOption = None,
) -> None:
    """Fine-tune a base model on the scenarios with LoRA; writes adapter, merged model and metrics."""
    overrides = _train_overrides(base, run_dir, max_steps, max_seq_len)
    overrides["data"] = {"scenarios": scenarios}
    config = load_config(config_file, overrides)
    result = api.train(config, console=console)
    m = result.metrics
    console.print(
        f"[green]Done.[/] {m['steps']} steps, validation loss {_num(m['final_val_loss'])} "
        f"(best {_num(m['best_val_loss'])}). Merged model: {escape(str(result.merged))}"
    )


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"
