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
from dmforge.evaluation.generate import EvalTurn, GGUFModel, HFModel, perplexity
from dmforge.evaluation.metrics import aggregate, score_turn
from dmforge.evaluation.report import write_reports
from dmforge.files import write_json, write_text
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


def evaluate_run(
    run_dir: Path | None,
    config: DmforgeConfig,
    registry: Registry,
    console: Console,
    scenarios: Path | None = None,
    max_turns: int | None = None,
) -> dict:
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

    models: dict[str, object] = {
        "base": lambda: HFModel(Path(manifest["base"]["path"]), tokenizer, fmt),
        "fine-tuned": lambda: HFModel(run_dir / "merged", tokenizer, fmt),
    }
    export_path = run_dir / "gguf" / "export.json"
    if export_path.is_file():
        export = json.loads(export_path.read_text())
        shipped = Path(export["files"][export["requested"][0]])
        models["gguf"] = lambda: GGUFModel(shipped, n_ctx=(manifest.get("max_seq_len") or 1024) + 256)

    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    details: list[str] = []
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
        for name, load in models.items():
            task = progress.add_task(name, total=len(turns) + 1)
            model = load()
            verdicts = []
            for turn in turns:
                predicted = model.reply(turn.prompt)
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
                    json.dumps(
                        {
                            "model": name,
                            "conversation": turn.conversation,
                            "turn": turn.index,
                            "prompt": turn.prompt,
                            "gold": turn.gold,
                            "prediction": predicted,
                            "verdict": verdict.to_json(),
                        },
                        ensure_ascii=False,
                    )
                )
                progress.advance(task)
            metrics = aggregate(verdicts)
            metrics["perplexity"] = perplexity(model, samples)
            results[name] = metrics
            progress.advance(task)
            last_model = model

    header = Header(
        title="Playtest", world=play.SETTING["world"], location=play.SETTING["location"], party=play.SETTING["party"]
    )
    system = compose_system_prompt(config.data, header, None)
    played = play.playtest(last_model, system, registry)
    label = "gguf" if "gguf" in models else "fine-tuned"
    write_json(out / "playtest.json", played)
    write_text(out / "playtest.md", play.transcript_markdown(f"{label} model", played))
    write_text(out / "details.jsonl", "\n".join(details) + "\n")

    report = {
        "title": f"{manifest['base']['spec']} → {run_dir.name}",
        "source": source,
        "turns": len(turns),
        "models": results,
        "playtest": {"model": label, "calls": played["calls"], "valid_calls": played["valid_calls"]},
    }
    write_reports(out, report)
    return report
