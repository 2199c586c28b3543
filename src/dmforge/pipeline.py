"""The one-command pipeline behind `./train.sh`: nine stages, each resumed when already done.

    check          the scenarios (errors stop here, with the command that lists them)
    build          the validated dataset, split by whole scenario
    preflight      a few real steps, timed, and a memory check before the long run
    train          LoRA fine-tune (resumes from checkpoints), then merge into the base
    export         GGUF through llama.cpp's converter: F16 and every quantization that fits the model
    verify         every file loaded in llama.cpp and checked against transformers
    evaluate       base, fine-tuned and quantized files on held-out DM turns, through llama.cpp as the
                   app runs them; the smallest file that keeps the model's behaviour is chosen to ship
    playtest       the shipped file plays a scripted session, its tool calls executed
    deploy         registered as a version (v1, v2, …); into the app's assets/models with the values
                   for cactus.ts (when an app is given), if it passes the quality gate against the
                   version the app has

The run folder is `runs/<base>`, or the folder in `runs/` that trained on the same scenarios and
options: running ./train.sh again finds each stage's results there and says "done already".
Added or changed scenarios start an incremental run from the latest version (registry/lineage.py);
removed ones, other training options or --from-scratch a full run, in a new folder: runs never mix.
"""

from __future__ import annotations

import errno
import json
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console
from rich.markup import escape

from dmforge.config import DmforgeConfig
from dmforge.dataset import corpus_fingerprint
from dmforge.deploy import switch
from dmforge.errors import DmforgeError
from dmforge.export.ship import forced_quant, shipped, shipped_column
from dmforge.files import newer_than, write_json, write_text
from dmforge.locks import hold_run_folder
from dmforge.registry.gate import GateVerdict, judge
from dmforge.registry.lineage import plan_run
from dmforge.registry.runs import (
    EvalReport,
    ExportReport,
    export_path,
    manifest_path,
    read_export,
    read_identity,
    scenario_hashes,
)
from dmforge.registry.versions import Version, register
from dmforge.scenarios import check_paths
from dmforge.tools.registry import Registry
from dmforge.training.incremental import Lineage

STAGES = ("check", "build", "preflight", "train", "export", "verify", "evaluate", "playtest", "deploy")
# Options a run may resume under (so they are not part of its identity) that still decide how far it
# trains: a finished run asked for more steps or epochs trains on from its checkpoint.
_RUN_LENGTH = ("max_steps", "epochs", "early_stopping_patience")


@dataclass
class PipelineResult:
    run_dir: Path
    gguf: Path
    report: EvalReport
    deployed: dict | None
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    version: Version | None = None
    gated: str | None = None  # the app's version that the quality gate kept in place of this one


@dataclass
class _Progress:
    """Which stage is running, so a failure deep inside names it, and how long each one took."""

    console: Console
    current: str = "check"
    started: float = field(default_factory=time.monotonic)
    seconds: dict[str, float] = field(default_factory=dict)

    def announce(self, stage: str, detail: str) -> None:
        self.finish()
        self.current = stage
        self.console.print(f"\n[bold][{STAGES.index(stage) + 1}/{len(STAGES)}] {stage}[/]  {detail}", soft_wrap=True)

    def finish(self) -> None:
        """Add the time since the current stage started (or was last timed) to its total."""
        now = time.monotonic()
        self.seconds[self.current] = self.seconds.get(self.current, 0.0) + now - self.started
        self.started = now

    def done_already(self, what: str) -> None:
        self.console.print(f"  [cyan]done already[/]: {what}", soft_wrap=True)

    def ok(self, what: str) -> None:
        self.console.print(f"  [green]ok[/]: {what}", soft_wrap=True)


