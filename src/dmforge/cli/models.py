"""`dmforge models`: the base models dmforge can fine-tune."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dmforge.cli.root import app, console

models_app = typer.Typer(help="Base models dmforge can fine-tune.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The named base models, where their weights come from, and whether the app's Cactus can run them."""
    from dmforge.models import load_catalog

    catalog = load_catalog()
    if as_json:
        sys.stdout.write(json.dumps({n: p.model_dump() for n, p in catalog.items()}, indent=2) + "\n")
        return
    table = Table(header_style="bold")
    for column in ("name", "source", "params", "license", "Cactus 0.2", "ship as"):
        table.add_column(column, overflow="fold")
    for name, p in catalog.items():
        source = f"hub {p.repo}" if p.source == "hub" else f"PyPI {p.package} (offline)"
        fit = "" if p.takes_k_quants else ", K-quants fall back"
        table.add_row(
            name,
            source,
            f"{p.parameters} {p.architecture}",
            p.license,
            "[green]yes[/]" if p.cactus else "[red]no[/]",
            f"{p.quant}{fit}",
        )
    console.print(table)
    for name, p in catalog.items():
        template = "" if p.template == "embedded" else f" (no chat template of its own; dmforge supplies {p.template})"
        console.print(f"[bold]{name}[/]{template}: {escape(p.quality)}")
    console.print("--base also takes a local Hugging Face folder, a hub id (org/name) or a .gguf file.")
