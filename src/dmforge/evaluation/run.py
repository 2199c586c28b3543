"""`dmforge eval RUN`: score base, fine-tuned and GGUF on held-out DM turns, and play a session.

Writes `<run>/eval/`: report.json, report.md, report.html with metrics.png, details.jsonl (one line
per model and turn: prompt, gold, prediction, verdict) and the playtest transcript.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dmforge.config import DmforgeConfig, compose_system_prompt
from dmforge.dataset.conversation import to_conversation
from dmforge.errors import DmforgeError
from dmforge.evaluation import playtest as play
from dmforge.evaluation.generate import EvalTurn, GGUFModel, HFModel, perplexity, reply_budget
from dmforge.evaluation.metrics import aggregate, score_turn
from dmforge.evaluation.report import write_reports
from dmforge.files import newer_than, write_json, write_text
from dmforge.scenarios import check_paths
from dmforge.scenarios.model import Header
from dmforge.tools.registry import Registry
from dmforge.training.chat import ChatFormat, build_samples, template_messages


def eval_turns(conversations: list[dict], fmt: ChatFormat, max_turns: int | None) -> list[EvalTurn]:
    """Every DM turn with its prompt; with `max_turns`, taken round-robin so every story contributes."""
    per_conversation: list[list[EvalTurn]] = []
    for c in conversations:
        chat = template_messages(c["messages"], fmt)
        turns = []
        for i, m in enumerate(c["messages"]):
            if m["role"] != "assistant":
                continue
            previous = c["messages"][i - 1]
            turns.append(
                EvalTurn(
                    c["id"],
                    i,
                    chat[:i],
                    m["content"],
                    previous["content"] if previous["role"] == "tool" else None,
                    c.get("party", []),
                    c.get("location", ""),
                )
            )
        per_conversation.append(turns)
    chosen: list[EvalTurn] = []
    depth = 0
    while any(depth < len(t) for t in per_conversation) and (max_turns is None or len(chosen) < max_turns):
        for turns in per_conversation:
            if depth < len(turns) and (max_turns is None or len(chosen) < max_turns):
                chosen.append(turns[depth])
        depth += 1
    return chosen


def _latest_run(runs_root: Path) -> Path:
    runs = sorted((p for p in runs_root.glob("*") if (p / "manifest.json").is_file()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise DmforgeError(
            f"No finished run in {runs_root}. Train one with ./train.sh, or pass the run folder.", exit_code=2
        )
    return runs[-1]


MODEL_NAMES = ("base", "fine-tuned", "gguf")


def _model_source(run_dir: Path, name: str) -> Path:
    """The file whose change makes a model's cached column stale."""
    return {"base": run_dir / "manifest.json", "fine-tuned": run_dir / "metrics.json"}.get(
        name, run_dir / "gguf" / "export.json"
    )


def _cached_column(path: Path, key: dict, source: Path) -> dict | None:
    """A model's column from an earlier evaluation, when it scored the same turns of the same model."""
    if not newer_than(path, source):
        return None
    column = json.loads(path.read_text())
    return column if column.get("key") == key else None


