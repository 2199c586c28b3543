"""The `dmforge` command: a thin layer that parses options, calls a pipeline stage, and prints.

Every user-fixable problem arrives here as a `DmforgeError` and leaves as one paragraph on
stderr with a non-zero exit code; Ctrl-C leaves quietly with 130.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from dmforge import __version__, api
from dmforge.config import DmforgeConfig, load_config
from dmforge.errors import DmforgeError
from dmforge.interrupts import Terminated, handle_sigterm
from dmforge.scenarios import CheckReport, Severity, check_paths
from dmforge.tools.registry import load_registry

app = typer.Typer(
    help="Turn Markdown D&D scenarios into an on-device Dungeon Master model for Cactus.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Check scenarios and build the training dataset.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(soft_wrap=True)  # paths and status lines stay whole in logs and CI output
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="A dmforge config file (YAML or TOML).", show_default=False)
]


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


tools_app = typer.Typer(
    help="The tool calls the DM can make: find new ones, register them, document them.", no_args_is_help=True
)
app.add_typer(tools_app, name="tools")
ScenariosOption = Annotated[
    Path | None,
    typer.Option("--scenarios", help="The scenarios folder. Default: the configured one.", show_default=False),
]


def _corpus(config: DmforgeConfig, scenarios: Path | None, registry):
    from dmforge.tools.scan import scan_corpus

    return scan_corpus([scenarios or config.data.scenarios], registry, config.data.max_file_bytes)


def _proposals(corpus, registry) -> dict:
    from dmforge.tools.infer import check_proposal, propose

    found = {}
    for name, uses in corpus.unregistered(registry).items():
        found[name] = proposal = propose(name, uses, registry)
        check_proposal(proposal, uses, registry)
    return found


def _print_proposal(proposal, uses) -> None:
    from dmforge.tools.docs import syntax

    console.print(
        f"[bold]{escape(proposal.name)}[/]: {len(uses)} use(s), not registered. Proposed: "
        f"[cyan]{escape(syntax(proposal.name, proposal.spec))}[/]"
    )
    for slot in proposal.spec.positional:
        console.print(f"  {escape(slot.name)}: {' or '.join(slot.kinds)}{'' if slot.required else ' (optional)'}")
    if proposal.spec.flags:
        console.print(f"  options: {escape(', '.join(proposal.spec.flags))}")
    for key, kw in proposal.spec.keywords.items():
        console.print(f"  {escape(key)}=: {kw.kind}{' (required)' if kw.required else ''}")
    for name, words in proposal.vocabularies.items():
        console.print(f"  new vocabulary {escape(name)}: {escape(', '.join(words))}")
    shown = ", ".join(u.place for u in uses[:5]) + (f" and {len(uses) - 5} more" if len(uses) > 5 else "")
    console.print(f"  used at {escape(shown)}")
    for conflict in proposal.conflicts:
        console.print(f"  [yellow]conflict:[/] {escape(conflict)}")


@tools_app.command("scan")
def tools_scan(
    scenarios: ScenariosOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")] = False,
    config_file: ConfigOption = None,
) -> None:
    """List tools the scenarios call that the registry lacks, with a proposed entry for each, and the uses of
    registered tools that fit no rule. Exit 0 when every call fits the registry, 1 otherwise."""
    config = load_config(config_file)
    registry = api.tool_registry(config)
    corpus = _corpus(config, scenarios, registry)
    proposals = _proposals(corpus, registry)
    misfits = corpus.misfits(registry)
    unregistered = corpus.unregistered(registry)
    if as_json:
        report = {
            "files": corpus.files,
            "calls_by_tool": {name: len(uses) for name, uses in sorted(corpus.uses.items())},
            "unregistered": {
                name: {**proposals[name].to_json(), "places": [u.place for u in uses]}
                for name, uses in unregistered.items()
            },
            "misfits": {
                name: [{"place": u.place, "call": str(u.call), "problems": p} for u, p in bad]
                for name, bad in misfits.items()
            },
        }
        sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        raise typer.Exit(1 if unregistered or misfits else 0)
    for name, uses in unregistered.items():
        _print_proposal(proposals[name], uses)
    for name, bad in misfits.items():
        console.print(f"[bold]{escape(name)}[/]: {len(bad)} use(s) fit no rule of its registry entry")
        for use, problems in bad[:10]:
            console.print(f"  {escape(use.place)} {escape(str(use.call))}: {escape(problems[0])}")
        if len(bad) > 10:
            console.print(f"  and {len(bad) - 10} more (`dmforge data check` lists them all)")
    calls = sum(len(u) for u in corpus.uses.values())
    if unregistered:
        names = " ".join(unregistered)
        console.print(f"Register them with `dmforge tools add {escape(names)}`, then check the entries it writes.")
    console.print(
        f"{corpus.files} files, {calls} tool calls: {len(unregistered)} unregistered tool(s), "
        f"{sum(len(b) for b in misfits.values())} use(s) of registered tools that fit no rule."
    )
    raise typer.Exit(1 if unregistered or misfits else 0)


@tools_app.command("add")
def tools_add(
    names: Annotated[list[str], typer.Argument(help="The tool names to register, as `dmforge tools scan` lists them.")],
    registry_file: Annotated[
        Path | None,
        typer.Option(
            "--registry",
            help="The registry file to write. Default: the config's data.tool_registry, else ./tools.yaml "
            "(a copy of the built-in one).",
            show_default=False,
        ),
    ] = None,
    scenarios: ScenariosOption = None,
    config_file: ConfigOption = None,
) -> None:
    """Write the proposed entries into the project's registry (comments and order kept), point the config at
    it, and check every scenario again against the extended registry."""
    from dmforge.config import PROJECT_CONFIG
    from dmforge.tools.extend import PROJECT_REGISTRY, add_entries, point_config_at

    config = load_config(config_file)
    registry = api.tool_registry(config)
    target = registry_file or config.data.tool_registry or PROJECT_REGISTRY
    corpus = _corpus(config, scenarios, registry)
    proposals = _proposals(corpus, registry)
    unknown = [n for n in names if n not in proposals and n not in registry.tools]
    if unknown:
        found = ", ".join(proposals) or "none"
        raise DmforgeError(
            f"The scenarios never call {', '.join(f'`{n}`' for n in unknown)}, so there is nothing to infer an entry "
            f"from. Unregistered tools they do call: {found}. Write a scenario that uses the tool first, or add the "
            f"entry to {target} by hand.",
            exit_code=2,
        )
    for name in names:
        if name in registry.tools:
            console.print(f"{escape(name)} is already registered; left as it is.")
        else:
            _print_proposal(proposals[name], corpus.uses[name])
    added = add_entries(target, [proposals[n] for n in names if n in proposals])
    if added:
        console.print(
            f"Added {escape(', '.join(added))} to {escape(str(target))}. Replace each `(describe …)` summary."
        )
    if config.data.tool_registry is None or registry_file is not None:
        config_path = config_file or PROJECT_CONFIG
        if point_config_at(config_path, target):
            console.print(f"{escape(str(config_path))} now sets data.tool_registry: {escape(str(target))}.")
    registry = load_registry(target)
    report = check_paths([scenarios or config.data.scenarios], registry, config.data.max_file_bytes)
    _print_check(report)
    if not report.errors:
        console.print("Next: `dmforge tools docs`, then train again (`./train.sh`) so the model learns the new tools.")
    raise typer.Exit(1 if report.errors else 0)


@tools_app.command("docs")
def tools_docs(
    out: Annotated[Path, typer.Option("--out", help="The Markdown file to write.")] = Path("docs/tools.md"),
    scenarios: ScenariosOption = None,
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 when the file is missing or stale.")
    ] = False,
    config_file: ConfigOption = None,
) -> None:
    """Write the supported tools (syntax, arguments, allowed values, examples, training counts) as Markdown."""
    from dmforge.files import write_text
    from dmforge.tools.docs import tools_markdown
    from dmforge.tools.registry import DEFAULT_REGISTRY

    config = load_config(config_file)
    registry = api.tool_registry(config)
    corpus = _corpus(config, scenarios, registry)
    label = f"`{config.data.tool_registry}`" if config.data.tool_registry else DEFAULT_REGISTRY
    text = tools_markdown(registry, corpus, label, (scenarios or config.data.scenarios).as_posix())
    if check:
        current = out.read_text("utf-8") if out.is_file() else None
        if current != text:
            console.print(
                f"{escape(str(out))} is {'missing' if current is None else 'stale'}: run `dmforge tools docs`."
            )
            raise typer.Exit(1)
        console.print(f"{escape(str(out))} is up to date.")
        return
    write_text(out, text)
    console.print(f"Wrote {escape(str(out))} ({len(registry.tools)} tools).")


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


def _train_overrides(base, run_dir, max_steps, max_seq_len) -> dict:
    return {
        "model": {"base": base},
        "train": {"run_dir": run_dir, "max_steps": max_steps, "max_seq_len": max_seq_len},
    }


BaseOption = Annotated[str | None, typer.Option("--base", help="Base model: a name, a folder, a hub id or a .gguf.")]
RunDirOption = Annotated[Path | None, typer.Option("--run-dir", help="Run folder (resumed if it exists).")]
MaxStepsOption = Annotated[int | None, typer.Option("--max-steps", help="Stop after N optimizer steps.", min=1)]
MaxSeqOption = Annotated[int | None, typer.Option("--max-seq-len", help="Longest sequence in tokens.", min=64)]


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


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


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


def main() -> None:
    """Entry point: run the app and turn every failure into one readable paragraph, never a traceback."""
    # transformers draws a bar for every model load and peft prints a deprecation notice per run: noise
    # between dmforge's own progress bars. Hub downloads turn bars back on (models/resolve.py).
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    handle_sigterm()
    try:
        # Without standalone mode Click returns the code given to `typer.Exit` instead of exiting.
        code = app(standalone_mode=False)
    except DmforgeError as exc:
        _print_error(str(exc))
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort) as exc:
        signal_name = "Terminated (SIGTERM)" if isinstance(exc, Terminated) else "Interrupted"
        err_console.print(
            Text.assemble(
                (f"{signal_name}.", "yellow"),
                " Nothing half-written was left behind; run the command again to resume.",
            )
        )
        sys.exit(143 if isinstance(exc, Terminated) else 130)
    except typer.TyperException as exc:  # usage errors: unknown option, missing argument (exit 2)
        exc.show()  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)
    except Exception as exc:
        _print_error(_unexpected(exc))
        sys.exit(70)
    sys.exit(code if isinstance(code, int) else 0)


def _print_error(message: str) -> None:
    # Paths and scenario text are the user's: `[/x]` in a folder name is text, never Rich markup.
    err_console.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)


def _unexpected(exc: BaseException) -> str:
    """A bug in dmforge, not in the user's input: one paragraph, with the traceback kept in a file."""
    import tempfile
    import time
    import traceback

    if isinstance(exc, MemoryError):
        return (
            "dmforge ran out of memory. Close other programs, or lower train.max_seq_len or train.batch_size "
            "in your config, then run the command again; finished work is kept."
        )
    log = Path(tempfile.gettempdir()) / f"dmforge-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    try:
        log.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
        where = f"The full traceback is in {log}; please attach it to a bug report."
    except OSError:
        where = "Run it again with PYTHONFAULTHANDLER=1 to see where it failed, and please report it."
    return (
        f"dmforge failed unexpectedly with {type(exc).__name__}: {exc}. This is a bug in dmforge, not in your "
        f"scenarios or options. {where} Finished work is kept: run the command again to resume."
    )
