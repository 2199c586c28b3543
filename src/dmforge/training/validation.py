"""Validation during training: the loss, and whether the DM would ask for the right roll.

Validation loss is a poor guide to what ships: in an 8-epoch run on the sample corpus it was lowest
at step 35, long before the model ever wrote a call, while the calls kept improving as the
narration loss rose. So each evaluation also scores the held-out DM turns the way the app needs
them, in the same single forward pass that gives the loss (teacher-forced, so it costs nothing
extra):

- **decision**: at the point where each DM turn either starts a call or ends, the model's most
  likely next token is the gold one (call, or "that's all");
- **intent**: each gold call's name and positional values (`[roll: perception`) are the model's
  most likely tokens, given the text before them;
- **exact**: the same for the whole call, keyword arguments included.

The adapter that ships is the one with the best `call_score`, their mean (ties go to the lower loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dmforge.training.batches import collate
from dmforge.training.batches import to_device as _to
from dmforge.training.chat import Sample
from dmforge.training.loss import CHUNK, output_logits, trained_hidden


@dataclass
class Validation:
    loss: float
    decision: float | None
    intent: float | None
    exact: float | None

    @property
    def call_score(self) -> float:
        parts = [v for v in (self.decision, self.intent, self.exact) if v is not None]
        return sum(parts) / len(parts) if parts else 0.0

    def to_json(self) -> dict:
        return {
            "loss": self.loss,
            "decision": self.decision,
            "intent": self.intent,
            "exact": self.exact,
            "call_score": self.call_score,
        }


def _ratio(hits: int, total: int) -> float | None:
    return hits / total if total else None


def _correct_tokens(model, sample: Sample, device: str) -> tuple[torch.Tensor, float, int]:
    """Per position, whether the model's top next-token prediction is the gold token; and the summed loss."""
    batch = _to(collate([sample], pad_id=0), device)
    hidden, targets, mask, lm_head, softcap = trained_hidden(
        model, batch["input_ids"], batch["attention_mask"], batch["labels"]
    )
    hits, loss = [], 0.0
    for start in range(0, len(targets), CHUNK):
        logits = output_logits(lm_head, hidden[start : start + CHUNK], softcap)
        gold = targets[start : start + CHUNK]
        loss += float(F.cross_entropy(logits, gold, reduction="sum"))
        hits.append(logits.argmax(-1) == gold)
    correct = torch.zeros(len(sample.input_ids), dtype=torch.bool)
    positions = mask[0].nonzero().squeeze(-1).cpu() + 1  # the token each prediction is for
    correct[positions] = torch.cat(hits).cpu()
    return correct, loss, len(targets)


def validate(model, samples: list[Sample], device: str) -> Validation:
    """Loss per DM token and the teacher-forced call metrics over `samples`."""
    model.eval()
    total, count = 0.0, 0
    decisions = [0, 0]
    intents = [0, 0]
    exacts = [0, 0]
    with torch.no_grad():
        for sample in samples:
            correct, loss, n = _correct_tokens(model, sample, device)
            total, count = total + loss, count + n
            for position in sample.decision_positions:
                decisions[0] += bool(correct[position])
                decisions[1] += 1
            for call in sample.calls:
                intents[0] += bool(correct[call.start : call.intent_end].all())
                exacts[0] += bool(correct[call.start : call.end].all())
                intents[1] += 1
                exacts[1] += 1
    model.train()
    return Validation(total / max(count, 1), _ratio(*decisions), _ratio(*intents), _ratio(*exacts))
