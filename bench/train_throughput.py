"""Training speed: dmforge's trainer against a naive Hugging Face `Trainer`, same model, data and steps.

    .venv/bin/python bench/train_throughput.py            # 12 steps of 4 samples, the default 2048-token windows
    .venv/bin/python bench/train_throughput.py --json     # the same, as JSON
    .venv/bin/python bench/train_throughput.py --tiny     # 2 steps of 512-token windows (CI: it cannot rot)
    .venv/bin/python bench/train_throughput.py --lora-layers 15 --epochs 2   # the default recipe's layers

With `--lora-layers N` both arms adapt the same top N layers; dmforge keeps the frozen layers' outputs
(training/frozen.py), so with `--epochs 2` its second pass over the samples runs only the adapted layers,
while the naive arm computes every layer every time, as a Trainer does.

Both arms train the same LoRA (same rank, targets and initial weights) with the same optimizer and
learning-rate schedule on the same samples in the same order, step for step: each optimizer step
sees the same `--batch` training samples of the sample corpus, rendered by dmforge's chat template
code.

- naive: `transformers.Trainer` as a tutorial sets it up. One padded batch per step (padding to
  the longest sample of the batch), the model's own loss over full-vocabulary logits at every
  position, fp32.
- dmforge: `training/loop.py` as `dmforge finetune` runs it, with the dtype and threads it picks
  (bf16 where the CPU has native bf16), one sample per micro-batch (no padding) and the output
  layer applied only at the trained positions.

Each arm runs in a process of its own, so its peak RSS is its own. Speed is measured over the steps
after the first (which pays for one-off allocations in both arms). The loss check compares the two
arms' training loss step by step: their first step is the same batch on the same weights, so it
measures the loss computation alone; the last steps show the two trajectories stay together.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

LOSS_TOLERANCE = 0.01  # relative: the issue's "losses within 1%"
TARGET_RATIO = 2.5


def prepare_samples(base: str, max_seq_len: int, count: int, out: Path, epochs: int = 1) -> None:
    """The first `count` training samples of the sample corpus, as dmforge renders them, into `out`, with the
    order dmforge's loop walks them in over `epochs` passes."""
    from corpus import corpus_conversations

    from dmforge.config import load_config
    from dmforge.contract.chat import build_samples, detect_chat_format
    from dmforge.models.load import load_tokenizer
    from dmforge.models.resolve import resolve_base
    from dmforge.training.batches import epoch_batches

    config = load_config(None, {"model": {"base": base}, "train": {"max_seq_len": max_seq_len}})
    resolved = resolve_base(base)
    tokenizer = load_tokenizer(resolved.path, config.model.chat_template)
    fmt = detect_chat_format(tokenizer, config.model.tool_results, config.model.tool_result_prefix)
    samples = build_samples(tokenizer, fmt, corpus_conversations(config, "train"), max_seq_len, config.decode.n_predict)
    chosen = samples[:count]
    # dmforge's loop walks these in its own order (length-grouped windows, shuffled, a pure function of
    # the seed); the naive arm is handed them in that order, so step k is the same batch in both.
    lengths = [len(s.input_ids) for s in chosen]
    walk = [b for epoch in range(epochs) for b in epoch_batches(lengths, 1, config.train.seed, epoch)]
    out.write_text(
        json.dumps(
            {
                "model_path": str(resolved.path),
                "pad_id": tokenizer.pad_token_id,
                "samples": [{"input_ids": s.input_ids, "labels": s.labels} for s in chosen],
                "order": [i for batch in walk for i in batch],
            }
        )
    )


def _train_config(args, **extra):
    from dmforge.config import TrainConfig

    # One schedule for both arms: warm-up then cosine, dmforge's, over exactly the measured steps.
    return TrainConfig(
        max_steps=args.steps,
        max_minutes=None,  # both arms run exactly --steps steps, whatever the device
        batch_size=1,
        grad_accum=args.batch,
        learning_rate=1e-3,
        warmup_steps=min(2, args.steps - 1),
        call_loss_weight=1.0,  # the naive loss weighs every trained token the same
        argument_loss_weight=1.0,
        lora_layers=args.lora_layers,
        eval_every=10**6,
        save_every=10**6,
        early_stopping_patience=0,
        preflight_steps=0,
        max_seq_len=args.max_seq_len,
        **extra,
    )