@contextmanager
def _stage_failures(progress: _Progress, log_dir: Path | None) -> Iterator[None]:
    """Any failure leaves as one paragraph naming the stage; an unexpected one keeps its traceback in a file."""
    try:
        yield
    except DmforgeError as exc:
        raise DmforgeError(f"Stage `{progress.current}` failed: {exc}", exc.exit_code) from exc
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise _unexpected(progress.current, exc, log_dir) from exc
        raise DmforgeError(
            f"Stage `{progress.current}` failed: the disk is full ({exc.filename or 'while writing'}). A run needs "
            "about 1 GB for SmolLM2-135M and more for larger bases. Free some space and run ./train.sh again; "
            "the finished stages are kept."
        ) from exc
    except Exception as exc:
        raise _unexpected(progress.current, exc, log_dir) from exc


def _unexpected(stage: str, exc: BaseException, log_dir: Path | None) -> DmforgeError:
    where = "."
    if log_dir is not None:
        log = log_dir / "pipeline-error.txt"
        write_text(log, "".join(traceback.format_exception(exc)))
        where = f"; the full traceback is in {log}. Please attach that file to a bug report."
    return DmforgeError(
        f"Stage `{stage}` failed unexpectedly with {type(exc).__name__}: {exc}{where} "
        "Finished stages are kept: run ./train.sh again to resume from this stage."
    )


def pick_run_dir(config: DmforgeConfig, corpus: str, lineage: Lineage | None = None) -> Path:
    """The configured folder; else the newest run in runs/ with this identity; else runs/<base> (or a fresh one)."""
    from dmforge.training.finetune import base_name, run_identity

    if config.train.run_dir:
        return config.train.run_dir
    name, root = base_name(config), config.train.runs_root
    identity = run_identity(config, corpus, lineage)
    same = [p for p in root.glob(f"{name}*") if _identity(p) == identity]
    if same:
        return max(same, key=lambda p: (p / "identity.json").stat().st_mtime)
    stable = root / name
    return stable if not stable.exists() else root / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _identity(run_dir: Path) -> dict | None:
    """What the run folder trained on, or None for a folder that is not a run or whose identity is damaged."""
    return read_identity(run_dir)


def _trained(run_dir: Path, config: DmforgeConfig, corpus: str, lineage: Lineage | None = None) -> bool:
    """A finished training of these scenarios and options: merged model, metrics written after the run started."""
    from dmforge.training.finetune import run_identity

    saved = run_dir / "config.yaml"
    if not (
        newer_than(run_dir / "metrics.json", run_dir / "identity.json")
        and (run_dir / "merged" / "config.json").is_file()
        and manifest_path(run_dir).is_file()
        and saved.is_file()
    ):
        return False
    if _identity(run_dir) != run_identity(config, corpus, lineage):
        return False
    try:
        trained_for = yaml.safe_load(saved.read_text())["train"]
        return all(trained_for.get(key) == getattr(config.train, key) for key in _RUN_LENGTH)
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return False  # a damaged config.yaml: train again, which rewrites it


def _exported(run_dir: Path, config: DmforgeConfig) -> ExportReport | None:
    if not newer_than(export_path(run_dir), run_dir / "metrics.json"):
        return None
    try:
        export = read_export(run_dir)
    except DmforgeError:  # a damaged record, or one from before file hashes: export again
        return None
    same = export.requested == config.export.quants and export.max_size_gb == config.export.max_size_gb
    files_there = all(Path(f).is_file() for f in export.files.values())
    hashed = set(export.sha256) >= set(export.files)
    adapter_ready = config.deploy.mode != "adapter" or export.adapter is not None
    return export if export.passed and same and files_there and hashed and adapter_ready else None


def _deployed_set(config: DmforgeConfig, run_dir: Path) -> switch.KeptSet | None:
    """The version the app has, when the gate must compare against it (another run's file, same base)."""
    app = config.deploy.app
    if not (app and config.deploy.gate):
        return None
    kept = switch.current_set(app)
    if kept is None or kept.record.get("run_dir") == str(run_dir.resolve()):
        return None
    return kept


