"""The loss: cross-entropy on the DM's tokens only, weighted per token across a whole step.

Only the positions that predict a trained token go through the output layer. The prompt (system
message, players, tool results) is usually most of a sequence, and its vocabulary-wide logits
would be computed only to be thrown away: on SmolLM2 that is 49k floats per token. The hidden
states are gathered first and the output layer runs on those rows alone, in chunks, so memory
stays flat even for Gemma's 262k-word vocabulary.

The output layer is frozen under LoRA, so the loss's gradient needs only d(loss)/d(hidden). That
is computed in the same pass as the loss, chunk by chunk, `(softmax - onehot) @ W`, and each
chunk's logits are dropped at once (`_FusedOutputLoss`): no logits are kept for the backward pass
and none are computed twice. Where the output layer itself is trained, the chunks are instead
checkpointed through autograd.

Tool calls are a few percent of the DM's tokens and the narration is most of the loss, so a call
can be learned late or never. `call_weight` scales the tokens that decide and write a call: every
tool call's tokens, and the first and last tokens of a turn that makes none ("no roll here").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from dmforge.contract.chat import IGNORE
from dmforge.training.lora import compute_in_base_dtype

CHUNK = 1024  # output-layer rows per chunk: a few hundred MB of logits at most, for any vocabulary


def _model_parts(model):
    """The decoder (hidden states), the output layer and Gemma-style logit soft-capping of a (PEFT) model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings(), getattr(base.config, "final_logit_softcapping", None)


def output_logits(lm_head, hidden: torch.Tensor, softcap: float | None) -> torch.Tensor:
    logits = lm_head(hidden).float()
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def _chunk_loss(lm_head, softcap, hidden: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (F.cross_entropy(output_logits(lm_head, hidden, softcap), targets, reduction="none") * weights).sum()


class _FusedOutputLoss(torch.autograd.Function):
    """sum_i w_i * CE(softcap(W h_i), t_i), with d/dh computed in the forward pass; W is frozen."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, weights, softcap):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden)
        rows = torch.arange(min(CHUNK, len(targets)), device=hidden.device)
        for start in range(0, len(targets), CHUNK):
            h, t, w = hidden[start : start + CHUNK], targets[start : start + CHUNK], weights[start : start + CHUNK]
            logits = (h @ weight.T).float()
            if softcap:
                squashed = torch.tanh(logits / softcap)
                logits = squashed * softcap
            picked = rows[: len(t)]
            gold = logits[picked, t]
            # One pass of exp serves the loss (log of the sum) and the gradient (the softmax), in place.
            top = logits.amax(dim=-1, keepdim=True)
            d_logits = logits.sub_(top).exp_()
            sums = d_logits.sum(dim=-1, keepdim=True)
            total += ((top + sums.log()).squeeze(-1) - gold).mul(w).sum()
            # d CE / d logits = softmax - onehot, scaled by the token's weight.
            d_logits.div_(sums)
            d_logits[picked, t] -= 1.0
            d_logits.mul_(w[:, None])
            if softcap:  # d(c * tanh(x / c)) / dx = 1 - tanh^2
                d_logits.mul_(1.0 - squashed.square())
            grad[start : start + CHUNK] = d_logits.to(weight.dtype) @ weight
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        (grad,) = ctx.saved_tensors
        return grad * grad_total.to(grad.dtype), None, None, None, None


def _fusable(lm_head) -> bool:
    """A plain, frozen, bias-free linear output layer: the fused loss applies."""
    weight = getattr(lm_head, "weight", None)
    return (
        isinstance(lm_head, torch.nn.Linear)
        and lm_head.bias is None
        and weight is not None
        and not weight.requires_grad
    )


def trained_hidden(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    hidden: torch.Tensor | None = None,
):
    """Hidden states at the positions that predict a trained token, those tokens, and where they sit.

    `hidden` is the decoder's output when it was computed already (from the frozen layers' cache).
    """
    decoder, lm_head, softcap = _model_parts(model)
    if hidden is None:
        with compute_in_base_dtype(model):
            hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != IGNORE
    return hidden[:, :-1][mask], targets[mask], mask, lm_head, softcap


def dm_turn_loss(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    decoded: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float]:
    """Weighted sum of next-token cross-entropy over the trained positions, and the sum of the weights.

    Returning sums (not a mean) lets a step with several micro-batches divide by the step's total
    weight, so every trained token counts the same whichever micro-batch it landed in. `decoded` is the
    decoder's output when the caller computed it (training/frozen.py).
    """
    hidden, targets, mask, lm_head, softcap = trained_hidden(model, input_ids, attention_mask, labels, decoded)
    w = torch.ones_like(targets, dtype=torch.float32) if weights is None else weights[:, 1:][mask].float()
    if hidden.requires_grad and _fusable(lm_head):
        return _FusedOutputLoss.apply(hidden, lm_head.weight, targets, w, softcap), float(w.sum())
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets), CHUNK):
        piece = slice(start, start + CHUNK)
        args = (lm_head, softcap, hidden[piece], targets[piece], w[piece])
        # Recomputing a chunk's logits in the backward pass keeps only one chunk's logits alive at a time.
        if hidden.requires_grad:
            total = total + checkpoint(_chunk_loss, *args, use_reentrant=False)
        else:
            total = total + _chunk_loss(*args)
    return total, float(w.sum())


def full_logits_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None):
    """The same loss from a model's full logits: the reference the gathered path is tested against."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    w = torch.ones_like(targets, dtype=torch.float32) if weights is None else weights[:, 1:].float()
    w = w * (targets != IGNORE)
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
    )
    return (per_token * w.reshape(-1)).sum(), float(w.sum())
