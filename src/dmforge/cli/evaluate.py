"""`dmforge eval`: scoring the base, fine-tuned and GGUF models on held-out DM turns."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dmforge import api
from dmforge.cli.root import ConfigOption, _run_config, app, console
from dmforge.config import load_config
from dmforge.errors import DmforgeError


def _print_eval(report: dict) -> None:
    from dmforge.evaluation.report import table_rows

    table = Table(
        title=f"evaluation on {report['turns']} held-out DM turns ({report['source']}), through llama.cpp",
        title_justify="left",
        header_style="bold",
    )
    headers, rows = table_rows(report)
    for header in headers:
        table.add_column(escape(header), justify="left" if header == "metric" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for name, label in report["decoding"].items():
        console.print(f"  {escape(name)}: {escape(label)}")
    ship = report["ship"]
    console.print(f"[bold]ships {escape(ship['quant'])}[/]: {escape(ship['reason'])}")
    p = report.get("playtest")
    if p:
        console.print(
            f"playtest ({escape(p['file'])}): {p['dm_replies']} DM replies, {p['calls']} tool calls "
            f"({p['valid_calls']} executed), {p['loops']} loops"
        )


@app.command("eval")
def eval_command(
    run: Annotated[Path | None, typer.Argument(help="The run folder; default: the latest finished run.")] = None,
    scenarios: Annotated[
        Path | None, typer.Option(help="Evaluate on these scenarios instead of the run's validation split.")
    ] = None,
    max_turns: Annotated[int | None, typer.Option(help="DM turns scored per model.", min=1)] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="With --scenarios: the report's folder (default: RUN/eval-<scenarios folder name>)."),
    ] = None,
    diagnostics: Annotated[
        bool,
        typer.Option(
            "--diagnostics", help="Also score every exported file, and the shipped one without grammar and greedy."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json.")] = False,
    config_file: ConfigOption = None,
) -> None:
    """Score base, fine-tuned and GGUF models on held-out DM turns; write report.md/.html/.json and a playtest.

    On other scenarios (--scenarios) the report goes to its own folder; the run's validation report, the file it
    ships and what the deploy gate compares against are left as they were."""
    from dmforge.evaluation.run import latest_run

    if run is None:
        run = latest_run(load_config(config_file).train.runs_root)
    if out is not None and scenarios is None:
        raise DmforgeError("--out is for an evaluation on other --scenarios; the validation report lives in RUN/eval.")
    config = _run_config(run, config_file, {"eval": {"max_turns": max_turns, "diagnostics": diagnostics or None}})
    report = api.evaluate(run, config, console if not as_json else Console(quiet=True), scenarios, out=out)
    if as_json:
        sys.stdout.write(json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
    else:
        _print_eval(report.model_dump(mode="json"))