def run_pipeline(
    config: DmforgeConfig, registry: Registry, console: Console, from_scratch: bool = False
) -> PipelineResult:
    """The nine stages, each announced, timed and, when its output is already there, reused."""
    progress = _Progress(console)
    checked = _check_stage(progress, config, registry)
    corpus = corpus_fingerprint(checked.scenarios, config.data)
    from dmforge.training.finetune import run_identity

    plan = plan_run(
        config.train.runs_root, run_identity(config, corpus)["config"], scenario_hashes(checked.scenarios), from_scratch
    )
    progress.ok(f"training: {escape(plan.reason)}")
    run_dir = pick_run_dir(config, corpus, plan.lineage)
    config.train.run_dir = run_dir

    with hold_run_folder(run_dir, config.data.scenarios, console), _stage_failures(progress, run_dir / "logs"):
        _train_stage(progress, config, registry, console, run_dir, corpus, plan.lineage)
        export = _export_stage(progress, config, console, run_dir)
        deployed_set = _deployed_set(config, run_dir)
        report, choice = _evaluate_stage(progress, config, registry, console, run_dir, export, deployed_set)
        _playtest_stage(progress, config, registry, run_dir, report, choice)
        version, deployed, verdict = _deploy_stage(progress, config, registry, console, run_dir, report, deployed_set)
        progress.finish()

    seconds = sum(progress.seconds.values())
    gated = verdict.against if verdict is not None and not verdict.passed else None
    result = PipelineResult(run_dir, choice.path, report, deployed, seconds, progress.seconds, version, gated)
    write_json(
        run_dir / "pipeline.json",
        {
            "run_dir": str(run_dir),
            "version": version.id,
            "gguf": str(choice.path),
            "ship": report.ship.model_dump(),
            "deployed": deployed,
            "gate": None if verdict is None else {"passed": verdict.passed, "against": verdict.against},
            "seconds": round(seconds, 1),
            "stage_seconds": {k: round(v, 1) for k, v in progress.seconds.items()},
            "metrics": report.models,
        },
    )
    console.print(summary(result), soft_wrap=True)
    if verdict is not None and not verdict.passed:
        raise DmforgeError(gate_refusal(verdict, version, config.deploy.app), exit_code=3)
    return result


def _check_stage(progress: _Progress, config: DmforgeConfig, registry: Registry):
    data = config.data
    progress.announce("check", f"reading scenarios in {escape(str(data.scenarios))}")
    with _stage_failures(progress, None):
        checked = check_paths([data.scenarios], registry, data.max_file_bytes)
    if checked.errors:
        raise DmforgeError(
            f"Stage `check` failed: the scenarios have {checked.errors} error(s). "
            f"Run `dmforge data check {data.scenarios}` to see each one with its file, line and fix, "
            "then run ./train.sh again."
        )
    progress.ok(
        f"{len(checked.scenarios)} scenarios, {checked.dm_turns} DM turns, {checked.tool_calls} tool calls, "
        f"{checked.warnings} warnings"
    )
    return checked


def _train_stage(progress, config, registry, console, run_dir: Path, corpus: str, lineage: Lineage | None) -> None:
    """build, preflight and train: done already when this folder trained on the same scenarios and options."""
    from dmforge.training.finetune import finetune

    if _trained(run_dir, config, corpus, lineage):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for stage in ("build", "preflight", "train"):
            progress.announce(stage, f"in {escape(str(run_dir))}")
            progress.done_already("this run folder trained on the same scenarios and options")
    else:
        metrics = finetune(config, registry, console, announce=progress.announce, lineage=lineage).metrics
    progress.ok(
        f"{metrics['steps']} steps; validation loss {_num(metrics['final_val_loss'])} "
        f"(best {_num(metrics['best_val_loss'])} at step {metrics['best_step']})"
    )


def _export_stage(progress, config, console, run_dir: Path) -> ExportReport:
    """export and verify: every GGUF file written and checked in llama.cpp, or refused."""
    from dmforge.export.run import export_run

    export = _exported(run_dir, config)
    if export:
        progress.announce("export", "GGUF F16 and every quantization that fits the model")
        progress.done_already(f"the files in {escape(str(run_dir / 'gguf'))} come from this model")
        progress.announce("verify", "every file in llama.cpp")
        progress.done_already("export.json records every check passed")
    else:
        export = export_run(
            run_dir,
            config.export.quants,
            config.export.max_size_gb,
            console,
            announce=progress.announce,
            adapter=config.deploy.mode == "adapter",
        )
        if not export.passed:
            raise DmforgeError(
                "a GGUF file failed verification in llama.cpp: " + "; ".join(export.failed()) + f". The files "
                f"and the full report are in {run_dir / 'gguf'}; the app would misbehave with them, so nothing "
                "was deployed."
            )
    for warning in export.warnings:
        console.print(f"  [yellow]note:[/] {escape(warning)}", soft_wrap=True)
    progress.ok(f"every check passed for {', '.join(export.files)}")
    return export