def evaluate_run(
    run_dir: Path | None,
    config: DmforgeConfig,
    registry: Registry,
    console: Console,
    scenarios: Path | None = None,
    max_turns: int | None = None,
    models: tuple[str, ...] = MODEL_NAMES,
    reuse: bool = False,
    playtest: bool = True,
) -> dict:
    """Score `models` on held-out DM turns and write the reports; returns report.json's content.

    Each model's column is kept in `eval/models/<name>.json`. With `reuse`, a column that scored the
    same turns of an unchanged model is read back instead of generated again: this is how
    ./train.sh scores base and fine-tuned before export and adds the GGUF column after it.
    """
    from transformers import AutoTokenizer

    run_dir = run_dir or _latest_run(config.train.runs_root)
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise DmforgeError(f"{run_dir} is not a finished run (no manifest.json). Train it first.", exit_code=2)
    manifest = json.loads(manifest_path.read_text())
    fmt = ChatFormat(**manifest["chat_format"])
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "merged")

    if scenarios:
        report = check_paths([scenarios], registry, config.data.max_file_bytes)
        if report.errors:
            raise DmforgeError(f"{scenarios} has {report.errors} error(s); run `dmforge data check {scenarios}`.")
        conversations = [to_conversation(s, config.data) for s in report.scenarios]
        source = str(scenarios)
    else:
        lines = (run_dir / "dataset" / "validation.jsonl").read_text().splitlines()
        conversations = [json.loads(line) for line in lines]
        source = "the validation split"
    if not conversations:
        raise DmforgeError("There are no held-out scenarios to evaluate on. Pass --scenarios DIR.", exit_code=2)
    turns = eval_turns(conversations, fmt, max_turns)
    # Perplexity over the stories the scored turns come from: the whole split would cost minutes per model.
    scored = {t.conversation for t in turns}
    samples = build_samples(
        tokenizer,
        fmt,
        [c for c in conversations if c["id"] in scored],
        manifest.get("max_seq_len") or config.train.max_seq_len,
    )

    loaders: dict[str, object] = {
        "base": lambda: HFModel(Path(manifest["base"]["path"]), tokenizer, fmt),
        "fine-tuned": lambda: HFModel(run_dir / "merged", tokenizer, fmt),
    }
    export_path = run_dir / "gguf" / "export.json"
    if export_path.is_file():
        export = json.loads(export_path.read_text())
        shipped = Path(export["files"][export["requested"][0]])
        loaders["gguf"] = lambda: GGUFModel(shipped, n_ctx=(manifest.get("max_seq_len") or 1024) + 256)
    elif "gguf" in models and models != MODEL_NAMES:
        raise DmforgeError(f"{run_dir} has no GGUF yet. Run `dmforge export {run_dir}` first.", exit_code=2)
    names = [n for n in MODEL_NAMES if n in models and n in loaders]

    out = run_dir / "eval"
    key = {"source": source, "turns": [[t.conversation, t.index] for t in turns]}
    columns: dict[str, dict] = {}
    reused: list[str] = []
    if reuse:
        for name in names:
            column = _cached_column(out / "models" / f"{name}.json", key, _model_source(run_dir, name))
            if column:
                columns[name] = column
                reused.append(name)

    last_model = None
    progress = Progress(
        TextColumn("[bold]eval[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )
    with progress:
        for name in (n for n in names if n not in columns):
            task = progress.add_task(name, total=len(turns) + 1)
            model = loaders[name]()
            verdicts, details = [], []
            for turn in turns:
                budget = reply_budget(len(tokenizer(turn.gold, add_special_tokens=False)["input_ids"]))
                predicted = model.reply(turn.prompt, max_tokens=budget)
                verdict = score_turn(
                    predicted,
                    turn.gold,
                    registry,
                    tool_results=turn.tool_results,
                    party=turn.party,
                    location=turn.location,
                )
                verdicts.append(verdict)
                details.append(
                    {
                        "model": name,
                        "conversation": turn.conversation,
                        "turn": turn.index,
                        "prompt": turn.prompt,
                        "gold": turn.gold,
                        "prediction": predicted,
                        "verdict": verdict.to_json(),
                    }
                )
                progress.advance(task)
            metrics = aggregate(verdicts)
            metrics["perplexity"] = perplexity(model, samples)
            progress.advance(task)
            columns[name] = {"key": key, "metrics": metrics, "details": details}
            write_json(out / "models" / f"{name}.json", columns[name])
            last_model = model

    report = {
        "title": f"{manifest['base']['spec']} → {run_dir.name}",
        "source": source,
        "turns": len(turns),
        "models": {name: columns[name]["metrics"] for name in names},
        "reused": reused,
    }
    if playtest:
        # The playtest plays the file the app will load when there is one.
        label = names[-1]
        saved = out / "playtest.json"
        played = json.loads(saved.read_text()) if reuse and label in reused and saved.is_file() else None
        if played is None or played.get("model") != label or not newer_than(saved, _model_source(run_dir, label)):
            header = Header(
                title="Playtest",
                world=play.SETTING["world"],
                location=play.SETTING["location"],
                party=play.SETTING["party"],
            )
            model = loaders[label]() if label in reused else last_model  # scored just above otherwise
            played = play.playtest(model, compose_system_prompt(config.data, header, None), registry)
            played["model"] = label
            write_json(saved, played)
            write_text(out / "playtest.md", play.transcript_markdown(f"{label} model", played))
            was_reused = False
        else:
            was_reused = True
        report["playtest"] = {
            "model": label,
            "calls": played["calls"],
            "valid_calls": played["valid_calls"],
            "reused": was_reused,
        }
    lines = [json.dumps(d, ensure_ascii=False) for name in names for d in columns[name]["details"]]
    write_text(out / "details.jsonl", "\n".join(lines) + "\n")
    write_reports(out, report)
    return report
