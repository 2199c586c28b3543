"""Adapter updates against the merged export: size of an update, and the app's outcome with each.

    .venv/bin/python bench/adapter_quality.py runs/smollm2-135m              # every held-out turn
    .venv/bin/python bench/adapter_quality.py runs/smollm2-135m --turns 40 --json

For a finished run, converts its LoRA adapter to GGUF (export/adapter.py) if the export has none,
checks base + adapter against the merged F16 file in llama.cpp, then scores both on the same
held-out turns with the app's decoding (the `decode` section of the run's config): the merged F16
export, and the base's F16 GGUF with the adapter applied at load, as Cactus's `lora_list` runs it.
Prints the sizes (what an update costs the app) and the headline metrics of each, with the deltas.
`deploy.mode: adapter` should become the default only where these are equal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

METRICS = ("call_decision_accuracy", "intent_match", "exact_call_match", "call_validity", "loop_rate", "perplexity")


def measure(run: Path, turns: int | None) -> dict:
    from rich.console import Console

    from dmforge.config import load_config
    from dmforge.contract.chat import ChatFormat, template_messages
    from dmforge.evaluation.columns import Column, score_column
    from dmforge.evaluation.run import load_setup
    from dmforge.export.adapter import export_adapter
    from dmforge.export.verify import probe_prompts
    from dmforge.registry.runs import read_export, read_manifest
    from dmforge.tools.grammar import decode_grammar
    from dmforge.tools.registry import load_registry

    config = load_config(run / "config.yaml")
    registry = load_registry(config.data.tool_registry)
    export, manifest = read_export(run), read_manifest(run)
    f16 = Path(export.files["F16"])
    adapter = export.adapter
    if adapter is None:
        from transformers import AutoTokenizer

        from dmforge.export.verify import PROBE_CONVERSATION

        tokenizer = AutoTokenizer.from_pretrained(run / "merged")
        prompts = probe_prompts(tokenizer, [template_messages(PROBE_CONVERSATION, ChatFormat(**manifest.chat_format))])
        adapter = export_adapter(run, Path(manifest.base.path), f16, prompts)
    setup = load_setup(run, config, registry, max_turns=turns)
    grammar = decode_grammar(registry, config.decode)
    columns = {
        "merged F16": Column("merged F16", "F16", f16, config.decode, grammar),
        "base + adapter": Column(
            "base + adapter", "adapter", Path(adapter.base_file), config.decode, grammar, adapter=Path(adapter.file)
        ),
    }
    Console(stderr=True).print(f"scoring {len(setup.turns)} held-out turns per column…")
    scored = {
        name: score_column(column, setup.turns, registry, setup.n_ctx, setup.samples)["metrics"]
        for name, column in columns.items()
    }
    return {
        "run": str(run),
        "turns": len(setup.turns),
        "bytes": {"merged F16": f16.stat().st_size, "base F16": adapter.base_bytes, "adapter": adapter.bytes},
        "parity": adapter.parity,
        "metrics": {name: {k: m.get(k) for k in METRICS} for name, m in scored.items()},
        "delta": {
            k: None
            if scored["merged F16"].get(k) is None or scored["base + adapter"].get(k) is None
            else scored["base + adapter"][k] - scored["merged F16"][k]
            for k in METRICS
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="A finished run folder (trained, exported).")
    parser.add_argument("--turns", type=int, default=None, help="Held-out turns per column (default: all).")
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
    args = parser.parse_args()
    report = measure(args.run, args.turns)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    b = report["bytes"]
    print(f"{report['turns']} held-out turns of {report['run']}")
    print(
        f"update size: adapter {b['adapter'] / 2**20:.1f} MB vs merged F16 {b['merged F16'] / 2**20:.0f} MB "
        f"({b['adapter'] / b['merged F16']:.1%}); the base ({b['base F16'] / 2**20:.0f} MB) ships once"
    )
    p = report["parity"]
    print(f"parity in llama.cpp: KL {p['kl']:.2e}, next token same {p['next_token_same']}")
    print(f"{'metric':<26}{'merged F16':>12}{'base+adapter':>14}{'delta':>10}")
    for key in METRICS:
        m, a, d = report["metrics"]["merged F16"][key], report["metrics"]["base + adapter"][key], report["delta"][key]
        show = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"{key:<26}{show(m):>12}{show(a):>14}{('-' if d is None else f'{d:+.3f}'):>10}")


if __name__ == "__main__":
    main()
