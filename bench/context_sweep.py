"""What a smaller context costs: the call metrics of one model at several n_ctx, with the phone's memory for each.

    .venv/bin/python bench/context_sweep.py runs/smollm2-135m                  # 512, 1024 and 2048 tokens
    .venv/bin/python bench/context_sweep.py runs/smollm2-135m --contexts 768,1536 --json

A phone with little memory runs a small context, and then the app sends only the newest turns
(`dataset/window.py`). Each context here scores the run's shipped file on every held-out turn, each
prompt cut to that context's window exactly as the app would cut it, with the app's decoding. The
KV cache column is what that context costs in memory on the device (F16 keys and values, every
layer). The table goes to `<run>/bench/context.md` and `.json`.
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
from dmforge.evaluation.run import load_setup  # noqa: E402
from dmforge.evaluation.runtime import Runtime  # noqa: E402
from dmforge.export.ship import shipped  # noqa: E402
from dmforge.files import write_json, write_text  # noqa: E402
from dmforge.tools.grammar import decode_grammar  # noqa: E402
from dmforge.tools.registry import load_registry  # noqa: E402

KEYS = CALL_METRICS


def kv_cache_mb(runtime: Runtime, n_ctx: int) -> float:
    meta = runtime.meta
    arch = meta.get("general.architecture", "llama")
    heads = int(meta[f"{arch}.attention.head_count"])
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    width = int(meta.get(f"{arch}.attention.key_length", int(meta[f"{arch}.embedding_length"]) // heads))
    return int(meta[f"{arch}.block_count"]) * 2 * kv_heads * width * 2 * n_ctx / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="A run folder that has been exported and evaluated.")
    parser.add_argument("--contexts", default="512,1024,2048", help="Comma-separated n_ctx values.")
    parser.add_argument("--quant", help="The file to score (default: the one the run ships).")
    parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = parser.parse_args()
    console = Console(stderr=True)
    config = load_config(args.run / "config.yaml")
    registry = load_registry(config.data.tool_registry)
    grammar = decode_grammar(registry, config.decode)
    store = args.run / "bench" / "context.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    trained = None
    for n_ctx in (int(c) for c in args.contexts.split(",")):
        setup = load_setup(args.run, config, registry, n_ctx=n_ctx)
        trained = setup.manifest.get("max_seq_len")
        report_path = args.run / "eval" / "report.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
        path = shipped(setup.export, report, args.quant).path
        key = f"{path.name}@{n_ctx}"
        if key in results:
            console.print(f"[cyan]{key}[/]: done already")
            continue
        console.print(f"[bold]{key}[/]: {sum(t.windowed for t in setup.turns)} of {len(setup.turns)} prompts windowed")
        column = Column(f"n_ctx {n_ctx}", path.name, path, config.decode, grammar)
        scored = score_column(column, setup.turns, registry, n_ctx, [])
        results[key] = {
            "file": path.name,
            "n_ctx": n_ctx,
            "windowed": sum(t.windowed for t in setup.turns),
            "turns": len(setup.turns),
            "mean_prompt_messages": sum(len(t.prompt) for t in setup.turns) / len(setup.turns),
            "kv_cache_mb": kv_cache_mb(Runtime(path, 256), n_ctx),
            "metrics": scored["metrics"],
        }
        write_json(store, results)
    lines = [
        f"Call metrics by context (trained at n_ctx {trained}; each prompt cut to the app's window):",
        "",
        "| file | n_ctx | KV cache | prompts windowed | " + " | ".join(label for _, label in KEYS) + " |",
        "|" + "---|" * (4 + len(KEYS)),
    ]
    for r in sorted(results.values(), key=lambda r: (r["file"], r["n_ctx"])):
        cells = " | ".join(cell(r["metrics"].get(k)) for k, _ in KEYS)
        lines.append(
            f"| {r['file']} | {r['n_ctx']} | {r['kv_cache_mb']:.0f} MB | {r['windowed']}/{r['turns']} | {cells} |"
        )
    table = "\n".join(lines) + "\n"
    write_text(args.run / "bench" / "context.md", table)
    sys.stdout.write(json.dumps(results, indent=2) + "\n" if args.json else table)


if __name__ == "__main__":
    main()
