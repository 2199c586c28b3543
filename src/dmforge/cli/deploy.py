"""`dmforge deploy`, `rollback` and `versions`: which trained version the app runs, and switching it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dmforge import api
from dmforge.cli.root import ConfigOption, _run_config, app, console
from dmforge.config import load_config
from dmforge.errors import DmforgeError

AppOption = Annotated[Path, typer.Option("--app", help="The React Native app's root folder.")]


@app.command("deploy")
def deploy_command(
    app_dir: AppOption,
    run: Annotated[Path | None, typer.Argument(help="The run folder whose verified GGUF to deploy.")] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Switch the app to this kept version instead (v1, v2, …).")
    ] = None,
    quant: Annotated[
        str | None, typer.Option(help="Deploy this exported file instead of the one the evaluation chose.")
    ] = None,
    config_file: ConfigOption = None,
) -> None:
    """Put a verified model into <app>/assets/models/ with the values for cactus.ts, all-or-nothing.

    `dmforge deploy RUN --app APP` deploys a run (registering it as a version); `dmforge deploy --version v2
    --app APP` switches the app to any version `dmforge versions` lists. The gate of ./train.sh does not apply:
    what you name is deployed.
    """
    if (run is None) == (version is None):
        raise DmforgeError(
            "Name what to deploy: a run folder (`dmforge deploy RUN --app APP`) or a version "
            "(`dmforge deploy --version v2 --app APP`), not both.",
            exit_code=2,
        )
    if run is not None:
        config = _run_config(run, config_file)
        result = api.deploy(run, app_dir, config, quant)
    else:
        result = api.deploy_version(app_dir, version, load_config(config_file))
    _print_deploy(result)


@app.command("rollback")
def rollback_command(app_dir: AppOption, config_file: ConfigOption = None) -> None:
    """Put back the model the app had before the last deploy, byte for byte (its sha256 checked)."""
    result = api.rollback(app_dir, load_config(config_file))
    _print_deploy(result)


@app.command("versions")
def versions_command(
    app_dir: Annotated[
        Path | None, typer.Option("--app", help="Show which version this app has, and the versions it keeps.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the versions as JSON.")] = False,
    config_file: ConfigOption = None,
) -> None:
    """List the trained versions: parent, scenarios, GGUF, headline metrics and deltas, and where each is deployed."""
    from dmforge.deploy import switch
    from dmforge.registry.versions import SHORT, load_versions, version_table

    config = load_config(config_file, {"deploy": {"app": app_dir}})
    book = load_versions(config.train.runs_root)
    deployed = dict(book.deployed)
    app = config.deploy.app
    kept = []
    if app is not None:
        current = switch.current_set(app)
        key = str(Path(app).resolve())
        deployed.pop(key, None)
        if current is not None and current.version:
            deployed[key] = current.version
        kept = [k.name for k in switch.kept_sets(app)]
    rows = version_table(book, deployed)
    if as_json:
        out = {"runs_root": str(config.train.runs_root), "versions": rows}
        if app is not None:
            out["app"] = {"path": str(app), "deployed": deployed.get(str(Path(app).resolve())), "kept": kept}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    if not rows:
        console.print(f"No versions yet in {escape(str(config.train.runs_root))}: ./train.sh registers one per run.")
        return
    from rich import box

    table = Table(
        title=f"versions in {escape(str(config.train.runs_root))}",
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE,
    )
    for column in ("version", "date", "trained", "files", "GGUF", "deployed"):
        table.add_column(column, no_wrap=True)
    keys = ("call_decision_accuracy", "intent_match", "exact_call_match", "call_validity", "loop_rate")
    for key in keys:
        table.add_column(SHORT[key], justify="right", no_wrap=True)
    for row in rows:
        gguf = row["gguf"]
        cells = [
            row["id"],
            row["created"][5:],  # month-day hour:minute
            "full" if row["kind"] == "full" else f"from {row['parent']}",
            str(len(row["scenarios"])),
            f"{gguf['quant']} {gguf['bytes'] / 2**20:.0f} MB",
            escape(", ".join(Path(a).name for a in row["deployed_to"])) or "-",
        ]
        for key in keys:
            value, delta = row["metrics"].get(key), row["deltas"].get(key)
            text = "-" if value is None else f"{value:.3f}"
            if delta is not None:
                text += f" {delta:+.3f}"
            cells.append(text)
        table.add_row(*cells)
    console.print(table)
    console.print("Deltas are against each version's parent. `dmforge deploy --version vN --app APP` switches the app.")
    if app is not None:
        console.print(f"kept in {escape(str(switch.kept_root(app)))}: {escape(', '.join(kept) or 'none')}")


def _print_deploy(result) -> None:
    console.print(
        f"[green]Deployed[/] {escape(result.version or 'the kept model')} to {escape(str(result.model))}"
        + (f" (replacing {escape(result.replaced)})" if result.replaced else "")
    )
    console.print(f"config: {escape(str(result.config_ts))} and {escape(str(result.config_json))}")
    console.print(f"kept, with every earlier model, in {escape(str(result.kept.parent))}")
    for key in ("modelPath", "mmprojPath", "n_ctx", "stop", "jinja", "toolResultRole", "quantization"):
        console.print(f"  {key}: {escape(json.dumps(result.values.get(key)))}")
    if not result.values:
        console.print("  (a model from before dmforge's versions: it came with no values for cactus.ts)")
        return
    shown = {k: v for k, v in result.values["completion"].items() if k not in ("grammar", "dry_sequence_breakers")}
    console.print(f"  completion: {escape(json.dumps(shown))} (and the tool-call grammar)")
