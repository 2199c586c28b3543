"""The loss: cross-entropy on the DM's tokens only, weighted per token across a whole step.

Only the positions that predict a trained token go through the output layer. The prompt (system
message, players, tool results) is usually most of a sequence, and its vocabulary-wide logits
would be computed only to be thrown away: on SmolLM2 that is 49k floats per token. The hidden
states are gathered first and the output layer runs on those rows alone, in chunks, so memory
stays flat even for Gemma's 262k-word vocabulary.

Tool calls are a few percent of the DM's tokens and the narration is most of the loss, so a call
can be learned late or never. `call_weight` scales the tokens that decide and write a call: every
tool call's tokens, and the first and last tokens of a turn that makes none ("no roll here").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from dmforge.training.chat import IGNORE

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


def trained_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor):
    """Hidden states at the positions that predict a trained token, those tokens, and where they sit."""
    decoder, lm_head, softcap = _model_parts(model)
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
) -> tuple[torch.Tensor, float]:
    """Weighted sum of next-token cross-entropy over the trained positions, and the sum of the weights.

    Returning sums (not a mean) lets a step with several micro-batches divide by the step's total
    weight, so every trained token counts the same whichever micro-batch it landed in.
    """
    hidden, targets, mask, lm_head, softcap = trained_hidden(model, input_ids, attention_mask, labels)
    w = torch.ones_like(targets, dtype=torch.float32) if weights is None else weights[:, 1:][mask].float()
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
