"""The training loop: explicit, small, resumable.

Why not TRL's SFTTrainer: dmforge needs masks built from the app's chat template (not TRL's),
exact resume including the data order, a Rich progress bar, and a per-token loss across
accumulated micro-batches. A loop of this size says all of that plainly; Accelerate still
runs it on several GPUs under `accelerate launch`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dmforge.config import TrainConfig
from dmforge.contract.chat import Sample
from dmforge.errors import DmforgeError
from dmforge.interrupts import deferred
from dmforge.training.batches import collate, epoch_batches
from dmforge.training.batches import to_device as _to
from dmforge.training.checkpoint import (
    LoopState,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    write_trainable_state,
)
from dmforge.training.frozen import FrozenCache
from dmforge.training.lora import compute_in_base_dtype
from dmforge.training.loss import dm_turn_loss, full_logits_loss
from dmforge.training.validation import Validation, validate
from dmforge.training.weights import token_weights


@dataclass
class Plan:
    """How the training set is walked: micro-batches per epoch and optimizer steps in all."""

    batches_per_epoch: int
    total_steps: int


def make_plan(samples: list[Sample], config: TrainConfig) -> Plan:
    per_epoch = math.ceil(len(samples) / config.batch_size)
    total = config.max_steps or max(1, math.ceil(config.epochs * per_epoch / config.grad_accum))
    return Plan(per_epoch, total)


def step_batches(samples: list[Sample], config: TrainConfig, plan: Plan, step: int) -> list[list[Sample]]:
    """The micro-batches of optimizer step `step` (0-based): a pure function, so resume is exact."""
    lengths = [len(s.input_ids) for s in samples]
    out = []
    for micro in range(step * config.grad_accum, (step + 1) * config.grad_accum):
        epoch, index = divmod(micro, plan.batches_per_epoch)
        order = epoch_batches(lengths, config.batch_size, config.seed, epoch)
        out.append([samples[i] for i in order[index]])
    return out


def make_optimizer(model, config: TrainConfig, total_steps: int, clock: Callable[[], float] | None = None):
    """AdamW and its schedule: linear warm-up, then cosine decay to a tenth of the peak rate.

    With a `clock` (training seconds so far) and a time budget (`max_minutes`, resolved), the decay follows
    whichever is further along, the steps or the clock: the steps a budget planned come from the
    preflight's forecast, and when the real steps run slower (a busy machine, validation passes), the
    rate still reaches its floor as the budget ends instead of being cut off halfway down. The caller
    passes a clock only for steps the budget planned: a `max_steps` the user set is a fixed schedule.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    timed = clock is not None and isinstance(config.max_minutes, float | int) and config.max_minutes > 0
    budget = config.max_minutes * 60 if timed else None

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        if budget and clock is not None:
            progress = max(progress, clock() / budget)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def is_better(result: Validation, state: LoopState, select_by: str) -> bool:
    """Whether this evaluation's adapter should replace the one that ships."""
    if state.best_step is None:
        return True
    if select_by == "loss":
        return result.loss < state.best_val
    best = state.best_score or 0.0
    return result.call_score > best + 1e-9 or (abs(result.call_score - best) <= 1e-9 and result.loss < state.best_val)


def _validate_and_select(
    model, validation, device, state: LoopState, config, best_path: Path, log, bracket_ids: frozenset[int], cache
) -> bool:
    """Score the held-out samples; keep this adapter as the one that ships if it is the best so far."""
    started = time.monotonic()
    result = validate(model, validation, device, bracket_ids, cache)
    elapsed = time.monotonic() - started
    state.validation_seconds += elapsed
    state.val_loss.append((state.step, result.loss))
    state.val_calls.append((state.step, result.to_json()))
    if log:
        log({"step": state.step, **{f"val_{k}": v for k, v in result.to_json().items()}, "val_seconds": elapsed})
    if not is_better(result, state, config.select_by):
        return False
    state.best_val, state.best_score, state.best_step = result.loss, result.call_score, state.step
    write_trainable_state(best_path, model)  # never a torn "best" file, whatever stops the run
    return True


def _neftune(model, alpha: float):
    """NEFTune: uniform noise on the input embeddings while training (Jain et al., 2023); a hook handle."""
    embeddings = model.get_input_embeddings()

    def add_noise(module, args, output):
        if not module.training:
            return output
        scale = alpha / math.sqrt(output.shape[1] * output.shape[2])
        return output + torch.zeros_like(output).uniform_(-scale, scale)

    return embeddings.register_forward_hook(add_noise)


