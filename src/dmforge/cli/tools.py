"""`dmforge tools`: finding the tool calls the registry lacks, registering them, and documenting them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dmforge import api
from dmforge.cli.data import _print_check
from dmforge.cli.root import ConfigOption, app, console
from dmforge.config import DmforgeConfig, load_config
from dmforge.errors import DmforgeError
from dmforge.scenarios import check_paths
from dmforge.tools.registry import load_registry

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
