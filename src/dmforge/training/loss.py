"""The loss: cross-entropy on the DM's tokens only, weighted per token across a whole step."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dmforge.training.chat import IGNORE


def dm_turn_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over trained positions, and how many there were.

    Returning the sum (not the mean) lets a step with several micro-batches divide by the step's
    total token count, so a short DM turn weighs as much per token as a long one.
    """
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    total = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return total, int((targets != IGNORE).sum())