def _step_loss(model, tensors: dict, full_logits: bool, cache=None, samples=None) -> tuple[torch.Tensor, float]:
    if full_logits:  # under DDP the wrapped forward must run, or gradients are not synchronized
        with compute_in_base_dtype(model):
            logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits
        return full_logits_loss(logits, tensors["labels"], tensors["weights"])
    ids, mask = tensors["input_ids"], tensors["attention_mask"]
    decoded = cache.last_hidden(samples, ids, mask) if cache is not None else None
    return dm_turn_loss(model, ids, mask, tensors["labels"], tensors["weights"], decoded)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]train[/]"),
        BarColumn(),
        TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("val {task.fields[val]}"),
        TextColumn("calls {task.fields[calls]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def train_loop(
    model,
    train: list[Sample],
    validation: list[Sample],
    config: TrainConfig,
    run_dir: Path,
    pad_id: int,
    console: Console,
    accelerator=None,
    log=None,
    bracket_ids: frozenset[int] = frozenset(),
    cache: FrozenCache | None = None,
    steps_from_budget: bool | None = None,
) -> LoopState:
    """Train until `max_steps`/`epochs` or early stopping; resume from the run's latest checkpoint.

    With a `cache`, the frozen lower layers run once per sample (training/frozen.py). `steps_from_budget`:
    the time budget planned `max_steps`, so the decay also reads the clock (`_start`).
    """
    device = next(model.parameters()).device.type
    # `max_minutes: auto` depends on the device; finetune resolves it, but the loop is also called directly.
    config = config.model_copy(update={"max_minutes": config.budget_minutes(device)})
    plan = make_plan(train, config)
    checkpoints = run_dir / "checkpoints"
    best_path = run_dir / "best-adapter.safetensors"
    model, optimizer, scheduler, state = _start(
        model, config, plan, checkpoints, console, accelerator, steps_from_budget
    )
    if state.stopped_early or state.step >= plan.total_steps:
        return state

    model.train()
    progress = _progress(console)
    task = progress.add_task("train", total=plan.total_steps, completed=state.step, **_progress_fields(state))
    noise = _neftune(model, config.neftune_alpha) if config.neftune_alpha else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    weights = token_weights(config, train)

    def validate_and_select() -> bool:
        return _validate_and_select(model, validation, device, state, config, best_path, log, bracket_ids, cache)

    step_rng = None  # the random state at the start of the step in progress; None between steps
    committing = False  # inside the block that applies a step, where a hard stop leaves no whole state

    try:
        with progress:
            while state.step < plan.total_steps:
                started = time.monotonic()
                step_rng = rng_state()
                micro_batches = step_batches(train, config, plan, state.step)
                step_loss = _forward_backward(model, micro_batches, pad_id, weights, device, accelerator, cache)
                # From the optimizer step to the checkpoint, a stop is held: weights that moved while the
                # counters did not would resume into a different run than the one that was stopped.
                committing = True
                with deferred(lambda: _say_held(console, state)):
                    _apply_step(optimizer, scheduler, trainable, config.max_grad_norm, step_loss, state.step)
                    tps = _count_step(state, micro_batches, step_loss, time.monotonic() - started, scheduler, log)
                    last = state.step >= plan.total_steps
                    if validation and (state.step % config.eval_every == 0 or last):
                        _early_stopping(state, validate_and_select(), config.early_stopping_patience)
                    progress.update(task, completed=state.step, **_progress_fields(state, step_loss, tps))
                    spent = bool(config.max_minutes) and budget_clock(state) >= config.max_minutes * 60 and not last
                    if spent:
                        state.stopped_early = True  # the time budget is spent: the best adapter so far ships
                        if validation and (not state.val_loss or state.val_loss[-1][0] != state.step):
                            validate_and_select()
                    if state.step % config.save_every == 0 or last or state.stopped_early:
                        save_checkpoint(checkpoints, model, optimizer, scheduler, state)
                    committing, step_rng = False, None
                    if state.stopped_early:
                        _say_stopped(console, state, config, spent)
                        break
    except KeyboardInterrupt:
        _interrupted(checkpoints, model, optimizer, scheduler, state, committing, step_rng)
    finally:
        if noise is not None:
            noise.remove()
    return state


def budget_clock(state: LoopState) -> float:
    """The seconds a time budget has spent: the steps and the validation passes between them. A budget that
    left validation out overran by its passes (eleven of them, about four minutes, in a 35-minute CPU run)."""
    return state.seconds + state.validation_seconds