def run_naive(args, data: dict) -> dict:
    """transformers.Trainer, fp32, one padded batch of `--batch` samples per step, full logits."""
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from dmforge.models.hardware import detect_hardware
    from dmforge.models.load import load_tokenizer
    from dmforge.training.loop import make_optimizer
    from dmforge.training.lora import lora_model

    config = _train_config(args)
    tokenizer = load_tokenizer(Path(data["model_path"]))
    # The same LoRA, seeded the same, as the dmforge arm gets: only the dtype differs.
    model = lora_model(Path(data["model_path"]), config, detect_hardware("cpu", "float32"))
    rows = [{"input_ids": s["input_ids"], "labels": s["labels"]} for s in in_order(data)]
    optimizer, scheduler = make_optimizer(model, config, args.steps)
    times: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.started)

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    class InOrder(Trainer):
        # Step k must see the same samples as dmforge's step k; the default sampler shuffles.
        def _get_train_sampler(self, *a, **k):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    with tempfile.TemporaryDirectory() as out:
        trainer = InOrder(
            model=model,
            args=TrainingArguments(
                output_dir=out,
                per_device_train_batch_size=args.batch,
                max_steps=args.steps,
                logging_steps=1,
                save_strategy="no",
                report_to=[],
                disable_tqdm=True,
                use_cpu=True,
                dataloader_num_workers=0,
                max_grad_norm=config.max_grad_norm,
            ),
            train_dataset=rows,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100),
            optimizers=(optimizer, scheduler),
            callbacks=[Clock()],
        )
        trainer.train()
    return {"step_seconds": times, "losses": losses, "dtype": "float32", "threads": torch.get_num_threads()}


def run_dmforge(args, data: dict) -> dict:
    """dmforge's own loop, with the hardware choices `dmforge finetune` makes."""
    from rich.console import Console

    from dmforge.contract.chat import Sample
    from dmforge.models.hardware import detect_hardware
    from dmforge.training.frozen import frozen_cache
    from dmforge.training.loop import train_loop
    from dmforge.training.lora import lora_model

    config = _train_config(args)
    hardware = detect_hardware(config.device, config.dtype, config.threads)
    model = lora_model(Path(data["model_path"]), config, hardware)
    samples = [Sample("bench", s["input_ids"], s["labels"]) for s in data["samples"]]
    rows: list[dict] = []
    quiet = Console(file=io.StringIO())
    with tempfile.TemporaryDirectory() as run_dir:
        cache = frozen_cache(model, config.cache_frozen_layers)
        train_loop(model, samples, [], config, Path(run_dir), data["pad_id"], quiet, log=rows.append, cache=cache)
    steps = [r for r in rows if "loss" in r]
    return {
        "step_seconds": [r["seconds"] for r in steps],
        "losses": [r["loss"] for r in steps],
        "dtype": hardware.dtype_name,
        "threads": hardware.threads,
    }


def in_order(data: dict) -> list[dict]:
    """The samples in the order dmforge's loop trains them."""
    return [data["samples"][i] for i in data["order"]]


def summarize(name: str, result: dict, data: dict, batch: int) -> dict:
    samples = in_order(data)
    per_step = [samples[i : i + batch] for i in range(0, len(samples), batch)]
    trained = [sum(sum(x != -100 for x in s["labels"][1:]) for s in step) for step in per_step]
    total = [sum(len(s["input_ids"]) for s in step) for step in per_step]
    timed = slice(1, None) if len(result["step_seconds"]) > 1 else slice(None)
    seconds = sum(result["step_seconds"][timed])
    return {
        "arm": name,
        "dtype": result["dtype"],
        "threads": result["threads"],
        "steps": len(result["step_seconds"]),
        "seconds": round(sum(result["step_seconds"]), 2),
        "trained_tokens_per_s": round(sum(trained[timed]) / seconds, 1),
        "total_tokens_per_s": round(sum(total[timed]) / seconds, 1),
        "peak_rss_mb": result["peak_rss_mb"],
        "first_loss": result["losses"][0],
        "final_loss": result["losses"][-1],
        "losses": [round(x, 5) for x in result["losses"]],
    }


