"""`dmforge finetune`: scenarios → dataset → LoRA training → merged model, all in one run folder.

runs/<id>/
  config.yaml        the resolved config (file + command-line overrides)
  dataset/           the dataset this run trained on (with its fingerprint in manifest.json)
  checkpoints/       resume points; the latest one is picked up automatically
  adapter/           the LoRA adapter (PEFT format), the best by held-out call score
  trained-layers.safetensors   instead, with `train.method: full`: the trained layers' own weights
  merged/            the base with what trained folded in, with the tokenizer and its chat template
  logs/train.jsonl   one line per step
  metrics.json       loss history, validation loss, speed, preflight
  loss.png, report.html
  manifest.json      what went in and what came out
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.markup import escape
from safetensors.torch import load_file

from dmforge import __version__
from dmforge.config import DmforgeConfig
from dmforge.contract.chat import ChatFormat, Sample, build_samples, detect_chat_format, template_messages
from dmforge.dataset import build_dataset, corpus_fingerprint
from dmforge.dataset.build import DatasetStats
from dmforge.errors import DmforgeError
from dmforge.files import read_json, write_json, write_text
from dmforge.locks import hold_run_folder
from dmforge.models.catalog import CACTUS_ARCHITECTURES
from dmforge.models.hardware import detect_hardware
from dmforge.models.load import load_tokenizer
from dmforge.models.resolve import resolve_base
from dmforge.registry.runs import TRAINED_LAYERS, BaseRecord, RunManifest, scenario_hashes, write_manifest
from dmforge.scenarios import CheckReport, check_paths
from dmforge.tools.registry import Registry
from dmforge.training.checkpoint import load_trainable_state, write_trainable_state
from dmforge.training.frozen import frozen_cache
from dmforge.training.incremental import Lineage, incremental_samples, load_parent_adapter, scaled_steps
from dmforge.training.loop import make_plan, train_loop, validation_passes
from dmforge.training.lora import merge_adapter, merge_trained_layers, trainable_model, use_unsloth
from dmforge.training.plots import loss_curve_png, metrics_html
from dmforge.training.preflight import run_preflight

# Options that may change between a run and its resumption without changing what is trained.
RESUMABLE_KEYS = {
    "max_steps",
    "max_minutes",
    "epochs",
    "eval_every",
    "save_every",
    "early_stopping_patience",
    "preflight_steps",
    "run_dir",
    "runs_root",
    "threads",
    "replay_ratio",  # only an incremental run uses it, and its lineage records it
}


@dataclass
class FinetuneResult:
    run_dir: Path
    merged: Path
    metrics: dict


def base_name(config: DmforgeConfig) -> str:
    """The base as a folder name: `smollm2-135m`, `Qwen-Qwen3-0.6B`, `model` for `model.gguf`."""
    return Path(config.model.base).name.removesuffix(".gguf").replace("/", "-")


def default_run_dir(config: DmforgeConfig) -> Path:
    if config.train.run_dir:
        return config.train.run_dir
    return config.train.runs_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{base_name(config)}"


def run_identity(config: DmforgeConfig, corpus: str, lineage: Lineage | None = None) -> dict:
    """What a run trains on. Export, evaluation and deploy options are left out: they never change the weights.

    An incremental run also names its parent version and the files it trains on: the same scenarios
    trained from scratch are another run.
    """
    data = json.loads(config.model_dump_json(include={"data", "model", "train"}))
    data["train"] = {k: v for k, v in data["train"].items() if k not in RESUMABLE_KEYS}
    data["data"].pop("out", None)
    # The reply budget decides the context windows the model trains on, so it is part of what is trained.
    data["decode"] = {"n_predict": config.decode.n_predict}
    identity = {"config": data, "corpus": corpus}
    if lineage is not None:
        identity["lineage"] = lineage.to_json() | {"replay_ratio": config.train.replay_ratio}
    return identity


def _check_resumable(run_dir: Path, identity: dict) -> None:
    saved = run_dir / "identity.json"
    if not saved.is_file():
        return
    before = read_json(
        saved, f"The run folder {run_dir} is damaged: start a new run with another --run-dir, or delete it."
    )
    if before != identity:
        what = "the scenarios changed" if before.get("corpus") != identity["corpus"] else "the training options changed"
        raise DmforgeError(
            f"{run_dir} holds a run that cannot be resumed: {what} since it started. Start a new run with "
            "another --run-dir (or none, for a fresh folder), or delete that folder.",
            exit_code=2,
        )


def bracket_tokens(tokenizer) -> frozenset[int]:
    """The vocabulary's tokens whose text holds a `[`: the ones that open a tool call."""
    vocab = tokenizer.get_vocab()
    return frozenset(i for token, i in vocab.items() if "[" in tokenizer.convert_tokens_to_string([token]))


