"""Which training recipe makes the best Dungeon Master: train variants for equal minutes, score the best GGUFs.

    .venv/bin/python bench/quality_sweep.py --minutes 20 --only default,arg10   # equal training minutes
    .venv/bin/python bench/quality_sweep.py --minutes 20 --score-top 2          # llama.cpp for the best two
    .venv/bin/python bench/quality_sweep.py --steps 40 --json                   # a fixed number of steps each

Each variant is the default config with a few options changed. It is trained on `--scenarios` (the
sample corpus by default; keep one folder fixed while comparing recipes) for `--minutes` of training
(`train.max_minutes`: the schedule is planned from the preflight's measured speed to end inside the
budget), `--steps` optimizer steps, or its epochs. Every variant is ranked by its held-out call metrics
scored teacher-forced during training (cheap: one forward pass over every validation turn); the best
`--score-top` of them are merged, converted to an F16 GGUF and scored on every held-out turn through
llama.cpp with the app's decoding, exactly as `./train.sh` scores a run (with `--greedy`, plain greedy
beside). Results accumulate in `<root>/results.json`, so an interrupted sweep resumes with what it has
not finished; `<root>/results.md` is the table for docs/model-quality.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tables import cell  # noqa: E402

from dmforge.config import load_config  # noqa: E402
from dmforge.contract.chat import ChatFormat, build_samples  # noqa: E402
from dmforge.evaluation.columns import Column, perplexity_samples, score_column  # noqa: E402
from dmforge.evaluation.runtime import GREEDY  # noqa: E402
from dmforge.evaluation.turns import eval_turns  # noqa: E402
from dmforge.export.convert import convert_to_gguf  # noqa: E402
from dmforge.files import write_json, write_text  # noqa: E402
from dmforge.tools.grammar import decode_grammar  # noqa: E402
from dmforge.tools.registry import load_registry  # noqa: E402
from dmforge.training.finetune import finetune  # noqa: E402

# name → (what it tests, config overrides). Every variant starts from the defaults in config.py.
VARIANTS: dict[str, tuple[str, dict]] = {
    "default": ("the defaults as they stand", {}),
    # The rows of docs/model-quality.md name their recipe in full, so each lever's variant pins the others.
    "all-layers": (
        "LoRA on every layer, argument tokens 3x (the defaults before round 2)",
        {"train": {"lora_layers": "100%", "argument_loss_weight": 3.0, "learning_rate": 1e-3}},
    ),
    "arg10": (
        "every layer, argument tokens weighted 10x (calls 3x)",
        {"train": {"lora_layers": "100%", "argument_loss_weight": 10.0, "learning_rate": 1e-3}},
    ),
    "arg10-sqrt": (
        "every layer, argument tokens 10x, balanced by 1/sqrt of the intent's count",
        {"train": {"lora_layers": "100%", "argument_loss_weight": 10.0, "call_balance": "sqrt", "learning_rate": 1e-3}},
    ),
    "top8": (
        "LoRA on the top 8 of 30 layers, frozen layers cached, argument tokens 3x",
        {"train": {"lora_layers": 8, "argument_loss_weight": 3.0, "learning_rate": 1e-3}},
    ),
    "top8-arg10": (
        "top 8 layers cached, argument tokens 10x",
        {"train": {"lora_layers": 8, "argument_loss_weight": 10.0, "learning_rate": 1e-3}},
    ),
    "top8-arg10-sqrt": (
        "top 8 layers cached, argument tokens 10x balanced by 1/sqrt of the intent's count",
        {"train": {"lora_layers": 8, "argument_loss_weight": 10.0, "call_balance": "sqrt", "learning_rate": 1e-3}},
    ),
    "top15": (
        "LoRA on the top 15 of 30 layers, frozen layers cached, argument tokens 3x",
        {"train": {"lora_layers": 15, "argument_loss_weight": 3.0, "learning_rate": 1e-3}},
    ),
    "top15-arg10": (
        "top 15 layers cached, argument tokens 10x, learning rate 1e-3 (the default of rounds 2 and 3)",
        {"train": {"lora_layers": 15, "argument_loss_weight": 10.0, "learning_rate": 1e-3}},
    ),
    "top15-arg10-lr3e-3": (
        "top 15 layers cached, argument tokens 10x, learning rate 3e-3 (the default since round 4)",
        {"train": {"lora_layers": 15, "argument_loss_weight": 10.0, "learning_rate": 3e-3}},
    ),
    "top15-arg10-decision20": (
        "top 15 layers cached, argument tokens 10x, each turn's first token (call or not) 20x",
        {
            "train": {
                "lora_layers": 15,
                "argument_loss_weight": 10.0,
                "decision_loss_weight": 20.0,
                "learning_rate": 1e-3,
            }
        },
    ),
    "top15-arg10-lr3e-3-decision10": (
        "top 15 layers cached, argument tokens 10x, learning rate 3e-3, each turn's first token (call or not) 10x",
        {
            "train": {
                "lora_layers": 15,
                "argument_loss_weight": 10.0,
                "learning_rate": 3e-3,
                "decision_loss_weight": 10.0,
            }
        },
    ),
    "top15-arg10-lr5e-3": (
        "top 15 layers cached, argument tokens 10x, learning rate 5e-3",
        {"train": {"lora_layers": 15, "argument_loss_weight": 10.0, "learning_rate": 5e-3}},
    ),
    "top15-arg10-lr7e-3": (
        "top 15 layers cached, argument tokens 10x, learning rate 7e-3",
        {"train": {"lora_layers": 15, "argument_loss_weight": 10.0, "learning_rate": 7e-3}},
    ),
    "calls-x3": (
        "call tokens 9x and argument tokens 30x (the default's 3x and 10x, tripled), narration still 1 (round 12, at "
        "the default's 363 steps: screened decision 0.820, intent 0.385, exact 0.304, tool 0.783 against 0.825, "
        "0.406, 0.303, 0.861, so the default's weights stay)",
        {"train": {"call_loss_weight": 9.0, "argument_loss_weight": 30.0}},
    ),
    "arms2": (
        "two extra copies of each training scene in which a weapon of the SRD table hits, each with other weapons "
        "of their kind and every hit's damage dice rewritten by the table (data.arms_copies 2; round 12, at the "
        "default's 363 steps: screened decision 0.807, intent 0.379, exact 0.291 against 0.825, 0.406, 0.303)",
        {"data": {"arms_copies": 2}},
    ),
    "top15-arg10-lr5e-3-decision10": (
        "top 15 layers cached, argument tokens 10x, learning rate 5e-3, each turn's first token (call or not) 10x",
        {
            "train": {
                "lora_layers": 15,
                "argument_loss_weight": 10.0,
                "learning_rate": 5e-3,
                "decision_loss_weight": 10.0,
            }
        },
    ),
    "top15-arg10-lr3e-3-decision20": (
        "top 15 layers cached, argument tokens 10x, learning rate 3e-3, each turn's first token (call or not) 20x",
        {
            "train": {
                "lora_layers": 15,
                "argument_loss_weight": 10.0,
                "learning_rate": 3e-3,
                "decision_loss_weight": 20.0,
            }
        },
    ),
    "top15-arg10-lr5e-3-quiet10": (
        "top 15 layers cached, argument tokens 10x, learning rate 5e-3, the opening of a quiet turn after a player 10x",
        {
            "train": {
                "lora_layers": 15,
                "argument_loss_weight": 10.0,
                "learning_rate": 5e-3,
                "quiet_opening_loss_weight": 10.0,
            }
        },
    ),
    "one-sample-steps": (
        "one sample per optimizer step instead of four, learning rate 2.5e-3 (halved, for the noisier steps); "
        "validation every 200 steps and warmup 20, the default's in samples",
        {"train": {"grad_accum": 1, "learning_rate": 2.5e-3, "eval_every": 200, "warmup_steps": 20}},
    ),
    "full-top15": (
        "the top 15 layers' own weights trained (method full, float32 master weights), learning rate 2e-4, "
        "instead of LoRA on them",
        {"train": {"method": "full", "learning_rate": 2e-4}},
    ),
    "gemma3-270m": (
        "the default recipe on Gemma 3 270M (a base model; its top 9 of 18 layers adapted, the 50% default)",
        {"model": {"base": "gemma3-270m"}},
    ),
    "top20-arg10": (
        "top 20 layers cached, argument tokens 10x",
        {"train": {"lora_layers": 20, "argument_loss_weight": 10.0, "learning_rate": 1e-3}},
    ),
    "weight20": ("every call token weighted 20x", {"train": {"call_loss_weight": 20.0, "argument_loss_weight": 20.0}}),
    "plain": ("no call weighting", {"train": {"call_loss_weight": 1.0}}),
    "calls-first": ("calls before the narration in training", {"data": {"call_order": "first"}}),
    "as-written": ("calls where the scenario writes them", {"data": {"call_order": "as_written"}}),
    "weight6": ("call tokens weighted 6x", {"train": {"call_loss_weight": 6.0}}),
    "lr5e-4": ("learning rate 5e-4", {"train": {"learning_rate": 5e-4}}),
    "lr1e-3": ("learning rate 1e-3", {"train": {"learning_rate": 1e-3}}),
    "lr2e-3": ("learning rate 2e-3", {"train": {"learning_rate": 2e-3}}),
    "rank64": ("LoRA rank 64 (alpha 128)", {"train": {"lora_r": 64, "lora_alpha": 128}}),
    "epochs4": ("4 epochs", {"train": {"epochs": 4.0}}),
    "augment1": ("one renamed copy of each training scenario", {"data": {"augment_copies": 1}}),
    "neftune5": ("NEFTune noise, alpha 5", {"train": {"neftune_alpha": 5.0}}),
    "loss-all": ("loss on every token, not only the DM's", {"train": {"loss_on": "all"}}),
    "loss-select": ("adapter chosen by validation loss", {"train": {"select_by": "loss"}}),
}


def _merge(base: dict, extra: dict) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for section, values in extra.items():
        out.setdefault(section, {}).update(values)
    return out


def train_variant(
    name: str,
    overrides: dict,
    minutes: float,
    steps: int | None,
    data: dict,
    root: Path,
    console,
) -> dict:
    """Train one variant and read its held-out teacher-forced call metrics at the adapter that ships.

    `data` overrides the corpus options every variant shares (`scenarios`, `validation_list`)."""
    registry = load_registry()
    extra = {"train": {"run_dir": root / name}, "data": data}
    config = load_config(None, _merge(overrides, extra))
    if minutes:  # finetune plans the steps to fit from the preflight's measured speed
        config.train.max_minutes = minutes
    if steps:  # a fixed number of optimizer steps compares recipes whatever else the machine is doing,
        # so no time budget may cut it short (the CPU's `auto` budget would, on a busy machine)
        config.train.max_steps = steps
        config.train.max_minutes = minutes or None
    result = finetune(config, registry, console)
    m = result.metrics
    best = next((calls for step, calls in m["val_calls"] if step == m["best_step"]), {})
    return {
        "name": name,
        "what": VARIANTS[name][0] if name in VARIANTS else "",
        "overrides": overrides,
        "steps": m["steps"],
        "best_step": m["best_step"],
        "train_minutes": round(m["train_seconds"] / 60, 1),
        "val_calls": m["val_calls"],
        "teacher_forced": best,
        "app": {},
        "greedy": {},
    }


def score_variant(row: dict, root: Path, with_greedy: bool, screen: bool = False) -> dict:
    """Export the variant's merged model to an F16 GGUF and score it on every held-out turn with the app's decoding.

    With `screen`, each reply is generated only up to its first line of narration: the call decision,
    intent, exact match and validity of whole replies (the model writes its calls first) in about half
    the time, without loop rate or perplexity."""
    from transformers import AutoTokenizer

    from dmforge.registry.runs import read_manifest

    run_dir = root / row["name"]
    registry = load_registry()
    config = load_config(run_dir / "config.yaml")
    gguf = convert_to_gguf(run_dir / "merged", run_dir / "gguf" / "sweep-f16.gguf")
    fmt = ChatFormat(**read_manifest(run_dir).chat_format)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "merged")
    conversations = [json.loads(x) for x in (run_dir / "dataset" / "validation.jsonl").read_text().splitlines()]
    n_ctx, reply = config.train.max_seq_len, config.decode.n_predict
    turns = eval_turns(conversations, fmt, tokenizer, n_ctx, reply)
    samples = [] if screen else perplexity_samples(build_samples(tokenizer, fmt, conversations, n_ctx, reply))
    grammar = decode_grammar(registry, config.decode)
    column = Column("F16", "F16", gguf, config.decode, grammar, opening_only=screen)
    app = score_column(column, turns, registry, n_ctx, samples)
    write_json(run_dir / "sweep-details.json", app["details"])
    row["app"] = app["metrics"]
    row["screened"] = screen
    row["turns"] = len(turns)
    if with_greedy:
        row["greedy"] = score_column(Column("F16 greedy", "F16", gguf, GREEDY, None), turns, registry, n_ctx, [])[
            "metrics"
        ]
    return row


def teacher_forced_score(row: dict) -> float:
    return (row.get("teacher_forced") or {}).get("call_score") or 0.0


TEACHER = [
    ("decision", "tf decision"),
    ("intent", "tf intent"),
    ("exact", "tf exact"),
    ("opening_after_player", "tf opening after a player"),
    ("opening_after_tool", "tf opening after a result"),
]
GENERATED = [
    ("call_decision_accuracy", "decision"),
    ("intent_match", "intent"),
    ("exact_call_match", "exact"),
    ("tool_accuracy", "tool acc"),
    ("argument_accuracy", "arg acc"),
    ("call_validity", "validity"),
    ("loop_rate", "loops"),
]


def table(results: dict[str, dict]) -> str:
    labels = [label for _, label in TEACHER] + ["tf roll intent"] + [label for _, label in GENERATED]
    head = "| variant | what | train min | steps (best) | " + " | ".join(labels) + " |"
    lines = [head, "|" + "---|" * (4 + len(labels))]
    ranked = sorted(results.values(), key=teacher_forced_score, reverse=True)
    for r in ranked:
        cells = [cell(r["teacher_forced"].get(k)) for k, _ in TEACHER]
        cells.append(cell((r["teacher_forced"].get("intent_per_tool") or {}).get("roll")))
        cells += [cell(r["app"].get(k)) if r["app"] else "not scored" for k, _ in GENERATED]
        lines.append(
            f"| {r['name']} | {r['what']} | {r['train_minutes']} | {r['steps']} ({r['best_step']}) | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="Comma-separated variant names (default: all).")
    parser.add_argument("--minutes", type=float, default=0, help="Training minutes per variant (0 = epochs).")
    parser.add_argument("--steps", type=int, default=0, help="Optimizer steps per variant (0 = epochs).")
    parser.add_argument("--scenarios", type=Path, help="The corpus every variant trains on (default: the config's).")
    parser.add_argument(
        "--validation-list",
        type=Path,
        default=ROOT / "bench" / "sweep-validation.txt",
        help="The held-out scenarios every variant is scored on, fixed while the corpus grows (data.validation_list); "
        "'none' for the seeded split.",
    )
    parser.add_argument(
        "--score-top",
        type=int,
        default=2,
        help="Score this many variants (best by teacher-forced call score) in llama.cpp; 0 = all.",
    )
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "sweep", help="Where the variants' runs go.")
    parser.add_argument("--greedy", action="store_true", help="Also score each variant with plain greedy decoding.")
    parser.add_argument(
        "--screen",
        action="store_true",
        help="Score only the calls each reply opens with: the same call figures in about half the time, no loop rate.",
    )
    parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    console = Console(stderr=True)
    store = args.root / "results.json"
    results = json.loads(store.read_text()) if store.is_file() else {}

    def save() -> None:
        write_json(store, results)
        write_text(args.root / "results.md", table(results))

    for name in names:
        if name in results:
            console.print(f"[cyan]{name}[/]: trained already")
            continue
        console.print(f"[bold]{name}[/]: {VARIANTS[name][0]}")
        data = {"scenarios": args.scenarios.resolve()} if args.scenarios else {}
        if str(args.validation_list) != "none":
            data["validation_list"] = args.validation_list.resolve()
        results[name] = train_variant(
            name, VARIANTS[name][1], args.minutes, args.steps or None, data, args.root, console
        )
        save()
    ranked = sorted((results[n] for n in names), key=teacher_forced_score, reverse=True)
    for row in ranked[: args.score_top or None]:
        if row["app"]:
            continue
        what = "the calls each reply opens with" if args.screen else "whole replies"
        console.print(f"[bold]{row['name']}[/]: scoring the F16 GGUF in llama.cpp on every held-out turn ({what})")
        score_variant(row, args.root, args.greedy, args.screen)
        save()
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    else:
        sys.stdout.write(table({n: results[n] for n in names if n in results}))


if __name__ == "__main__":
    main()