def _arm(args) -> None:
    data = json.loads(Path(args.samples).read_text())
    result = (run_naive if args.arm == "naive" else run_dmforge)(args, data)
    # ru_maxrss is in kilobytes on Linux and bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20)
    Path(args.result).write_text(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="smollm2-135m", help="Base model (a dmforge catalog name or a folder).")
    parser.add_argument("--steps", type=int, default=12, help="Optimizer steps per arm.")
    parser.add_argument("--batch", type=int, default=4, help="Training samples per optimizer step.")
    parser.add_argument("--max-seq-len", type=int, default=2048, help="Longest sample, in tokens.")
    parser.add_argument("--tiny", action="store_true", help="2 steps of 2 samples of at most 512 tokens (CI).")
    parser.add_argument("--lora-layers", type=int, help="Both arms adapt only the top N layers.")
    parser.add_argument("--epochs", type=int, default=1, help="Passes over the same samples (steps × epochs).")
    parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
    parser.add_argument("--arm", choices=["naive", "dmforge"], help=argparse.SUPPRESS)
    parser.add_argument("--samples", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.batch, args.max_seq_len = 2, 2, 512
    if args.arm:
        _arm(args)
        return 0

    per_epoch = args.steps
    args.steps *= args.epochs
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "samples.json"
        prepare_samples(args.base, args.max_seq_len, per_epoch * args.batch, samples, args.epochs)
        data = json.loads(samples.read_text())
        arms = {}
        for arm in ("naive", "dmforge"):
            result = Path(tmp) / f"{arm}.json"
            command = [sys.executable, __file__, "--arm", arm, "--samples", str(samples), "--result", str(result)]
            command += ["--steps", str(args.steps), "--batch", str(args.batch), "--max-seq-len", str(args.max_seq_len)]
            command += ["--lora-layers", str(args.lora_layers)] if args.lora_layers else []
            # The arms' own chatter (the Trainer prints its logs) goes to stderr: stdout is the report.
            subprocess.run(
                command, check=True, stdout=sys.stderr, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}
            )
            arms[arm] = summarize(arm, json.loads(result.read_text()), data, args.batch)

    naive, ours = arms["naive"], arms["dmforge"]
    report = {
        "base": args.base,
        "steps": args.steps,
        "samples_per_step": args.batch,
        "max_seq_len": args.max_seq_len,
        "lora_layers": args.lora_layers,
        "epochs": args.epochs,
        "naive": naive,
        "dmforge": ours,
        "ratio": round(ours["trained_tokens_per_s"] / naive["trained_tokens_per_s"], 2),
        "first_loss_diff": round(abs(ours["first_loss"] - naive["first_loss"]) / naive["first_loss"], 4),
        "final_loss_diff": round(abs(ours["final_loss"] - naive["final_loss"]) / naive["final_loss"], 4),
    }
    report["losses_match"] = report["first_loss_diff"] <= LOSS_TOLERANCE and report["final_loss_diff"] <= LOSS_TOLERANCE
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    layers = f", LoRA on the top {args.lora_layers} layers" if args.lora_layers else ""
    print(f"{args.base}: {args.steps} steps of {args.batch} samples (≤ {args.max_seq_len} tokens){layers}")
    head = ["dtype", "trained tok/s", "total tok/s", "peak RSS", "first loss", "final loss"]
    print(f"{'':10}" + "".join(f"{h:>{w}}" for h, w in zip(head, (10, 15, 13, 10, 12, 12), strict=True)))
    for arm in (naive, ours):
        print(
            f"{arm['arm']:10}{arm['dtype']:>10}{arm['trained_tokens_per_s']:>15.1f}{arm['total_tokens_per_s']:>13.1f}"
            f"{arm['peak_rss_mb']:>8} MB{arm['first_loss']:>12.4f}{arm['final_loss']:>12.4f}"
        )
    print(
        f"ratio {report['ratio']:.2f}x (target ≥ {TARGET_RATIO}); loss difference first step "
        f"{report['first_loss_diff']:.2%}, last step {report['final_loss_diff']:.2%} (tolerance {LOSS_TOLERANCE:.0%})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
