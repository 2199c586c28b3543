"""`dmforge eval RUN`: score the base, the fine-tuned model and its quantizations on held-out DM turns.

Every column goes through llama.cpp of the app's vintage, prompted and sampled the way Cactus runs
it (evaluation/runtime.py): the base from its own F16 GGUF (converted once per base and cached),
the fine-tuned model from its F16 export, and the quantized files. They are decoded with the app's
settings (`decode` in the config: samplers, repetition penalty, the tool-call grammar); the file that
ships is also scored with plain greedy decoding beside them. Which file ships is decided here, by
the rule in export/ship.py, from the files' measured intent match.

Writes `<run>/eval/`: report.json, report.md, report.html with metrics.png, turns.jsonl (every scored
turn's prompt and gold reply), details.jsonl (one line per column and turn: prediction, verdict),
the columns in models/, and the playtest transcript.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dmforge.config import DmforgeConfig
from dmforge.contract.chat import ChatFormat, Sample, build_samples, prompt_budget, template_messages
from dmforge.contract.system import compose_system_prompt
from dmforge.contract.window import window_start
from dmforge.dataset.conversation import to_conversation
from dmforge.errors import DmforgeError
from dmforge.evaluation import playtest as play
from dmforge.evaluation.columns import (
    Column,
    cached,
    opening_metrics,
    perplexity_samples,
    save_column,
    score_column,
)
from dmforge.evaluation.report import write_reports
from dmforge.evaluation.runtime import GREEDY, Runtime
from dmforge.evaluation.turns import EvalTurn, eval_turns
from dmforge.export.ship import ADAPTER_COLUMN, by_size, forced_quant, measured_choice, shipped, shortfalls
from dmforge.files import newer_than, read_json_or_none, write_json, write_text
from dmforge.registry.runs import (
    EvalReport,
    ExportReport,
    RunManifest,
    ShipRecord,
    export_path,
    manifest_path,
    read_eval,
    read_export,
    read_manifest,
    write_eval,
)
from dmforge.scenarios import check_paths
from dmforge.scenarios.model import Header
from dmforge.tools.grammar import decode_grammar
from dmforge.tools.registry import Registry


def latest_run(runs_root: Path) -> Path:
    runs = sorted((p for p in runs_root.glob("*") if manifest_path(p).is_file()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise DmforgeError(
            f"No finished run in {runs_root}. Train one with ./train.sh, or pass the run folder.", exit_code=2
        )
    return runs[-1]


def _held_out(run_dir: Path, config: DmforgeConfig, registry: Registry, scenarios: Path | None):
    if scenarios:
        report = check_paths([scenarios], registry, config.data.max_file_bytes)
        if report.errors:
            raise DmforgeError(f"{scenarios} has {report.errors} error(s); run `dmforge data check {scenarios}`.")
        return [to_conversation(s, config.data) for s in report.scenarios], str(scenarios)
    lines = (run_dir / "dataset" / "validation.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines], "the validation split"


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]eval[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


@dataclass
class EvalSetup:
    """Everything scoring a run needs: its files, its chat format and the held-out turns with their prompts."""

    run_dir: Path
    manifest: RunManifest
    export: ExportReport
    fmt: ChatFormat
    n_ctx: int
    source: str
    turns: list[EvalTurn]
    samples: list[Sample]  # for perplexity

    @property
    def files(self) -> dict[str, Path]:
        return {q: Path(p) for q, p in self.export.files.items()}


def load_setup(
    run_dir: Path | None,
    config: DmforgeConfig,
    registry: Registry,
    scenarios: Path | None = None,
    max_turns: int | None = None,
    n_ctx: int | None = None,
) -> EvalSetup:
    """The run's files and the turns to score; `n_ctx` (default: the trained context) sets the prompts' window."""
    from transformers import AutoTokenizer

    run_dir = run_dir or latest_run(config.train.runs_root)
    manifest = read_manifest(run_dir)
    if not export_path(run_dir).is_file():
        raise DmforgeError(
            f"{run_dir} has no GGUF files yet, and every column is scored through llama.cpp as the app runs it. "
            f"Run `dmforge export {run_dir}` first.",
            exit_code=2,
        )
    export = read_export(run_dir)
    fmt = ChatFormat(**manifest.chat_format)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "merged")
    n_ctx = n_ctx or manifest.max_seq_len or config.train.max_seq_len
    reply = config.decode.n_predict
    conversations, source = _held_out(run_dir, config, registry, scenarios)
    if not conversations:
        raise DmforgeError("There are no held-out scenarios to evaluate on. Pass --scenarios DIR.", exit_code=2)
    turns = eval_turns(conversations, fmt, tokenizer, n_ctx, reply, max_turns or config.eval.max_turns)
    scored = {t.conversation for t in turns}
    samples = perplexity_samples(
        build_samples(tokenizer, fmt, [c for c in conversations if c["id"] in scored], n_ctx, reply)
    )
    return EvalSetup(run_dir, manifest, export, fmt, n_ctx, source, turns, samples)


def evaluate_run(
    run_dir: Path | None,
    config: DmforgeConfig,
    registry: Registry,
    console: Console,
    scenarios: Path | None = None,
    max_turns: int | None = None,
    reuse: bool = True,
    compare: dict[str, Path] | None = None,
    out: Path | None = None,
) -> EvalReport:
    """Score the columns and choose the file that ships; returns report.json's content.

    `compare` adds columns for other GGUF files of the same base (name → file), scored on the same
    turns with the same decoding: the quality gate measures the app's deployed version this way.

    On other `scenarios` the report goes to its own folder (`out`, by default `<run>/eval-<folder name>`):
    the run's validation report, the file that ships and what the gate compares against stay as they
    were, so only the base, F16 and the file the run ships (when it was evaluated) are scored.
    """
    setup = load_setup(run_dir, config, registry, scenarios, max_turns)
    run_dir, turns, n_ctx, decode = setup.run_dir, setup.turns, setup.n_ctx, config.decode
    validation = scenarios is None
    out = out or (run_dir / "eval" if validation else run_dir / f"eval-{_folder_name(scenarios)}")
    if validation and out != run_dir / "eval":
        raise DmforgeError("The validation report always lives in <run>/eval; --out is for other --scenarios.")
    columns: dict[str, dict] = {}
    reused: list[str] = []
    progress = _progress(console)
    run = _column_runner(setup, registry, out, reuse, progress, columns, reused)
    with progress:
        ship = _score_columns(run, columns, setup, config, registry, validation, compare or {})

    report = EvalReport(
        title=f"{setup.manifest.base.spec} → {run_dir.name}",
        run_dir=str(run_dir),
        source=setup.source,
        turns=len(turns),
        windowed_turns=sum(t.windowed for t in turns),
        n_ctx=n_ctx,
        models={name: c["metrics"] for name, c in columns.items()},
        decoding={name: c["decoding"] for name, c in columns.items()},
        ship=ship,
        reused=reused,
        turns_digest=turns_digest(turns, n_ctx, decode),
    )
    write_text(
        out / "turns.jsonl",
        "".join(
            json.dumps({"conversation": t.conversation, "turn": t.index, "prompt": t.prompt, "gold": t.gold}) + "\n"
            for t in turns
        ),
    )
    write_text(
        out / "details.jsonl",
        "".join(json.dumps(d, ensure_ascii=False) + "\n" for c in columns.values() for d in c["details"]),
    )
    if validation:
        write_eval(run_dir, report)
    else:
        write_json(out / "report.json", report.model_dump(mode="json"))
    write_reports(out, report.model_dump(mode="json"))
    return report


def _column_runner(setup: EvalSetup, registry, out: Path, reuse: bool, progress, columns: dict, reused: list):
    """`run(column, perplexity=True)`: a column's result, from its cache when its key holds, else scored.

    The base's columns are also cached outside the run (every run of the same base shares them)."""
    turns, source, n_ctx, samples = setup.turns, setup.source, setup.n_ctx, setup.samples

    def run(column: Column, perplexity: bool = True) -> dict:
        key = column.key(turns, source, n_ctx)
        # A file's screen and its whole column are kept apart: F16 can need both in one evaluation.
        store = out / "models" / f"{column.name.replace(' ', '-')}{'-screen' if column.opening_only else ''}.json"
        result = cached(store, key, column.path) if reuse else None
        if result is None and column.model == "base":
            result = cached(_base_cache(column.path, key), key, column.path) if reuse else None
            if result is not None:
                write_json(store, result)
        if result is not None:
            reused.append(column.name)
        else:
            task = progress.add_task(f"{column.name} ({column.label})", total=len(turns))
            result = score_column(
                column, turns, registry, n_ctx, samples if perplexity else [], on_reply=lambda: progress.advance(task)
            )
            result = save_column(store, key, result)
            if column.model == "base":
                write_json(_base_cache(column.path, key), result)
        columns[column.name] = result
        return result

    return run


