"""`dmforge pipeline`: every stage in order, as ./train.sh runs them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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


@app.command("pipeline")
def pipeline(
    base: BaseOption = None,
    scenarios: Annotated[Path | None, typer.Option(help="Folder of scenarios. Default: data/scenarios.")] = None,
    run_dir: RunDirOption = None,
    max_steps: MaxStepsOption = None,
    max_seq_len: MaxSeqOption = None,
    app_dir: Annotated[Path | None, typer.Option("--app", help="Deploy into this React Native app folder.")] = None,
    quant: Annotated[
        str | None,
        typer.Option(
            "--quant", help="Ship this GGUF type instead of the measured choice (the smallest that keeps F16's calls)."
        ),
    ] = None,
    from_scratch: Annotated[
        bool,
        typer.Option(
            "--from-scratch", help="Train a full run even when the scenarios only grew since the latest version."
        ),
    ] = False,
    config_file: ConfigOption = None,
) -> None:
    """Run the whole pipeline (what ./train.sh runs), resuming finished stages.

    check → build → preflight → train → export → verify → evaluate → playtest → deploy
    """
    overrides = _train_overrides(base, run_dir, max_steps, max_seq_len)
    overrides["data"] = {"scenarios": scenarios}
    overrides["deploy"] = {"app": app_dir}
    if quant:
        overrides["deploy"]["quant"] = quant.upper()
    config = load_config(config_file, overrides)
    api.pipeline(config, from_scratch=from_scratch, console=console)