def _evaluate_stage(progress, config, registry, console, run_dir: Path, export, deployed_set):
    """evaluate: the columns through llama.cpp and the file that ships; (report, ship choice)."""
    from dmforge.evaluation.run import evaluate_run

    limit = config.eval.max_turns
    turns = "every held-out DM turn" if not limit else f"{limit} held-out DM turn{'s' if limit > 1 else ''}"
    progress.announce("evaluate", f"{turns} per file, through llama.cpp as the app runs it")
    compare = {}
    if deployed_set is not None and deployed_set.record.get("base") == _base_spec(run_dir):
        # Scored on these very turns, so the gate compares like with like (a recorded figure may be older).
        compare[_deployed_column(deployed_set)] = deployed_set.folder / switch.MODEL_NAME
    report = evaluate_run(run_dir, config, registry, console, max_turns=config.eval.max_turns, compare=compare)
    choice = shipped(export, report, forced_quant(config))
    if set(report.reused) >= set(report.models):
        progress.done_already("every column was scored on these turns before")
    progress.ok(
        f"{_compare(report, 'base', 'F16')}; ships {choice.quant} "
        f"({choice.path.stat().st_size / 2**20:.0f} MB), {escape(choice.reason)}"
    )
    return report, choice


def _playtest_stage(progress, config, registry, run_dir: Path, report: EvalReport, choice) -> None:
    from dmforge.evaluation.run import run_playtest

    progress.announce("playtest", f"{escape(choice.path.name)} plays a scripted session, its calls executed")
    play = run_playtest(run_dir, config, registry)
    report.playtest = play
    if play["reused"]:
        progress.done_already("the playtest was played with this file and these settings")
    progress.ok(
        f"{play['dm_replies']} DM replies, {play['calls']} tool calls ({play['valid_calls']} executed), "
        f"{play['loops']} loops, {play['windowed_replies']} written with the context window in use; "
        f"{escape(str(run_dir / 'eval' / 'playtest.md'))}"
    )


def _deploy_stage(progress, config, registry, console, run_dir: Path, report: EvalReport, deployed_set):
    """deploy: register the version, and with an app folder put it there unless the gate keeps the old one.

    Returns (version, what was deployed or None, the gate's verdict or None)."""
    deployed = verdict = None
    version = register(config.train.runs_root, run_dir, forced_quant(config), shipped_column(report, config))
    app = config.deploy.app
    progress.announce("deploy", f"into {escape(str(app))}" if app else "registering the version")
    progress.ok(
        f"version {version.id} ({version.kind}"
        + (f" from {version.parent}" if version.parent else "")
        + f") in {escape(str(config.train.runs_root / 'versions.json'))}"
    )
    if not app:
        console.print("  not deployed: no app folder given (--app PATH, or deploy.app in the config)")
        return version, None, None
    from dmforge.deploy.app import deploy

    if deployed_set is not None:
        old = report.models.get(_deployed_column(deployed_set)) or deployed_set.record.get("metrics") or {}
        verdict = judge(
            report.models[shipped_column(report, config)],
            old,
            list(config.deploy.gate_metrics),
            config.deploy.gate_tolerance,
            deployed_set.version or deployed_set.name,
        )
    if verdict is None or verdict.passed:
        done = deploy(run_dir, app, config, registry)
        deployed = done.values | {"path": str(done.model), "config_ts": str(done.config_ts)}
        progress.ok(f"{escape(str(done.model))}; config in {escape(str(done.config_ts))}")
        if verdict is not None:
            console.print(f"  quality gate against {verdict.against}: passed\n{verdict.table()}")
    return version, deployed, verdict


