"""`dmforge export`: turning a run's merged model into verified GGUF files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dmforge import api
from dmforge.cli.root import ConfigOption, app, console
from dmforge.config import load_config


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_export(report: dict) -> None:
    table = Table(title="verification", title_justify="left", header_style="bold")
    for column in ("file", "check", "result", "figures / reason"):
        table.add_column(column, overflow="fold")
    for c in report["checks"]:
        figures = ", ".join(f"{k}={_short(v)}" for k, v in c["figures"].items())
        table.add_row(
            c["file"], c["name"], "[green]pass[/]" if c["passed"] else "[red]FAIL[/]", escape(c["reason"] or figures)
        )
    console.print(table)
    quant_table = Table(title="quantizations", title_justify="left", header_style="bold")
    for column in ("quant", "size", "KL vs F16", "greedy agreement", "fallback tensors"):
        quant_table.add_column(column)
    for row in report["quantizations"]:
        quant_table.add_row(
            row["quant"],
            f"{row['bytes'] / 2**20:.0f} MB",
            _short(row.get("kl_vs_f16", "-")),
            _short(row.get("greedy_agreement", "-")),
            str(row.get("fallback_tensors", "-")),
        )
    console.print(quant_table)
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    if report.get("sample_reply"):
        console.print(
            f"[bold]sample DM reply[/] ({escape(report['sample_reply']['file'])}, llama.cpp, embedded template):"
        )
        console.print(escape(report["sample_reply"]["reply"]))


@app.command("export")
def export_command(
    run: Annotated[Path, typer.Argument(help="The run folder (runs/<id>) with a merged model.")],
    quant: Annotated[
        list[str] | None,
        typer.Option(
            "--quant",
            help="Also write this type (Q6_K, Q5_K_M...); F16, Q8_0, Q4_K_M and every type that fits the model's "
            "widths are always written. Repeatable.",
        ),
    ] = None,
    max_size_gb: Annotated[float | None, typer.Option(help="Size budget per file, in GB.")] = None,
    adapter: Annotated[
        bool,
        typer.Option(
            "--adapter",
            help="Also write the LoRA adapter as a GGUF and check base + adapter against the merged model "
            "(always done with `deploy.mode: adapter`).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verification report as JSON.")] = False,
    config_file: ConfigOption = None,
) -> None:
    """Convert the run's merged model to GGUF, quantize it, and verify every file in llama.cpp."""
    config = load_config(config_file, {"export": {"quants": quant, "max_size_gb": max_size_gb}})
    result = api.export(run, config, None if as_json else console, adapter=adapter)
    if as_json:
        sys.stdout.write(json.dumps(result.model_dump(mode="json"), indent=2, default=str) + "\n")
    else:
        _print_export(result.model_dump(mode="json"))
        verdict = "[green]passed[/]" if result.passed else "[red]FAILED[/]"
        console.print(f"Export {verdict}; files in {escape(str(run / 'gguf'))}")
    raise typer.Exit(0 if result.passed else 1)