def _score_columns(run, columns: dict, setup: EvalSetup, config: DmforgeConfig, registry, validation, compare):
    """The base, F16, the adapter and quantized files as the ship rule needs them, and the diagnostics; the ship
    record (the run's own when these are other scenarios)."""
    from dmforge.export.convert import base_gguf

    decode, files, export = config.decode, setup.files, setup.export
    grammar = decode_grammar(registry, decode)
    # The base and F16 are references, so by default they are screened: what ships is scored whole.
    screens = config.eval.screens and not config.eval.diagnostics
    run(Column("base", "base", base_gguf(Path(setup.manifest.base.path)), decode, grammar, opening_only=screens))
    f16 = run(Column("F16", "F16", files["F16"], decode, grammar, opening_only=screens))
    if config.deploy.mode == "adapter" and export.adapter is not None:
        # What the app runs in adapter mode: the base's F16 GGUF with the LoRA GGUF applied at load.
        base, lora = Path(export.adapter.base_file), Path(export.adapter.file)
        run(Column(ADAPTER_COLUMN, "adapter", base, decode, grammar, adapter=lora))
    if validation:
        ship = _choose_and_score_quants(run, files, f16, decode, grammar, config, export, setup.turns, registry)
    else:  # the run's own choice stands: these scenarios score it, they do not re-decide it
        ship = _existing_ship(setup.run_dir)
        if ship.quant in files and (ship.quant != "F16" or screens):  # what ships is scored on whole replies
            run(Column(ship.quant, ship.quant, files[ship.quant], decode, grammar))
    if config.eval.diagnostics:
        name = ship.quant if ship.quant in columns else "F16"
        perplexity = columns[name]["metrics"]["perplexity"]
        free = Column(f"{name} no grammar", name, files[name], decode, None)
        if decode.grammar != "off" and free.label != "greedy":  # the grammar's own effect, samplers unchanged
            run(free, False)["metrics"]["perplexity"] = perplexity
        run(Column(f"{name} greedy", name, files[name], GREEDY, None), False)["metrics"]["perplexity"] = perplexity
    for name, path in compare.items():
        run(Column(name, name, path, decode, grammar), False)
    return ship