def _base_spec(run_dir: Path) -> str:
    from dmforge.registry.runs import read_manifest

    return read_manifest(run_dir).base.spec


def _deployed_column(kept: switch.KeptSet) -> str:
    return f"deployed {kept.version or kept.name}"


def gate_refusal(verdict: GateVerdict, version: Version, app: Path) -> str:
    worse = [r for r in verdict.rows if not r.passed]
    names = ", ".join(r.metric for r in worse)
    return (
        f"The quality gate stopped {version.id}: it is worse than the app's {verdict.against} on {names} (by more "
        f"than {verdict.tolerance:.2f}, on the same held-out turns), so the app keeps {verdict.against}.\n"
        f"{verdict.table()}\n"
        f"{version.id} is kept as a version. Add or fix scenarios and run ./train.sh again, or deploy it anyway "
        f"with `dmforge deploy --version {version.id} --app {app}`."
    )


def _compare(report: EvalReport, before: str, after: str) -> str:
    models = report.models
    if before not in models or after not in models:
        return f"{report.turns} turns scored"
    parts = []
    for key, label in (("call_decision_accuracy", "call decision"), ("intent_match", "intent match")):
        parts.append(f"{label} {_num(models[before].get(key), 2)} → {_num(models[after].get(key), 2)}")
    return f"{report.turns} turns; {after} vs {before}: " + ", ".join(parts)


HEADLINE = (
    ("call_decision_accuracy", "call decision accuracy"),
    ("intent_match", "intent match"),
    ("exact_call_match", "exact call match"),
    ("call_validity", "call validity"),
    ("loop_rate", "loop rate"),
    ("call_f1", "call F1"),
    ("in_character_rate", "in-character rate"),
    ("perplexity", "perplexity (gold DM turns)"),
)


def summary(result: PipelineResult) -> str:
    """The closing block of ./train.sh: where everything is, the headline metrics, the app's values."""
    report, run_dir = result.report, result.run_dir
    models = report.models
    eval_dir = run_dir / "eval"
    long_stages = ", ".join(f"{name} {s / 60:.1f} min" for name, s in result.stage_seconds.items() if s >= 30)
    lines = [
        f"\n[bold green]Done in {result.seconds / 60:.1f} min[/]" + (f" ({long_stages})." if long_stages else "."),
        f"  run folder      {escape(str(run_dir))}",
        *([f"  version         {result.version.id}"] if result.version else []),
        f"  model (GGUF)    {escape(str(result.gguf))}",
        f"  loss curve      {escape(str(run_dir / 'loss.png'))}",
        f"  evaluation      {escape(str(eval_dir / 'report.html'))} (also report.md, report.json)",
        f"  playtest        {escape(str(eval_dir / 'playtest.md'))}",
    ]
    if result.deployed:
        d = result.deployed
        lines += [
            f"  in the app      {escape(d['path'])}",
            f"  cactus.ts       {escape(d['config_ts'])}",
            f"  modelPath       {escape(repr(d['modelPath']))}   n_ctx {d['n_ctx']}   stop {escape(repr(d['stop']))}",
        ]
    elif result.version is not None and result.deployed is None and result.gated:
        lines.append(f"  not deployed    the quality gate kept {result.gated} in the app (see below)")
    else:
        lines.append("  not deployed    add --app PATH (the app's root folder) to copy it into assets/models")
    names = list(models)
    width = max(12, *(len(n) + 2 for n in names))
    lines.append(
        f"\nHeadline metrics on {report.turns} held-out DM turns, each file in llama.cpp with the app's decoding "
        f"({report.decoding.get(report.ship.quant) or report.decoding.get('F16', '')}); {report.ship.quant} ships:"
    )
    lines.append("  " + f"{'':<28}" + "".join(f"{n:>{width}}" for n in names))
    for key, label in HEADLINE:
        lines.append("  " + f"{label:<28}" + "".join(f"{_num(models[n].get(key), 3):>{width}}" for n in names))
    return "\n".join(lines)


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
