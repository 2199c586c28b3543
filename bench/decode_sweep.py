"""Which decoding settings the app should ship: samplers, repetition penalties and the grammar, measured.

    .venv/bin/python bench/decode_sweep.py runs/smollm2-135m              # the file the run ships
    .venv/bin/python bench/decode_sweep.py runs/smollm2-135m --quant F16 --json
    .venv/bin/python bench/decode_sweep.py runs/smollm2-135m --quant F16 --screen \
        --only "penalty 1.1/64 + grammar,penalty 1.1/16 + DRY 0.8 + grammar"   # openings only, half the time

Cactus 0.2.x exposes llama.cpp's samplers, and a small model's behaviour depends on them as much as
on its weights: greedy decoding loops, a repetition penalty breaks loops but also weighs on the call
syntax already in the context, and a grammar makes calls valid without making the model call. Each
setting below is scored on every held-out turn of the run (the same columns `dmforge eval` makes, so
a setting's numbers compare directly with the run's report), and plays the scripted playtest, whose
long session is where loops show. The table goes to `<run>/bench/decode.md` and `.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tables import CALL_METRICS, cell  # noqa: E402

from dmforge.config import load_config  # noqa: E402
from dmforge.evaluation.columns import Column, score_column  # noqa: E402
from dmforge.evaluation.run import load_setup, play_session  # noqa: E402
from dmforge.evaluation.runtime import Runtime  # noqa: E402
from dmforge.export.ship import shipped  # noqa: E402
from dmforge.files import write_json, write_text  # noqa: E402
from dmforge.tools.grammar import decode_grammar  # noqa: E402
from dmforge.tools.registry import load_registry  # noqa: E402

# Every setting names what it measures, whatever the config's defaults become: DRY's sequence breakers are
# llama.cpp's own unless a setting says otherwise, and the calls per reply are unbounded unless it says so.
LLAMA_CPP_BREAKERS = ["\n", ":", '"', "*", "[", "]", ",", "="]
ACROSS_QUOTES = [b for b in LLAMA_CPP_BREAKERS if b not in ('"', "*")]  # round 7: a repeated quote stays visible
GREEDY = {
    "temperature": 0.0,
    "penalty_repeat": 1.0,
    "dry_multiplier": 0.0,
    "dry_sequence_breakers": LLAMA_CPP_BREAKERS,
    "max_calls": None,
}
SETTINGS: dict[str, dict] = {
    "greedy": {**GREEDY, "grammar": "off"},
    "greedy + grammar": {**GREEDY, "grammar": "full"},
    "greedy + lazy grammar": {**GREEDY, "grammar": "lazy"},
    "penalty 1.1/64 + grammar": {**GREEDY, "penalty_repeat": 1.1, "penalty_last_n": 64, "grammar": "full"},
    "penalty 1.1/64 + lazy grammar": {**GREEDY, "penalty_repeat": 1.1, "penalty_last_n": 64, "grammar": "lazy"},
    "penalty 1.1/64 without grammar": {**GREEDY, "penalty_repeat": 1.1, "penalty_last_n": 64, "grammar": "off"},
    "penalty 1.1/256 + grammar": {**GREEDY, "penalty_repeat": 1.1, "penalty_last_n": 256, "grammar": "full"},
    "penalty 1.2/64 + grammar": {**GREEDY, "penalty_repeat": 1.2, "penalty_last_n": 64, "grammar": "full"},
    "DRY 0.8 + grammar": {**GREEDY, "dry_multiplier": 0.8, "grammar": "full"},
    # A short penalty window holds the tool result at the start of a reply, not the echoed call before it,
    # so the follow-up call's `[`, tool name and target go unpenalised; DRY catches the longer narration
    # repeats that a 16- or 8-token window no longer sees.
    "penalty 1.1/16 + DRY 0.8 + grammar": {
        **GREEDY,
        "penalty_repeat": 1.1,
        "penalty_last_n": 16,
        "dry_multiplier": 0.8,
        "grammar": "full",
    },
    "penalty 1.1/8 + DRY 0.8 + grammar": {
        **GREEDY,
        "penalty_repeat": 1.1,
        "penalty_last_n": 8,
        "dry_multiplier": 0.8,
        "grammar": "full",
    },
    # Round 6's two loops under a 16-token window, each closed: a call line longer than the window repeats
    # (the grammar's bound on calls per reply ends it; the corpus never makes more than 4) and a quoted
    # phrase repeats (`"` and `*` are no longer DRY sequence breakers, so DRY matches across them).
    "penalty 1.1/16 + DRY 0.8 across quotes + grammar, at most 4 calls": {
        **GREEDY,
        "penalty_repeat": 1.1,
        "penalty_last_n": 16,
        "dry_multiplier": 0.8,
        "dry_sequence_breakers": ACROSS_QUOTES,
        "max_calls": 4,
        "grammar": "full",
    },
    "DRY 0.8 across quotes + grammar, at most 4 calls": {
        **GREEDY,
        "dry_multiplier": 0.8,
        "dry_sequence_breakers": ACROSS_QUOTES,
        "max_calls": 4,
        "grammar": "full",
    },
    "temp 0.7, top-p 0.9, min-p 0.05, penalty 1.1 + grammar": {
        **GREEDY,
        "temperature": 0.7,
        "top_p": 0.9,
        "min_p": 0.05,
        "penalty_repeat": 1.1,
        "penalty_last_n": 64,
        "dry_multiplier": 0.0,
        "grammar": "full",
    },
}
KEYS = [*CALL_METRICS, ("call_f1", "call F1"), ("mean_reply_tokens", "reply tokens")]
# The penalty acts on the two moments differently (a tool result's echoed call sits in its window), so each
# setting's decision is also shown split.
MOMENTS = [("after a player's line", "decision after a player"), ("after a tool result", "decision after a result")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="A run folder that has been exported and evaluated.")
    parser.add_argument("--quant", help="The file to score (default: the one the run ships).")
    parser.add_argument("--only", help="Comma-separated setting names (default: all).")
    parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
    parser.add_argument(
        "--max-turns",
        type=int,
        help="Score every k-th held-out turn, this many in all (default: every turn). Faster, noisier.",
    )
    parser.add_argument(
        "--screen",
        action="store_true",
        help="Score the calls each reply opens with, not whole replies: the same decision, intent, exact match "
        "and validity for a model that writes its calls first, in about half the time, without a loop rate "
        "(the playtest still plays whole replies).",
    )
    args = parser.parse_args()
    console = Console(stderr=True)
    config = load_config(args.run / "config.yaml")
    registry = load_registry(config.data.tool_registry)
    setup = load_setup(args.run, config, registry)
    report_path = args.run / "eval" / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    path = shipped(setup.export, report, args.quant).path
    turns = setup.turns
    if args.max_turns and args.max_turns < len(turns):
        step = len(turns) / args.max_turns  # spread over every validation scenario, not its first few
        turns = [turns[int(i * step)] for i in range(args.max_turns)]
    names = args.only.split(",") if args.only else list(SETTINGS)
    store = args.run / "bench" / "decode.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    results = {
        k: v
        for k, v in results.items()
        if v.get("file") == path.name and v.get("turns") == len(turns) and v.get("screened", False) == args.screen
    }
    for name in names:
        if name in results:
            console.print(f"[cyan]{name}[/]: done already")
            continue
        console.print(f"[bold]{name}[/] on {path.name}")
        decode = config.decode.model_copy(update=SETTINGS[name])
        grammar = decode_grammar(registry, decode)
        column = Column(name, path.name, path, decode, grammar, opening_only=args.screen)
        scored = score_column(column, turns, registry, setup.n_ctx, [])
        session = play_session(Runtime(path, setup.n_ctx), setup.fmt, setup.n_ctx, config, registry, decode, grammar)
        results[name] = {
            "file": path.name,
            "turns": len(turns),
            "settings": SETTINGS[name],
            "screened": args.screen,
            "metrics": scored["metrics"],
            "playtest": {k: session[k] for k in ("dm_replies", "calls", "valid_calls", "loops")},
        }
        write_json(store, results)
    lines = [
        f"Decoding settings on {path.name}, {len(turns)} held-out turns"
        + (" (the calls each reply opens with)" if args.screen else "")
        + f", n_ctx {setup.n_ctx}:",
        "",
        "| setting | "
        + " | ".join(label for _, label in KEYS + MOMENTS)
        + " | playtest: calls (valid) | playtest: loops |",
        "|" + "---|" * (len(KEYS) + len(MOMENTS) + 3),
    ]
    for name, r in results.items():
        by_moment = r["metrics"].get("decision_by_moment", {})
        cells = [cell(r["metrics"].get(k)) for k, _ in KEYS]
        cells += [cell(by_moment.get(k, {}).get("call_decision_accuracy")) for k, _ in MOMENTS]
        p = r["playtest"]
        play_cells = f" | {p['calls']} ({p['valid_calls']}) | {p['loops']}/{p['dm_replies']} |"
        lines.append(f"| {name} | " + " | ".join(cells) + play_cells)
    table = "\n".join(lines) + "\n"
    write_text(args.run / "bench" / "decode.md", table)
    sys.stdout.write(json.dumps(results, indent=2) + "\n" if args.json else table)


if __name__ == "__main__":
    main()