def _folder_name(scenarios: Path) -> str:
    """`eval-<name>`'s name: the scenarios folder's (or file's) name, safe as a folder name."""
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in scenarios.resolve().name.removesuffix(".md"))
    return name.strip("-.") or "scenarios"


def _existing_ship(run_dir: Path) -> ShipRecord:
    """The run's own ship decision, from its validation report; F16 when it was never evaluated."""
    report = read_eval(run_dir)
    if report is not None:
        return report.ship
    return ShipRecord(quant="F16", reason="the run has no validation report yet, so F16 is scored")


def turns_digest(turns: list[EvalTurn], n_ctx: int, decode) -> str:
    """What two evaluations must share for their metrics to be compared as they are: turns, window, decoding."""
    import hashlib

    payload = [[t.prompt, t.gold] for t in turns], n_ctx, decode.model_dump(mode="json")
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _base_cache(base_file: Path, key: dict) -> Path:
    import hashlib

    from dmforge.models.resolve import cache_root

    digest = hashlib.sha256(json.dumps([str(base_file), key], sort_keys=True).encode()).hexdigest()[:20]
    return cache_root() / "eval" / f"base-{digest}.json"


def _choose_and_score_quants(
    run, files, f16_column: dict, decode, grammar, config: DmforgeConfig, export, turns, registry
) -> ShipRecord:
    """Score the quantized files smallest first on whole replies and apply the shipping rule; the record.

    Scoring stops at the first file that meets the rule (unless `eval.diagnostics`): a larger file
    cannot change the choice, and each column costs minutes on a laptop. A file whose KL divergence
    from F16 is already above `export.max_kl` cannot ship, so it is not scored either.

    While F16 was screened (`eval.screens`), a file's whole replies are compared with it cut the same
    way (`opening_metrics`), which is faithful while the file writes its calls before its narration.
    A file that calls after its narration has begun makes the cut lose something, so F16 is then
    scored whole and every comparison from there on is on whole replies. What ships is always scored
    on whole replies: F16 too, when nothing smaller keeps its behaviour.
    """
    whole_f16 = Column("F16", "F16", files["F16"], decode, grammar)
    screened = bool(f16_column.get("key", {}).get("opening_only"))
    metrics: dict[str, dict] = {"F16": f16_column["metrics"]}  # each file's own figures, as scored
    compared: dict[str, dict] = {"F16": f16_column["metrics"]}  # what the rule compares, cut alike
    rows = {row["quant"]: row for row in export.quantizations}
    kls = {q: rows.get(q, {}).get("kl_vs_f16") for q in files}
    max_drop, max_kl = config.export.max_metric_drop, config.export.max_kl
    forced = forced_quant(config)
    if forced and forced not in files:
        shipped(export, None, forced)  # raises, naming the types the run has
    sizes = {q: str(p) for q, p in files.items()}
    exhaustive = bool(forced) or config.eval.diagnostics
    for quant in [q for q in by_size(sizes) if q != "F16"]:
        if forced and quant != forced and not config.eval.diagnostics:
            continue
        if not exhaustive and kls.get(quant) is not None and kls[quant] > max_kl:
            continue
        column = run(Column(quant, quant, files[quant], decode, grammar))
        metrics[quant] = compared[quant] = column["metrics"]
        if screened:
            openings, faithful = opening_metrics(column, turns, registry)
            if faithful:
                compared[quant] = openings
            else:
                metrics["F16"] = run(whole_f16)["metrics"]
                screened = False
                compared = dict(metrics)
        if not exhaustive and not shortfalls(compared[quant], compared["F16"], kls[quant], max_drop, max_kl):
            break
    if forced:
        quant, reason = forced, f"{forced} was asked for (`deploy.quant`, `export.ship` or --quant)"
    else:
        quant, reason = measured_choice(sizes, compared, kls, max_drop, max_kl)
    if quant == "F16" and screened:
        metrics["F16"] = run(whole_f16)["metrics"]
        screened = False
    table = [_candidate_row(q, files, rows, kls, metrics, compared, screened, max_drop, max_kl) for q in by_size(sizes)]
    return ShipRecord(quant=quant, reason=reason, max_metric_drop=max_drop, max_kl=max_kl, candidates=table)


