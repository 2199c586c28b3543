"""dmforge as a Python library: one function per pipeline stage, called by the `dmforge` command and the notebook.

    import dmforge.api as dm

    config = dm.config("configs/quick.yaml", train={"max_steps": 20})
    report = dm.check(config)                  # scenarios → diagnostics
    stats, folder = dm.build(config)           # the validated dataset
    trained = dm.train(config, on_log=print)   # LoRA fine-tune and merge; on_log gets every logged step
    exported = dm.export(trained.run_dir, config)
    evaluation = dm.evaluate(trained.run_dir, config)
    dm.deploy(trained.run_dir, "../my-game", config)
    # or all of it, as ./train.sh does:
    result = dm.pipeline(config)

Every function takes the validated config object (`dm.config` builds one from a file and overrides), so
what a notebook changes is checked exactly as a config file is. Problems a user can fix raise
`DmforgeError` with a message that says what to do. The functions hold the same locks as the command, so
a notebook and a `./train.sh` never write into one run folder at once.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from dmforge.config import DmforgeConfig, load_config
from dmforge.errors import DmforgeError
from dmforge.tools.registry import Registry, RegistryError, load_registry

__all__ = [
    "DmforgeError",
    "DungeonMaster",
    "build",
    "check",
    "config",
    "deploy",
    "dungeon_master",
    "evaluate",
    "export",
    "hardware",
    "pipeline",
    "playtest",
    "rendered_samples",
    "rollback",
    "tool_registry",
    "train",
    "versions",
]


def _console(console: Console | None) -> Console:
    return console if console is not None else Console()


def config(path: str | Path | None = None, **sections: dict[str, Any]) -> DmforgeConfig:
    """The config from `path` (else ./dmforge.yaml, else the defaults) with `sections` of overrides applied,
    e.g. `config("configs/quick.yaml", train={"max_steps": 10}, data={"scenarios": "my-scenarios"})`."""
    return load_config(Path(path) if path is not None else None, sections or None)


def tool_registry(config: DmforgeConfig) -> Registry:
    """The tool registry the config names (`data.tool_registry`), or the built-in one."""
    try:
        return load_registry(config.data.tool_registry)
    except RegistryError as exc:
        raise DmforgeError(f"{exc}. Fix the file, or remove `data.tool_registry` to use the built-in one.") from exc


def hardware(config: DmforgeConfig):
    """The device, dtype and threads training will use on this machine (models/hardware.py)."""
    from dmforge.models.hardware import detect_hardware

    t = config.train
    return detect_hardware(t.device, t.dtype, t.threads)


def check(config: DmforgeConfig, paths: list[Path] | None = None):
    """Check the scenarios (default: `data.scenarios`): a CheckReport with every diagnostic and the valid scenarios."""
    from dmforge.scenarios import check_paths

    return check_paths(paths or [config.data.scenarios], tool_registry(config), config.data.max_file_bytes)


def audit(config: DmforgeConfig, paths: list[Path] | None = None):
    """Audit the scenarios (default: `data.scenarios`) against the floors and the rulebook: an AuditReport.

    Scenarios with errors are left out of the counts; `dmforge data check` lists them."""
    from dmforge.dataset.audit import audit as audit_corpus

    report = check(config, paths)
    return audit_corpus(report.scenarios, tool_registry(config), config.audit)


def build(config: DmforgeConfig, out: Path | None = None):
    """Build the dataset into `out` (default `data.out`): (DatasetStats, folder)."""
    from dmforge.dataset import build_dataset

    if not config.data.scenarios.is_dir():
        raise DmforgeError(
            f"The scenarios folder {config.data.scenarios} does not exist. Pass --scenarios DIR "
            "or set `data.scenarios` in your config.",
            exit_code=2,
        )
    return build_dataset(config.data, tool_registry(config), out)


def rendered_samples(config: DmforgeConfig, count: int = 2):
    """The first `count` training samples rendered through the base's chat template, each as text pieces marked
    trained (the DM's words) or context; and the chat format found for the base (tool role, end-of-turn token)."""
    from dmforge.training.preview import rendered_samples as render

    return render(config, tool_registry(config), count)


def train(
    config: DmforgeConfig,
    on_log: Callable[[dict], None] | None = None,
    console: Console | None = None,
    announce: Callable[[str, str], None] | None = None,
):
    """Fine-tune (build, preflight, LoRA training, merge) into the config's run folder: a FinetuneResult.

    `on_log(row)` receives every line of logs/train.jsonl as it is written (`{"step", "loss", ...}` and the
    held-out `val_*` rows), e.g. to draw a live loss curve.
    """
    from dmforge.training.finetune import finetune

    return finetune(config, tool_registry(config), _console(console), announce=announce, on_log=on_log)


@contextmanager
def _run_folder(run: Path, console: Console):
    """The lock on an existing run folder, so export and evaluation never write beside a training of the same run."""
    from dmforge.locks import clean_after, folder_lock

    if not run.is_dir():
        raise DmforgeError(
            f"The run folder {run} {'is a file' if run.exists() else 'does not exist'}. Pass a folder in runs/ "
            "that `./train.sh` or `dmforge finetune` made (`ls runs/`).",
            exit_code=2,
        )
    with folder_lock(run, f"The run folder {run}", on_stale=clean_after(run, console)):
        yield


def run_config(run: Path | None, path: Path | None = None, **sections: dict[str, Any]) -> DmforgeConfig:
    """A run's own resolved config (its config.yaml), unless `path` names another: evaluation and deploy then
    use the decoding and data settings the run was trained with."""
    saved = Path(run) / "config.yaml" if run else None
    return load_config(path or (saved if saved and saved.is_file() else None), sections or None)


def export(run: Path, config: DmforgeConfig, console: Console | None = None, adapter: bool = False):
    """GGUF F16 and every quantization that fits, each verified in llama.cpp: an ExportReport."""
    from dmforge.export.run import export_run

    out = _console(console)
    with _run_folder(Path(run), out):
        return export_run(
            Path(run),
            config.export.quants,
            config.export.max_size_gb,
            console,
            adapter=adapter or config.deploy.mode == "adapter",
        )


def evaluate(
    run: Path,
    config: DmforgeConfig,
    console: Console | None = None,
    scenarios: Path | None = None,
    max_turns: int | None = None,
    with_playtest: bool = True,
    out: Path | None = None,
):
    """Score the base, the fine-tuned model and its GGUF files on held-out DM turns (or on `scenarios`, into
    `out`, by default `<run>/eval-<name>`), as the app runs them, then play the scripted session with the file
    that ships: an EvalReport."""
    from dmforge.evaluation.run import evaluate_run, run_playtest

    shown = _console(console)
    registry = tool_registry(config)
    with _run_folder(Path(run), shown):
        turns = max_turns or config.eval.max_turns
        report = evaluate_run(Path(run), config, registry, shown, scenarios, turns, out=out)
        if with_playtest and not scenarios:  # the playtest belongs to the run; other scenarios do not replay it
            report.playtest = run_playtest(Path(run), config, registry)
    return report


def playtest(run: Path, config: DmforgeConfig) -> dict:
    """The scripted session with the file that ships (reused while nothing changed); its summary."""
    from dmforge.evaluation.run import run_playtest

    with _run_folder(Path(run), Console(quiet=True)):
        return run_playtest(Path(run), config, tool_registry(config))


@dataclass
class DungeonMaster:
    """The shipped GGUF in llama.cpp as the app runs it, for a session you type into.

    `say(line)` sends a player's line and returns the DM's turn: its reply, the tool calls it made, their
    results (rolled as the playtest rolls them) and the continuation, each cut to the app's context window.
    """

    runtime: Any
    window: Callable[[list[dict]], list[dict]]
    decode: Any
    grammar: str | None
    registry: Registry
    messages: list[dict]

    def say(self, line: str, max_tool_rounds: int = 3) -> list[dict]:
        import random

        from dmforge.evaluation.playtest import dm_turn

        rng = random.Random(len(self.messages))  # the same session replays with the same dice
        self.messages.append({"role": "user", "content": line})
        first = len(self.messages)
        dm_turn(
            self.runtime, self.messages, self.registry, self.decode, self.grammar, self.window, rng, max_tool_rounds
        )
        return self.messages[first:]


def dungeon_master(run: Path, config: DmforgeConfig, world: str = "", location: str = "", party: str = ""):
    """A DungeonMaster session with the run's shipped file, its system message made from the config's template."""
    from dmforge.contract.chat import ChatFormat
    from dmforge.contract.system import compose_system_prompt
    from dmforge.evaluation.run import app_window
    from dmforge.evaluation.runtime import Runtime
    from dmforge.export.ship import forced_quant, shipped
    from dmforge.registry.runs import read_eval, read_export, read_manifest
    from dmforge.scenarios.model import Header
    from dmforge.tools.grammar import decode_grammar

    run = Path(run)
    manifest = read_manifest(run)
    path = shipped(read_export(run), read_eval(run), forced_quant(config)).path
    n_ctx = manifest.max_seq_len or config.train.max_seq_len
    runtime, decode, registry = Runtime(path, n_ctx), config.decode, tool_registry(config)
    grammar = decode_grammar(registry, decode)
    header = Header(title="Session", world=world, location=location, party=party)
    system = compose_system_prompt(config.data, header, None)
    return DungeonMaster(
        runtime,
        app_window(runtime, ChatFormat(**manifest.chat_format), n_ctx, decode),
        decode,
        grammar,
        registry,
        [{"role": "system", "content": system}],
    )


def deploy(run: Path, app: Path, config: DmforgeConfig, quant: str | None = None):
    """Register the run as a version and switch the app to it, all-or-nothing: a DeployResult."""
    from dmforge.deploy.app import deploy as deploy_run

    return deploy_run(Path(run), Path(app), config, tool_registry(config), quant)


def deploy_version(app: Path, version: str, config: DmforgeConfig):
    """Switch the app to any kept version (`v1`, `v2`, …)."""
    from dmforge.deploy.app import deploy_version as switch_to

    return switch_to(Path(app), version, config, tool_registry(config))


def rollback(app: Path, config: DmforgeConfig):
    """Switch the app back to the set it had before the last deploy, byte for byte."""
    from dmforge.deploy.app import rollback as roll_back

    return roll_back(Path(app), config)


def versions(config: DmforgeConfig):
    """Every trained version in `train.runs_root` (registry/versions.py's VersionBook)."""
    from dmforge.registry.versions import load_versions

    return load_versions(config.train.runs_root)


def pipeline(config: DmforgeConfig, from_scratch: bool = False, console: Console | None = None):
    """The whole pipeline, as ./train.sh runs it, resuming finished stages: a PipelineResult."""
    from dmforge.pipeline import run_pipeline

    return run_pipeline(config, tool_registry(config), _console(console), from_scratch=from_scratch)
