"""Is the call decision a threshold the app could move? The opening margin of every held-out turn, biased.

    .venv/bin/python bench/opening_bias.py runs/sweep12/calls-x3                       # its validation split
    .venv/bin/python bench/opening_bias.py runs/sweep12/calls-x3 --calibration data/candidates

A calls-first model decides whether to call at a reply's first token: greedy decoding opens with `[` when
the best `[` token's logit, after the app's repetition penalties and DRY, beats every other token's (the
opening margin, `Runtime.opening_margin`). Cactus 0.2's completion takes a `logit_bias`, so an agent could
add a bias `b` to every `[` token, one value after a player's line and another after a tool result, and the
model would call where `margin + b > 0`. This measures the call decision as a function of `b`, separately
for the two kinds of turn, from one forward pass per turn (no generation). A bias that helps is chosen on
`--calibration` turns (scenarios the run never trained on and that are not its validation split) and only
then read on the validation turns; on its own validation split the table shows the most a bias could buy.
The table goes to `<run>/bench/opening-bias.md` and `.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tables import cell  # noqa: E402

from dmforge.config import load_config  # noqa: E402
from dmforge.contract.chat import ChatFormat  # noqa: E402
from dmforge.dataset import to_conversation  # noqa: E402
from dmforge.evaluation.metrics import opening_calls  # noqa: E402
from dmforge.evaluation.runtime import Runtime  # noqa: E402
from dmforge.evaluation.turns import EvalTurn, eval_turns  # noqa: E402
from dmforge.files import write_json, write_text  # noqa: E402
from dmforge.registry.runs import read_manifest  # noqa: E402
from dmforge.scenarios import check_paths  # noqa: E402

BIASES = [b / 2 for b in range(-8, 9)]  # -4 … +4 in halves: a logit's scale on this model
KINDS = {"after a player": False, "after a result": True}


def margins(runtime: Runtime, turns: list[EvalTurn], decode, console: Console) -> list[dict]:
    """One row per DM turn: its kind, whether the corpus calls there, and the model's opening margin."""
    rows = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        for turn in progress.track(turns, description="opening margins"):
            rows.append(
                {
                    "conversation": turn.conversation,
                    "index": turn.index,
                    "after_result": turn.tool_results is not None,
                    "gold_calls": opening_calls(turn.gold) != "",
                    "margin": runtime.opening_margin(turn.prompt, decode),
                }
            )
    return rows


def decision(rows: list[dict], after_result: bool, bias: float) -> float | None:
    """The share of one kind of turn on which a model biased by `bias` calls exactly when the corpus does."""
    kind = [r for r in rows if r["after_result"] == after_result]
    return sum((r["margin"] + bias > 0) == r["gold_calls"] for r in kind) / len(kind) if kind else None


def best_bias(rows: list[dict], after_result: bool) -> float:
    """The bias with the best decision; the one nearest 0 among equals, so that no bias wins a tie."""
    return max(BIASES, key=lambda b: (round(decision(rows, after_result, b) or 0.0, 6), -abs(b)))


def table(name: str, rows: list[dict]) -> list[str]:
    lines = [
        f"**{name}** ({len(rows)} turns)",
        "",
        "| turn | turns | corpus calls | " + " | ".join(f"{b:+g}" for b in BIASES) + " |",
    ]
    lines.append("|---" * (3 + len(BIASES)) + "|")
    for kind, after in KINDS.items():
        n = [r for r in rows if r["after_result"] == after]
        cells = " | ".join(cell(decision(rows, after, b)) for b in BIASES)
        lines.append(f"| {kind} | {len(n)} | {sum(r['gold_calls'] for r in n)} | {cells} |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="A trained run with a merged model and a GGUF file.")
    parser.add_argument("--gguf", type=Path, help="The file to measure (default: the run's F16 GGUF).")
    parser.add_argument("--calibration", type=Path, help="Scenarios the run never trained on, to choose the bias.")
    parser.add_argument("--config", type=Path, help="The dmforge config whose decoding the app uses.")
    parser.add_argument("--max-turns", type=int, help="At most this many turns of each set, spread over its stories.")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    console = Console(stderr=True)
    config = load_config(args.config)
    manifest = read_manifest(args.run)
    trained = load_config(args.run / "config.yaml") if (args.run / "config.yaml").is_file() else config
    if trained.data.call_order != "first":
        sys.exit(f"{args.run} keeps its calls where they were written, so its first token decides nothing.")
    gguf = args.gguf or next(iter(sorted((args.run / "gguf").glob("*[fF]16.gguf"))), None)
    if gguf is None or not gguf.is_file():
        sys.exit(f"{args.run} has no F16 GGUF file; export it (`dmforge export {args.run}`) or pass --gguf.")
    n_ctx = manifest.max_seq_len or config.train.max_seq_len
    fmt, tokenizer = ChatFormat(**manifest.chat_format), AutoTokenizer.from_pretrained(args.run / "merged")
    runtime = Runtime(gguf, n_ctx)

    def measure(conversations: list[dict]) -> list[dict]:
        turns = eval_turns(conversations, fmt, tokenizer, n_ctx, config.decode.n_predict, args.max_turns)
        return margins(runtime, turns, config.decode, console)

    lines = (args.run / "dataset" / "validation.jsonl").read_text().splitlines()
    sets = {"validation": measure([json.loads(line) for line in lines])}
    if args.calibration:
        scenarios = check_paths([args.calibration]).scenarios
        sets["calibration"] = measure([to_conversation(s, config.data) for s in scenarios])

    report = {"gguf": str(gguf), "biases": BIASES, "turns": sets, "chosen": {}}
    out = [f"# Opening bias: {args.run.name} ({gguf.name})", ""]
    for name, rows in sets.items():
        out += table(name, rows)
    if "calibration" in sets:
        for kind, after in KINDS.items():
            bias = best_bias(sets["calibration"], after)
            chosen = {"bias": bias, "calibration": decision(sets["calibration"], after, bias)}
            chosen |= {
                "validation": decision(sets["validation"], after, bias),
                "unbiased": decision(sets["validation"], after, 0.0),
            }
            report["chosen"][kind] = chosen
            out.append(
                f"- {kind}: the calibration turns choose {bias:+g}; on the validation turns it decides "
                f"{cell(chosen['validation'])} against {cell(chosen['unbiased'])} unbiased."
            )
    folder = args.run / "bench"
    write_json(folder / "opening-bias.json", report)
    write_text(folder / "opening-bias.md", "\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
