"""The root of the `dmforge` command: the app, its consoles, and the options and helpers several groups share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dmforge import __version__, api
from dmforge.config import DmforgeConfig

app = typer.Typer(
    help="Turn Markdown D&D scenarios into an on-device Dungeon Master model for Cactus.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console(soft_wrap=True)  # paths and status lines stay whole in logs and CI output
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="A dmforge config file (YAML or TOML).", show_default=False)
]
BaseOption = Annotated[str | None, typer.Option("--base", help="Base model: a name, a folder, a hub id or a .gguf.")]
RunDirOption = Annotated[Path | None, typer.Option("--run-dir", help="Run folder (resumed if it exists).")]
MaxStepsOption = Annotated[int | None, typer.Option("--max-steps", help="Stop after N optimizer steps.", min=1)]
MaxSeqOption = Annotated[int | None, typer.Option("--max-seq-len", help="Longest sequence in tokens.", min=64)]


def _version(value: bool) -> None:
    if value:
        console.print(f"dmforge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    pass


def _run_config(run: Path | None, config_file: Path | None, overrides: dict | None = None) -> DmforgeConfig:
    return api.run_config(run, config_file, **(overrides or {}))


def _train_overrides(base, run_dir, max_steps, max_seq_len) -> dict:
    return {
        "model": {"base": base},
        "train": {"run_dir": run_dir, "max_steps": max_steps, "max_seq_len": max_seq_len},
    }
