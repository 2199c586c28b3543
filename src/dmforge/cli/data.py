"""`dmforge data`: checking, auditing, building and previewing the scenarios that become the training set."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dmforge import api
from dmforge.cli.root import BaseOption, ConfigOption, MaxSeqOption, _train_overrides, app, console
from dmforge.config import load_config
from dmforge.scenarios import CheckReport, Severity

data_app = typer.Typer(help="Check scenarios and build the training dataset.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _print_check(report: CheckReport) -> None:
    by_file: dict[str, list] = {}
    for d in report.diagnostics:
        by_file.setdefault(d.file, []).append(d)
    for file, diags in by_file.items():
        table = Table(title=escape(file), title_justify="left", header_style="bold", expand=True)
        table.add_column("line", justify="right", no_wrap=True)
        table.add_column("severity", no_wrap=True)
        table.add_column("code", no_wrap=True)
        table.add_column("problem, and how to fix it", overflow="fold", ratio=1)
        for d in diags:
            colour = "red" if d.severity is Severity.ERROR else "yellow"
            table.add_row(
                str(d.line),
                f"[{colour}]{d.severity.value}[/]",
                d.code,
                f"{escape(d.message)}\n[dim]{escape(d.hint)}[/]",
            )
        console.print(table)
    for name, places in report.unknown_tools().items():
        console.print(
            f"[red]unknown tool[/] [bold]{escape(name)}[/] at {len(places)} place(s): {escape(', '.join(places))}. "
            "Fix the name, or register the tool (`dmforge tools scan`, then `dmforge tools add NAME`)."
        )
    verdict = "[red]errors found[/]" if report.errors else "[green]ok[/]"
    calls = ", ".join(f"{name} {n}" for name, n in report.calls_by_tool().items()) or "none"
    console.print(
        f"{verdict}: {report.files} files, {len(report.scenarios)} scenarios, {report.dm_turns} DM turns, "
        f"{report.tool_calls} tool calls ({calls}); "
        f"[red]{report.errors} errors[/], [yellow]{report.warnings} warnings[/]"
    )


@data_app.command("check")
def data_check(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Scenario files or folders. Default: the configured scenarios folder.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts and CI.")] = False,
    config_file: ConfigOption = None,
) -> None:
    """Validate scenarios: exit 0 when there are no errors (warnings allowed), 1 when there are."""
    config = load_config(config_file)
    report = api.check(config, paths)
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        _print_check(report)
    raise typer.Exit(1 if report.errors else 0)


@data_app.command("audit")
def data_audit(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Scenario files or folders. Default: the configured scenarios folder.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts and CI.")] = False,
    png: Annotated[Path | None, typer.Option("--png", help="Also draw the coverage chart into this PNG file.")] = None,
    rulebook: Annotated[
        Path | None, typer.Option("--rulebook", help="The DM rulebook (default: audit.rulebook, docs/dm-rules.md).")
    ] = None,
    config_file: ConfigOption = None,
) -> None:
    """Audit the corpus: calls per tool, skill, save and condition against floors, quiet turns per category, the
    same action answered with different checks, and near-duplicate lines. Exit 1 when any of it fails."""
    config = load_config(config_file, {"audit": {"rulebook": rulebook}})
    report = api.audit(config, paths)
    if png:
        from dmforge.dataset.audit import coverage_png

        coverage_png(png, report)
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        _print_audit(report)
    raise typer.Exit(0 if report.passed else 1)


def _print_audit(report) -> None:
    data = report.to_json()
    console.print(
        f"[bold]{data['scenarios']}[/] scenarios, {data['dm_turns']} DM turns, "
        f"{data['quiet_share']:.0%} without a call"
        + "".join(f"; {c} {row['quiet_share']:.0%}" for c, row in data["quiet_share_per_category"].items())
    )
    for kind, names in data["coverage"].items():
        if not names:
            continue
        floor = data["floors"].get(kind, 0)
        table = Table(title=f"{kind} calls" + (f" (floor {floor})" if floor else ""), title_justify="left")
        for column in ("name", "calls", "scenarios"):
            table.add_column(column)
        for name, tally in sorted(names.items(), key=lambda kv: kv[1]["calls"]):
            low = floor and tally["calls"] < floor
            table.add_row(name, f"[red]{tally['calls']}[/]" if low else str(tally["calls"]), str(tally["scenarios"]))
        console.print(table)
    for conflict in report.conflicts:
        expected = " or ".join(conflict["expected"])
        console.print(
            f"[yellow]cue conflict:[/] `I {escape(conflict['verb'])} …` is answered with {escape(expected)} "
            f"elsewhere ({', '.join(f'{c} {n}' for c, n in conflict['checks'].items())}), but here with:"
        )
        for place in conflict["places"][:8]:
            console.print(f"  {escape(place['file'])}:{place['line']} → {place['check']}: {escape(place['text'])}")
    for dup in report.duplicates[:20]:
        console.print(
            f"[yellow]near duplicate[/] ({dup['kind']}, {dup['similarity']:.2f}): "
            f"{escape(dup['a']['file'])}:{dup['a']['line']} and {escape(dup['b']['file'])}:{dup['b']['line']}"
        )
    below = report.below_floor()
    verdict = "[green]passes[/]" if report.passed else "[red]fails[/]"
    console.print(
        f"audit {verdict}: {len(below)} below their floor, {len(report.conflicts)} cue conflict(s), "
        f"{len(report.duplicates)} near duplicate(s)"
    )


def _print_stats(stats, out: Path) -> None:
    table = Table(title="dataset", title_justify="left", header_style="bold")
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row("scenarios", f"{stats.scenarios['train']} train, {stats.scenarios['validation']} validation")
    table.add_row(
        "conversations",
        f"{stats.conversations['train']} train ({stats.augmented} augmented copies), "
        f"{stats.conversations['validation']} validation",
    )
    table.add_row("turns", f"{stats.user_turns} user, {stats.dm_turns} DM")
    table.add_row("DM turns without calls", str(stats.dm_turns_without_calls))
    table.add_row("tool calls", str(stats.tool_calls))
    table.add_row("calls per tool", ", ".join(f"{k} {v}" for k, v in stats.calls_per_tool.items()))
    table.add_row("calls per category", ", ".join(f"{k} {v}" for k, v in stats.calls_per_category.items()))
    table.add_row(
        "scenarios per category",
        ", ".join(f"{k} {v['train']}+{v['validation']}" for k, v in stats.scenarios_per_category.items()),
    )
    table.add_row("duplicates removed", str(stats.duplicates_removed))
    console.print(table)
    console.print(f"[green]Dataset written to[/] {escape(str(out))} (train.jsonl, validation.jsonl, hf/, stats.json)")


@data_app.command("build")
def data_build(
    scenarios: Annotated[Path | None, typer.Option(help="Folder of scenarios. Default: data/scenarios.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder. Default: data/dataset.")] = None,
    augment: Annotated[
        int | None, typer.Option(help="Renamed copies of each training scenario (0 = none).", min=0)
    ] = None,
    arms: Annotated[
        int | None,
        typer.Option(
            help="Copies of each training scenario in which a weapon hits, with other weapons of their kind and "
            "their damage dice (0 = none).",
            min=0,
        ),
    ] = None,
    validation_fraction: Annotated[float | None, typer.Option(help="Share held out per category.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for the split and augmentation.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the stats as JSON.")] = False,
    config_file: ConfigOption = None,
) -> None:
    """Build the training dataset (JSONL and a Hugging Face DatasetDict) and print its stats."""
    overrides = {
        "scenarios": scenarios,
        "out": out,
        "augment_copies": augment,
        "arms_copies": arms,
        "validation_fraction": validation_fraction,
        "seed": seed,
    }
    config = load_config(config_file, {"data": overrides})
    with console.status("Building the dataset…"):
        stats, path = api.build(config)
    if as_json:
        sys.stdout.write(json.dumps({"out": str(path), **stats.to_json()}, indent=2) + "\n")
    else:
        _print_stats(stats, path)


@data_app.command("preview")
def data_preview(
    base: BaseOption = None,
    count: Annotated[int, typer.Option("--count", "-n", help="How many samples to show.", min=1)] = 2,
    scenarios: Annotated[Path | None, typer.Option(help="Folder of scenarios. Default: data/scenarios.")] = None,
    max_seq_len: MaxSeqOption = None,
    config_file: ConfigOption = None,
) -> None:
    """Show samples as the model is trained on them: the chat template's text, trained spans highlighted."""
    from dmforge.training.preview import preview

    overrides = _train_overrides(base, None, None, max_seq_len)
    overrides["data"] = {"scenarios": scenarios}
    config = load_config(config_file, overrides)
    preview(config, api.tool_registry(config), console, count)