def _candidate_row(q, files, rows, kls, metrics, compared, screened, max_drop, max_kl) -> dict:
    """One file's line in the ship record: its own figures, and what the rule found against F16's."""
    m, against = metrics.get(q, {}), compared.get(q)
    delta = (
        None
        if against is None or against.get("intent_match") is None or compared["F16"].get("intent_match") is None
        else against["intent_match"] - compared["F16"]["intent_match"]
    )
    return {
        "quant": q,
        "bytes": files[q].stat().st_size,
        "fallback_share": rows.get(q, {}).get("fallback_share"),
        "kl_vs_f16": kls.get(q),
        "intent_match": m.get("intent_match"),
        "call_decision_accuracy": m.get("call_decision_accuracy"),
        "call_validity": m.get("call_validity"),
        "intent_delta_vs_f16": delta,
        "evaluated": q in metrics,
        # compared with F16 on the calls each reply opens with, F16 having been screened
        "screened": screened and q in metrics,
        "shortfalls": shortfalls(against, compared["F16"], kls.get(q), max_drop, max_kl)
        if against and q != "F16"
        else [],
    }


def app_window(runtime: Runtime, fmt: ChatFormat, n_ctx: int, decode) -> Callable[[list[dict]], list[dict]]:
    """What the app sends of a history: mapped for the template and cut to the context window for `n_ctx`."""
    budget = prompt_budget(fmt, n_ctx, decode.n_predict)

    def window(messages: list[dict]) -> list[dict]:
        chat = template_messages(messages, fmt)
        costs = [runtime.count(m["content"]) + fmt.framing.get(m["role"], 0) for m in chat]
        return [chat[0], *chat[window_start([m["role"] for m in messages], costs, budget) :]]

    return window


def play_session(runtime: Runtime, fmt: ChatFormat, n_ctx: int, config: DmforgeConfig, registry, decode, grammar):
    """The scripted playtest with `runtime`, each prompt cut to the app's context window for `n_ctx`."""
    system = compose_system_prompt(config.data, Header(title="Playtest", **play.SETTING), None)
    return play.playtest(runtime, system, registry, decode, grammar, window=app_window(runtime, fmt, n_ctx, decode))


def run_playtest(run_dir: Path, config: DmforgeConfig, registry: Registry, reuse: bool = True) -> dict:
    """The scripted session with the file that ships, reused while that file and the settings are unchanged.

    Adds its summary to report.json and returns it.
    """
    manifest = read_manifest(run_dir)
    report = read_eval(run_dir)
    path = shipped(read_export(run_dir), report, forced_quant(config)).path
    fmt = ChatFormat(**manifest.chat_format)
    n_ctx = manifest.max_seq_len or config.train.max_seq_len
    decode = config.decode
    saved = run_dir / "eval" / "playtest.json"
    settings = {"file": path.name, "decode": decode.model_dump(), "n_ctx": n_ctx, "script": play.SCRIPT}
    played = read_json_or_none(saved) if reuse and newer_than(saved, path) else None
    reused = played is not None and played.get("settings") == settings
    if not reused:
        grammar = decode_grammar(registry, decode)
        played = play_session(Runtime(path, n_ctx), fmt, n_ctx, config, registry, decode, grammar)
        played["settings"] = settings
        write_json(saved, played)
        write_text(run_dir / "eval" / "playtest.md", play.transcript_markdown(path.name, played))
    summary = _playtest_summary(played, reused)
    if report is not None:
        report.playtest = summary
        write_eval(run_dir, report)
        write_reports(run_dir / "eval", report.model_dump(mode="json"))
    return summary


def _playtest_summary(played: dict, reused: bool) -> dict:
    return {
        "file": played["settings"]["file"],
        "calls": played["calls"],
        "valid_calls": played["valid_calls"],
        "dm_replies": played["dm_replies"],
        "loops": played["loops"],
        "windowed_replies": played["windowed_replies"],
        "reused": reused,
    }
