"""Which training recipe makes the best Dungeon Master: train variants, export each, score the GGUF.

    .venv/bin/python bench/quality_sweep.py                      # every variant, default budget
    .venv/bin/python bench/quality_sweep.py --only default,as-written  # some of them
    .venv/bin/python bench/quality_sweep.py --steps 40 --json    # a fixed number of optimizer steps each

Each variant is the default config with a few options changed. It is trained on the sample corpus
(the default training split) for its epochs, `--steps` optimizer steps or `--minutes` of training,
merged, converted to an F16 GGUF, and scored on the held-out split through llama.cpp with the app's
decoding, exactly as `./train.sh` scores a run (and, with `--greedy`, plain greedy decoding beside).
Results accumulate in `runs/sweep/results.json`, so an interrupted sweep resumes with the
variants it has not finished; `runs/sweep/results.md` is the table for docs/model-quality.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tables import CALL_METRICS, cell  # noqa: E402

from dmforge.config import load_config  # noqa: E402
from dmforge.evaluation.columns import Column, perplexity_samples, score_column  # noqa: E402
from dmforge.evaluation.runtime import GREEDY  # noqa: E402
from dmforge.evaluation.turns import eval_turns  # noqa: E402
from dmforge.export.convert import convert_to_gguf  # noqa: E402
from dmforge.files import write_json, write_text  # noqa: E402
from dmforge.tools.grammar import registry_grammar  # noqa: E402
from dmforge.tools.registry import load_registry  # noqa: E402
from dmforge.training.chat import ChatFormat, build_samples  # noqa: E402
from dmforge.training.finetune import finetune  # noqa: E402

# name → (what it tests, config overrides). Every variant starts from the defaults in config.py.
VARIANTS: dict[str, tuple[str, dict]] = {
    "default": ("the defaults as they stand", {}),
    "plain": ("no call weighting", {"train": {"call_loss_weight": 1.0}}),
    "calls-first": ("calls before the narration in training", {"data": {"call_order": "first"}}),
    "as-written": ("calls where the scenario writes them", {"data": {"call_order": "as_written"}}),
    "weight6": ("call tokens weighted 6x", {"train": {"call_loss_weight": 6.0}}),
    "lr5e-4": ("learning rate 5e-4", {"train": {"learning_rate": 5e-4}}),
    "lr2e-3": ("learning rate 2e-3", {"train": {"learning_rate": 2e-3}}),
    "rank64": ("LoRA rank 64 (alpha 128)", {"train": {"lora_r": 64, "lora_alpha": 128}}),
    "epochs4": ("4 epochs", {"train": {"epochs": 4.0}}),
    "augment1": ("one renamed copy of each training scenario", {"data": {"augment_copies": 1}}),
    "neftune5": ("NEFTune noise, alpha 5", {"train": {"neftune_alpha": 5.0}}),
    "loss-all": ("loss on every token, not only the DM's", {"train": {"loss_on": "all"}}),
    "top-half": ("LoRA on the top 15 of 30 layers (faster steps)", {"train": {"lora_layers": 15}}),
    "loss-select": ("adapter chosen by validation loss", {"train": {"select_by": "loss"}}),
}


def _merge(base: dict, extra: dict) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for section, values in extra.items():
        out.setdefault(section, {}).update(values)
    return out


def run_variant(
    name: str,
    overrides: dict,
    minutes: float,
    root: Path,
    console: Console,
    with_greedy: bool = False,
    steps: int | None = None,
) -> dict:
    registry = load_registry()
    run_dir = root / name
    config = load_config(None, _merge(overrides, {"train": {"run_dir": run_dir}}))
    if minutes:  # finetune plans the steps to fit from the preflight's measured speed
        config.train.max_minutes = minutes
    if steps:  # a fixed number of optimizer steps compares recipes whatever else the machine is doing
        config.train.max_steps = steps
    started = time.monotonic()
    result = finetune(config, registry, console)
    train_seconds = time.monotonic() - started
    gguf = convert_to_gguf(run_dir / "merged", run_dir / "gguf" / "sweep-f16.gguf")
    from dmforge.registry.runs import read_manifest

    fmt = ChatFormat(**read_manifest(run_dir).chat_format)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "merged")
    conversations = [json.loads(x) for x in (run_dir / "dataset" / "validation.jsonl").read_text().splitlines()]
    n_ctx, reply = config.train.max_seq_len, config.decode.n_predict
    turns = eval_turns(conversations, fmt, tokenizer, n_ctx, reply)
    samples = perplexity_samples(build_samples(tokenizer, fmt, conversations, n_ctx, reply))
    grammar = registry_grammar(registry, lazy=config.decode.grammar == "lazy")
    app = score_column(Column("F16", "F16", gguf, config.decode, grammar), turns, registry, n_ctx, samples)
    greedy = (
        score_column(Column("F16 greedy", "F16", gguf, GREEDY, None), turns, registry, n_ctx, [])
        if with_greedy
        else {"metrics": {}}
    )
    return {
        "name": name,
        "what": VARIANTS[name][0] if name in VARIANTS else "",
        "overrides": overrides,
        "steps": result.metrics["steps"],
        "best_step": result.metrics["best_step"],
        "train_minutes": round(train_seconds / 60, 1),
        "val_calls": result.metrics.get("val_calls"),
        "app": app["metrics"],
        "greedy": greedy["metrics"],
        "turns": len(turns),
    }


KEYS = [*CALL_METRICS, ("call_f1", "call F1"), ("perplexity", "ppl")]


def table(results: dict[str, dict]) -> str:
    head = "| variant | what | steps (best) | train min | " + " | ".join(label for _, label in KEYS)
    head += " | greedy: decision | greedy: intent | greedy: loops |"
    lines = [head, "|" + "---|" * (4 + len(KEYS) + 3)]
    for name, r in results.items():
        app, greedy = r["app"], r["greedy"]
        cells = [cell(app.get(k)) for k, _ in KEYS]
        cells += [cell(greedy.get(k)) for k in ("call_decision_accuracy", "intent_match", "loop_rate")]
        run = f"| {name} | {r['what']} | {r['steps']} ({r['best_step']}) | {r['train_minutes']} | "
        lines.append(run + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="Comma-separated variant names (default: all).")
    parser.add_argument("--minutes", type=float, default=0, help="Training-time budget per variant (0 = epochs).")
    parser.add_argument("--steps", type=int, default=0, help="Optimizer steps per variant (0 = epochs).")
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "sweep", help="Where the variants' runs go.")
    parser.add_argument("--greedy", action="store_true", help="Also score each variant with plain greedy decoding.")
    parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    console = Console(stderr=True)
    store = args.root / "results.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    for name in names:
        if name in results:
            console.print(f"[cyan]{name}[/]: done already")
            continue
        console.print(f"[bold]{name}[/]: {VARIANTS[name][0]}")
        results[name] = run_variant(
            name, VARIANTS[name][1], args.minutes, args.root, console, args.greedy, args.steps or None
        )
        write_json(store, results)
        write_text(args.root / "results.md", table(results))
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    else:
        sys.stdout.write(table({n: results[n] for n in names if n in results}))


if __name__ == "__main__":
    main()