def validation_passes(steps: int, eval_every: int) -> int:
    """The passes `train_loop` makes in a run of `steps`: one every `eval_every` steps and one at the last."""
    return -(-steps // eval_every)


def _say_held(console: Console, state: LoopState) -> None:
    console.print(
        f"[yellow]Stopping after step {state.step + 1}[/] is applied, validated and saved "
        "(press Ctrl-C again to stop at once and resume from the last checkpoint)."
    )


def _start(
    model, config: TrainConfig, plan: Plan, checkpoints: Path, console: Console, accelerator, timed: bool | None = None
):
    """The optimizer and schedule for the planned steps, and the state to go on from (the latest checkpoint's).

    `timed`: the steps were planned from a time budget, so the schedule also reads the training clock; None
    (a direct call): whenever a budget applies and no `max_steps` is set."""
    if timed is None:
        timed = config.max_steps is None and bool(config.max_minutes)
    current: list[LoopState] = []  # the state the schedule's clock reads, known once a checkpoint is loaded

    def clock() -> float:
        return budget_clock(current[0]) if current else 0.0

    optimizer, scheduler = make_optimizer(model, config, plan.total_steps, clock if timed else None)
    if accelerator is not None:
        model, optimizer = accelerator.prepare(model, optimizer)
    state = LoopState()
    resume = latest_checkpoint(checkpoints)
    if resume is not None:
        state = load_checkpoint(resume, model, optimizer, scheduler)
        console.print(f"[cyan]Resuming[/] from {resume.name} (step {state.step} of {plan.total_steps}).")
    current.append(state)
    return model, optimizer, scheduler, state


def _forward_backward(model, micro_batches, pad_id: int, weights, device: str, accelerator, cache) -> float:
    """Forward and backward over one optimizer step's micro-batches (this process's share); the step's loss.

    Each micro-batch's loss sum is divided by the whole step's weight (over all processes), which makes the
    accumulated gradient an exact per-token mean whichever micro-batch a token landed in.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    tensors_list = [collate(b, pad_id, weights) for b in micro_batches]
    step_weight = sum(float(t["weights"].sum()) for t in tensors_list)
    step_loss = 0.0
    mine = tensors_list[rank::world]
    for i, (batch, members) in enumerate(zip(mine, micro_batches[rank::world], strict=True)):
        loss_sum, _ = _step_loss(model, _to(batch, device), world > 1, cache, members)
        loss = loss_sum / max(step_weight, 1.0)
        if accelerator is not None:
            sync = i == len(mine) - 1
            with accelerator.no_sync(model) if not sync and world > 1 else nullcontext():
                accelerator.backward(loss)
        else:
            loss.backward()
        step_loss += loss.item()
    if accelerator is not None and world > 1:
        step_loss = float(accelerator.reduce(torch.tensor(step_loss, device=device), reduction="sum"))
    return step_loss


def _apply_step(optimizer, scheduler, trainable, max_grad_norm: float, step_loss: float, step: int) -> None:
    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if not math.isfinite(step_loss):
        raise DmforgeError(
            f"The training loss became {step_loss} at step {step + 1}. Lower the learning rate "
            "(train.learning_rate) or use dtype: float32, then run again with a new --run-dir."
        )


def _count_step(state: LoopState, micro_batches, step_loss: float, elapsed: float, scheduler, log) -> float:
    """Advance the counters by one applied step and log it; the step's tokens per second."""
    state.step += 1
    state.tokens += sum(s.trained_tokens for b in micro_batches for s in b)
    state.seconds += elapsed
    state.train_loss.append((state.step, step_loss))
    tps = sum(len(s.input_ids) for b in micro_batches for s in b) / max(elapsed, 1e-9)
    if log:
        lr = scheduler.get_last_lr()[0]
        log({"step": state.step, "loss": step_loss, "lr": lr, "tok_s": tps, "seconds": elapsed})
    return tps


def _say_stopped(console: Console, state: LoopState, config: TrainConfig, budget_spent: bool) -> None:
    if budget_spent:
        console.print(
            f"[yellow]Time budget spent[/] ({config.max_minutes:g} min of training) at step {state.step}; "
            f"the best adapter so far (step {state.best_step}) ships."
        )
        return
    what = "validation loss" if config.select_by == "loss" else "the held-out call score"
    console.print(
        f"[yellow]Early stop[/] at step {state.step}: {what} has not improved for "
        f"{state.bad_evals} evaluations (best at step {state.best_step})."
    )


def _early_stopping(state: LoopState, improved: bool, patience: int) -> None:
    if improved:
        state.bad_evals = 0
        return
    state.bad_evals += 1
    if patience and state.bad_evals >= patience:
        state.stopped_early = True


def _progress_fields(state: LoopState, loss: float | None = None, tps: float | None = None) -> dict:
    """The progress bar's columns: the last training loss, validation loss, call score and speed."""
    if loss is None and state.train_loss:
        loss = state.train_loss[-1][1]
    return {
        "loss": _fmt(loss),
        "val": _fmt(state.val_loss[-1][1] if state.val_loss else None),
        "calls": _fmt(state.val_calls[-1][1]["call_score"] if state.val_calls else None),
        "tps": "-" if tps is None else f"{tps:.0f}",
    }


def _interrupted(checkpoints: Path, model, optimizer, scheduler, state: LoopState, committing: bool, step_rng):
    """Ctrl-C: save what can be resumed exactly, and say how; raises the DmforgeError that ends the run."""
    if committing:
        last = latest_checkpoint(checkpoints)
        where = f"{last} (step {last.name.removeprefix('step-').lstrip('0') or 0})" if last else "none yet"
        raise DmforgeError(
            f"Stopped at once during step {state.step + 1}. The last complete checkpoint is {where}; run the "
            "same command again to resume exactly from it.",
            exit_code=130,
        ) from None
    # Before a step is applied the weights and optimizer are those of the last step; the random state
    # is rewound to the step's start, so the resumed run draws the same dropout and noise.
    saved = save_checkpoint(checkpoints, model, optimizer, scheduler, state, rng=step_rng)
    raise DmforgeError(
        f"Interrupted at step {state.step}. The checkpoint is in {saved}; run the same command again "
        "to resume exactly where it stopped.",
        exit_code=130,
    ) from None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