def _sample_reply(merged: Path, tokenizer, fmt, conversation: dict, device: str = "cpu") -> dict:
    """Greedy reply of the merged model to the first DM turn of a validation conversation."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).to(device).eval()
    messages = conversation["messages"]
    first_dm = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = tokenizer.apply_chat_template(
        template_messages(messages[:first_dm], fmt), tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
    end_id = tokenizer.convert_tokens_to_ids(fmt.end_of_turn)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=96, do_sample=False, eos_token_id=end_id, pad_token_id=end_id)
    reply = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return {"conversation": conversation["id"], "gold": messages[first_dm]["content"], "reply": reply.strip()}


def finetune(
    config: DmforgeConfig,
    registry: Registry,
    console: Console,
    announce: Callable[[str, str], None] | None = None,
    lineage: Lineage | None = None,
    on_log: Callable[[dict], None] | None = None,
) -> FinetuneResult:
    """Build, preflight, train and merge. `announce(stage, detail)` marks where each stage starts, and
    `on_log(row)` sees every row written to logs/train.jsonl (the notebook's live loss curve).

    With a `lineage`, the run continues the parent version's adapter on the changed files plus a
    replay sample (training/incremental.py).
    """
    announce = announce or (lambda stage, detail: None)
    # The base is resolved first, so a wrong --base fails before anything is written.
    with console.status(f"loading base model {escape(config.model.base)}…"):
        base = resolve_base(config.model.base)
        tokenizer = load_tokenizer(base.path, config.model.chat_template)
    run_dir = default_run_dir(config)
    with hold_run_folder(run_dir, config.data.scenarios, console):
        return _finetune_locked(config, registry, console, announce, base, tokenizer, run_dir, lineage, on_log)


@dataclass
class RunData:
    """What the build stage hands to training: the dataset, its chat format and the rendered samples."""

    checked: CheckReport  # the scenarios the dataset was built from
    corpus: str  # their fingerprint
    stats: DatasetStats
    dataset_dir: Path
    fmt: ChatFormat
    conversations: dict[str, list[dict]]
    train: list[Sample]
    validation: list[Sample]
    incremental: dict | None = None  # what an incremental run trains on


def _finetune_locked(
    config, registry, console, announce, base, tokenizer, run_dir: Path, lineage: Lineage | None, on_log=None
) -> FinetuneResult:
    random.seed(config.train.seed)
    torch.manual_seed(config.train.seed)
    console.print(f"[bold]run[/] {escape(str(run_dir))}")
    announce("build", f"validated dataset in {escape(str(run_dir / 'dataset'))}")
    data = _build(config, registry, tokenizer, run_dir, lineage)
    model_type = _architecture(base, console)
    t = config.train
    if lineage is not None:
        t, data.incremental = _incremental(data, t, lineage, console)
    _record_samples(data, t, config.decode.n_predict, console)
    if base.quantized_from:
        console.print(
            f"[yellow]note:[/] the base `{escape(config.model.base)}` ships as a {base.quantized_from} GGUF, so this "
            "run trains from weights that were already cut to a few bits. Where the Hugging Face hub is reachable, "
            "a full-precision base trains better (`dmforge models list`)."
        )

    hardware = detect_hardware(t.device, t.dtype, t.threads)
    t = t.model_copy(update={"max_minutes": t.budget_minutes(hardware.device)})
    console.print(f"[bold]device[/] {hardware.description}, {hardware.dtype_name}, {hardware.threads} threads")
    with console.status("attaching LoRA adapters…" if t.method == "lora" else "loading the layers to train…"):
        model = trainable_model(base.path, t, hardware)
    if lineage is not None:  # a checkpoint, when resuming, replaces these weights again
        load_parent_adapter(model, Path(lineage.adapter))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # NEFTune changes the frozen layers' input every step, and Unsloth and DDP run their own forward passes.
    cacheable = world == 1 and not t.neftune_alpha and not use_unsloth(t, hardware)
    cache = frozen_cache(model, t.cache_frozen_layers and cacheable)
    t, preflight, forecast, steps_from_budget = _preflight_and_plan(
        model, data, t, hardware, base, tokenizer, run_dir, cache, console, announce
    )

    accelerator = None
    if world > 1:  # launched by `accelerate launch` on several GPUs
        from accelerate import Accelerator

        accelerator = Accelerator()
    what = f"LoRA r={t.lora_r}" if t.method == "lora" else "the top layers' own weights"
    announce("train", f"{what} on {len(data.train)} samples, then merge into the base")
    state = _train(model, data, t, run_dir, tokenizer, console, accelerator, cache, on_log, steps_from_budget)

    # The adapter that ships is the best by held-out call score (or validation loss), not merely the last.
    best = run_dir / "best-adapter.safetensors"
    if best.is_file():
        load_trainable_state(model, load_file(best))
    with console.status("saving what trained and merging it into the base…"):
        unwrapped = accelerator.unwrap_model(model) if accelerator else model
        merged = run_dir / "merged"
        trained = _save_and_merge(unwrapped, t.method, run_dir, base.path, merged, tokenizer)
        first = (data.conversations["validation"] or data.conversations["train"])[0]
        sample = _sample_reply(merged, tokenizer, data.fmt, first)

    metrics = _metrics(state, t, data, preflight, forecast, hardware)
    write_json(run_dir / "metrics.json", metrics)
    _plots(run_dir, config, data, state, hardware, sample)
    write_manifest(
        run_dir,
        RunManifest(
            dmforge_version=__version__,
            base=BaseRecord(spec=base.spec, origin=base.origin, path=str(base.path), model_type=model_type),
            dataset={"path": str(data.dataset_dir), "corpus_fingerprint": data.corpus},
            chat_format=asdict(data.fmt),
            max_seq_len=t.max_seq_len,
            adapter=str(trained),
            merged=str(merged),
            sample_reply=sample,
            steps=state.step,
            scenarios=scenario_hashes(data.checked.scenarios),
            kind="incremental" if lineage else "full",
            parent=lineage.parent if lineage else None,
            incremental=data.incremental,
        ),
    )
    return FinetuneResult(run_dir, merged, metrics)


def _save_and_merge(model, method: str, run_dir: Path, base_path: Path, merged: Path, tokenizer) -> Path:
    """Save what the run trained into its folder, the LoRA adapter (PEFT's folder) or the trained layers'
    weights, and fold it into the base as `merged`; the saved path."""
    if method == "lora":
        model.save_pretrained(run_dir / "adapter")
        merge_adapter(base_path, run_dir / "adapter", merged, tokenizer)
        return run_dir / "adapter"
    write_trainable_state(run_dir / TRAINED_LAYERS, model)
    merge_trained_layers(base_path, run_dir / TRAINED_LAYERS, merged, tokenizer)
    return run_dir / TRAINED_LAYERS


def _build(config, registry, tokenizer, run_dir: Path, lineage: Lineage | None) -> RunData:
    """Check the scenarios, build the run's dataset and render its samples through the base's chat template.

    The identity is checked before the dataset is written: a run that cannot resume keeps its dataset.
    """
    checked = check_paths([config.data.scenarios], registry, config.data.max_file_bytes)
    corpus = corpus_fingerprint(checked.scenarios, config.data)
    identity = run_identity(config, corpus, lineage)
    _check_resumable(run_dir, identity)
    stats, dataset_dir = build_dataset(
        config.data, registry, out=run_dir / "dataset", report=checked, in_run_folder=True
    )
    write_json(run_dir / "identity.json", identity)
    write_text(run_dir / "config.yaml", yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False))
    fmt = detect_chat_format(tokenizer, config.model.tool_results, config.model.tool_result_prefix)
    conversations = {
        split: [json.loads(line) for line in (dataset_dir / f"{split}.jsonl").read_text().splitlines()]
        for split in ("train", "validation")
    }
    t, reply = config.train, config.decode.n_predict
    train = build_samples(tokenizer, fmt, conversations["train"], t.max_seq_len, reply)
    validation = conversations["validation"]
    validation = build_samples(tokenizer, fmt, validation, t.max_seq_len, reply) if validation else []
    if t.loss_on == "all":  # every token is a target; the DM turns keep their spans for the call weights
        for sample in train:
            sample.labels = list(sample.input_ids)
    return RunData(checked, corpus, stats, dataset_dir, fmt, conversations, train, validation)


def _architecture(base, console) -> str:
    """The base's model type, with a warning when the app's runtime cannot load it."""
    model_type = json.loads((base.path / "config.json").read_text()).get("model_type", "?")
    if model_type not in CACTUS_ARCHITECTURES:
        console.print(
            f"[yellow]warning:[/] architecture `{model_type}` is not one the app's Cactus 0.2.x runtime loads "
            f"({', '.join(sorted(CACTUS_ARCHITECTURES))}); the export stage will refuse it."
        )
    return model_type


def _incremental(data: RunData, t, lineage: Lineage, console):
    """The changed files' samples plus a replay sample, and the steps scaled to them: (train config, record)."""
    scenario_of = {c["id"]: c["scenario"] for c in data.conversations["train"]}
    full, full_steps = len(data.train), make_plan(data.train, t).total_steps
    data.train, new, replayed = incremental_samples(
        data.train, [scenario_of[s.conversation] for s in data.train], set(lineage.changed), t.replay_ratio, t.seed
    )
    t = t.model_copy(update={"max_steps": scaled_steps(full_steps, len(data.train), full)})
    record = lineage.to_json() | {
        "new_samples": new,
        "replayed_samples": replayed,
        "full_samples": full,
        "full_run_steps": full_steps,
        "steps": t.max_steps,
    }
    console.print(
        f"[bold]incremental[/] from {lineage.parent}: {len(lineage.changed)} added or changed file(s), "
        f"{new} new sample(s) + {replayed} replayed of {full}; {t.max_steps} steps (a full run: {full_steps})"
    )
    return t, record


def _record_samples(data: RunData, t, reply: int, console) -> None:
    """The rendered samples' counts, into the dataset's stats.json and on the console."""
    train, validation = data.train, data.validation
    windowed = sum(s.windowed for s in train)
    stats_path = data.dataset_dir / "stats.json"
    stats_json = json.loads(stats_path.read_text())
    stats_json["samples"] = {
        "max_seq_len": t.max_seq_len,
        "reply_tokens": reply,
        "train": len(train),
        "train_windowed": windowed,
        "validation": len(validation),
        "validation_windowed": sum(s.windowed for s in validation),
        "train_tokens": sum(len(s.input_ids) for s in train),
        "train_dm_tokens": sum(s.trained_tokens for s in train),
    }
    write_json(stats_path, stats_json)
    console.print(
        f"[bold]data[/] {len(train)} training samples ({sum(s.trained_tokens for s in train):,} DM tokens, "
        f"{sum(len(s.calls) for s in train)} calls; {windowed} in a context window of {t.max_seq_len} tokens), "
        f"{len(validation)} validation; tool results in the {'tool' if data.fmt.tool_role else 'user'} role; "
        f"turns end with {escape(data.fmt.end_of_turn)}"
    )


def _preflight_and_plan(model, data: RunData, t, hardware, base, tokenizer, run_dir: Path, cache, console, announce):
    """Time a few real steps, refuse what cannot fit, and plan the steps that fill the time budget.

    Returns the training config with the planned `max_steps`, the preflight report and the forecast
    (both None when resuming or when `preflight_steps` is 0), and whether the budget planned the steps
    (None: no plan was made, and the loop decides from the config). The plan is kept in `logs/plan.json`,
    so a resumed run trains the same steps on the same schedule instead of re-planning from the epochs.
    """
    resuming = (run_dir / "checkpoints").exists()
    plan_file = run_dir / "logs" / "plan.json"
    announce(
        "preflight",
        "skipped: resuming from the last checkpoint"
        if resuming
        else f"timing {t.preflight_steps} real step(s) and checking memory"
        if t.preflight_steps
        else "skipped (train.preflight_steps is 0)",
    )
    if resuming and plan_file.is_file() and not t.max_steps:  # a max_steps given now is the user's schedule
        planned = read_json(plan_file, f"Delete {plan_file} to resume with the steps of `train.epochs` instead.")
        return t.model_copy(update={"max_steps": planned["max_steps"]}), None, None, True
    if not resuming:
        plan_file.unlink(missing_ok=True)  # an earlier run's plan in this folder is not this run's
    if not t.preflight_steps or resuming:
        return t, None, None, None
    train = data.train
    with console.status("preflight: timing a few real steps…"):
        preflight = run_preflight(model, train, t, hardware, tokenizer.pad_token_id, cache)
    console.print(f"[bold]preflight[/] {preflight.summary()}")
    if base.preset is not None:
        from dmforge.models.recommend import advice

        tip = advice(base.spec, preflight.total_seconds / 60, base.preset.parameters_m, t.max_minutes)
        console.print(f"[bold]bases[/] {escape(tip)}")
    steps_per_epoch = make_plan(train, t).batches_per_epoch / t.grad_accum
    if t.max_minutes and not t.max_steps:
        # Plan the schedule to fill the budget, rather than cutting a cosine schedule off midway or
        # stopping short of it: equal minutes is how recipes are compared (bench/quality_sweep.py).
        fit = _steps_with_validation(preflight, t, steps_per_epoch, data.validation)
        console.print(
            f"[bold]budget[/] {t.max_minutes:g} min: {fit} steps, {fit / steps_per_epoch:.1f} epochs, "
            f"{_passes(fit, t, data.validation)} validation passes "
            f"(the recipe's {t.epochs:g} epochs would be {preflight.total_steps} steps)"
        )
        tip = short_budget_tip(preflight, t, steps_per_epoch, data.validation, fit)
        if tip:
            console.print(f"[yellow]tip:[/] {escape(tip)}")
        t = t.model_copy(update={"max_steps": fit})
        write_json(plan_file, {"max_steps": fit, "budget_minutes": t.max_minutes})
        steps_from_budget = True
    else:
        steps_from_budget = False
    planned = make_plan(train, t).total_steps
    validating = _passes(planned, t, data.validation) * _pass_seconds(preflight, data.validation)
    forecast = {
        "steps": planned,
        "seconds": round(preflight.seconds_for(planned, steps_per_epoch), 1),
        "validation_seconds": round(validating, 1),
        "budget_minutes": t.max_minutes,
        "busy_share": round(preflight.busy_share, 3),
    }
    return t, preflight, forecast, steps_from_budget


# A validation pass's seconds per held-out token, as a share of a training step's per token at the
# preflight's speed: a forward without the backward, over the frozen layers' kept outputs after the first
# pass. Measured on the sample corpus's 42 held-out samples (58,299 tokens; 2 Xeon cores, 729 tokens/s):
# the first pass 31.2 s (0.39), each after it 21.9 s (0.27).
VALIDATION_SHARE = 0.3


def _pass_seconds(preflight, validation) -> float:
    """The forecast seconds of one validation pass over `validation`."""
    return VALIDATION_SHARE * sum(len(s.input_ids) for s in validation) / preflight.tokens_per_second


def _passes(steps: int, t, validation) -> int:
    """Validation passes in a run of `steps`: none without held-out samples."""
    return validation_passes(steps, t.eval_every) if validation else 0


def _steps_with_validation(preflight, t, steps_per_epoch: float, validation) -> int:
    """The most steps whose training and validation passes together fit the budget (the budget's clock
    counts both, training/loop.py `budget_clock`); a few rounds settle the passes the steps bring."""
    budget, per_pass = t.max_minutes * 60, _pass_seconds(preflight, validation)
    fit = preflight.steps_within(budget, steps_per_epoch)
    for _ in range(4):
        fit = preflight.steps_within(max(budget - _passes(fit, t, validation) * per_pass, 1.0), steps_per_epoch)
    return fit


# Where the held-out calls stop improving, in epochs over the training set: the default run of round 10
# (docs/model-quality.md; 363 steps, 2.6 epochs) scored teacher-forced decision / intent 0.734 / 0.403 after
# 1.1 epochs and 0.813 / 0.554 after 2.5, its curve flat from there on.
CALLS_PLATEAU_EPOCHS = 2.5


def short_budget_tip(preflight, t, steps_per_epoch: float, validation, fit: int) -> str | None:
    """What a budget too short for this machine costs, and the `train.max_minutes` that buys the rest."""
    epochs = fit / steps_per_epoch
    if epochs >= CALLS_PLATEAU_EPOCHS - 0.1:
        return None
    steps = round(CALLS_PLATEAU_EPOCHS * steps_per_epoch)
    seconds = preflight.seconds_for(steps, steps_per_epoch) + _passes(steps, t, validation) * _pass_seconds(
        preflight, validation
    )
    minutes = max(int(t.max_minutes) + 1, -(-int(seconds) // 60))
    return (
        f"this machine fits {epochs:.1f} epochs in {t.max_minutes:g} minutes. The held-out calls kept improving "
        f"up to about {CALLS_PLATEAU_EPOCHS:g} epochs in the measured default run (teacher-forced intent 0.40 "
        "after 1.1 epochs, 0.55 after 2.5; docs/model-quality.md, round 10), so a model trained here asks for "
        f"the right roll less often. `train.max_minutes: {minutes}` in dmforge.yaml trains {CALLS_PLATEAU_EPOCHS:g} "
        "epochs on this machine."
    )


def _train(model, data: RunData, t, run_dir: Path, tokenizer, console, accelerator, cache, on_log, steps_from_budget):
    """The training loop, every step's row written to logs/train.jsonl (and shown to `on_log`)."""
    log_path = run_dir / "logs" / "train.jsonl"
    log_path.parent.mkdir(exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log_file:

        def log(row: dict) -> None:
            log_file.write(json.dumps(row) + "\n")
            log_file.flush()
            if on_log is not None:
                on_log(row)

        return train_loop(
            model,
            data.train,
            data.validation,
            t,
            run_dir,
            tokenizer.pad_token_id,
            console,
            accelerator,
            log=log,
            bracket_ids=bracket_tokens(tokenizer),
            cache=cache,
            steps_from_budget=steps_from_budget,
        )


def _metrics(state, t, data: RunData, preflight, forecast, hardware) -> dict:
    return {
        "train_loss": state.train_loss,
        "val_loss": state.val_loss,
        "final_val_loss": state.val_loss[-1][1] if state.val_loss else None,
        "best_val_loss": state.best_val,
        "best_call_score": state.best_score,
        "best_step": state.best_step,
        "selected_by": t.select_by,
        "val_calls": state.val_calls,
        "steps": state.step,
        "trained_tokens": state.tokens,
        "train_seconds": round(state.seconds, 1),
        "validation_seconds": round(state.validation_seconds, 1),
        "stopped_early": state.stopped_early,
        "samples": {
            "train": len(data.train),
            "validation": len(data.validation),
            "windowed": sum(s.windowed for s in data.train),
        },
        "preflight": asdict(preflight) if preflight else None,
        # What the preflight forecast for the planned steps, beside what they took (`train_seconds`).
        "forecast": forecast,
        "device": hardware.description,
        "dtype": hardware.dtype_name,
        "incremental": data.incremental,
    }


def _plots(run_dir: Path, config, data: RunData, state, hardware, sample: dict) -> None:
    """loss.png and report.html: the loss curves and the run's figures, for people."""
    title = f"dmforge: {config.model.base} on {data.stats.scenarios['train']} scenarios"
    loss_curve_png(run_dir / "loss.png", state.train_loss, state.val_loss, title)
    metrics_html(
        run_dir / "report.html",
        run_dir / "loss.png",
        title,
        {
            "steps": state.step,
            "validation loss of the shipped adapter": state.best_val,
            "held-out call score of the shipped adapter": state.best_score,
            "shipped adapter's step": state.best_step,
            "trained DM tokens": state.tokens,
            "training time (s)": round(state.seconds, 1),
            "device": f"{hardware.description}, {hardware.dtype_name}",
            "sample reply": sample["reply"],
        },
    )
