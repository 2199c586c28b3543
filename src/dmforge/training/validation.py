"""Validation during training: the loss, and whether the DM would ask for the right roll.

Validation loss is a poor guide to what ships: in an 8-epoch run on the sample corpus it was lowest
at step 35, long before the model ever wrote a call, while the calls kept improving as the
narration loss rose. So each evaluation also scores the held-out DM turns the way the app needs
them, in the same single forward pass that gives the loss (teacher-forced, so it costs nothing
extra):

- **decision**: where each DM turn starts a call, the model's most likely next token is the gold
  call's; for a turn without calls, its first token is not predicted as a bracket, and its end is
  predicted where the gold ends;
- **intent**: each gold call's name and positional values (`[roll: perception`) are the model's
  most likely tokens, given the text before them;
- **exact**: the same for the whole call, keyword arguments included;
- **opening after a player / after a tool result**: per DM turn, whether its first token opens a
  call exactly when the gold turn does, split by who spoke last. The two fail differently (a model
  can call after every player line and never after a hit), and a single decision figure hides it.

The adapter that ships is the one with the best `call_score`, their mean (ties go to the lower loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dmforge.contract.chat import Sample
from dmforge.training.batches import collate
from dmforge.training.batches import to_device as _to
from dmforge.training.loss import CHUNK, output_logits, trained_hidden


@dataclass
class Validation:
    loss: float
    decision: float | None
    intent: float | None
    exact: float | None
    # Intent per tool (`roll`, `attack`, …): where the calls go wrong, the skill or the dice.
    intent_per_tool: dict[str, float] = field(default_factory=dict)
    opening_after_player: float | None = None
    opening_after_tool: float | None = None

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
            "intent_per_tool": self.intent_per_tool,
            "opening_after_player": self.opening_after_player,
            "opening_after_tool": self.opening_after_tool,
        }


def _ratio(hits: int, total: int) -> float | None:
    return hits / total if total else None


def _correct_tokens(model, sample: Sample, device: str, cache=None) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Per position, the model's top next-token prediction and whether it is the gold token; the summed loss."""
    batch = _to(collate([sample], pad_id=0), device)
    ids, attention = batch["input_ids"], batch["attention_mask"]
    decoded = cache.last_hidden([sample], ids, attention) if cache is not None else None
    hidden, targets, mask, lm_head, softcap = trained_hidden(model, ids, attention, batch["labels"], decoded)
    tops, loss = [], 0.0
    for start in range(0, len(targets), CHUNK):
        logits = output_logits(lm_head, hidden[start : start + CHUNK], softcap)
        loss += float(F.cross_entropy(logits, targets[start : start + CHUNK], reduction="sum"))
        tops.append(logits.argmax(-1))
    predicted = torch.full((len(sample.input_ids),), -1, dtype=torch.long)
    positions = mask[0].nonzero().squeeze(-1).cpu() + 1  # the token each prediction is for
    predicted[positions] = torch.cat(tops).cpu()
    return predicted == torch.tensor(sample.input_ids), predicted, loss, len(targets)


def validate(
    model, samples: list[Sample], device: str, bracket_ids: frozenset[int] = frozenset(), cache=None
) -> Validation:
    """Loss per DM token and the teacher-forced call metrics over `samples`.

    `bracket_ids` are the tokens that open a call (whose text holds a `[`): predicting one where the gold
    turn makes no call is a wrong decision. With a `cache`, the frozen layers run once per sample.
    """
    model.eval()
    total, count = 0.0, 0
    decisions = [0, 0]
    intents = [0, 0]
    exacts = [0, 0]
    per_tool: dict[str, list[int]] = {}
    openings = {False: [0, 0], True: [0, 0]}  # after a tool result? → [right, turns]
    with torch.no_grad():
        for sample in samples:
            correct, predicted, loss, n = _correct_tokens(model, sample, device, cache)
            total, count = total + loss, count + n
            for call in sample.calls:
                decisions[0] += bool(correct[call.start])
                decisions[1] += 1
            for first, end in sample.quiet_turns:
                decisions[0] += int(predicted[first]) not in bracket_ids and bool(correct[end])
                decisions[1] += 1
            for call in sample.calls:
                right = bool(correct[call.start : call.intent_end].all())
                intents[0] += right
                exacts[0] += bool(correct[call.start : call.end].all())
                intents[1] += 1
                exacts[1] += 1
                tally = per_tool.setdefault(call.intent.split(":")[0], [0, 0])
                tally[0] += right
                tally[1] += 1
            _tally_openings(sample, correct, predicted, bracket_ids, openings)
    model.train()
    by_tool = {tool: hits / n for tool, (hits, n) in sorted(per_tool.items())}
    return Validation(
        total / max(count, 1),
        _ratio(*decisions),
        _ratio(*intents),
        _ratio(*exacts),
        by_tool,
        _ratio(*openings[False]),
        _ratio(*openings[True]),
    )


def _tally_openings(sample: Sample, correct, predicted, bracket_ids: frozenset[int], openings: dict) -> None:
    """Per trained turn: does its first predicted token open a call exactly when the gold turn's does?"""
    call_starts = {call.start for call in sample.calls}
    for (first, _), after_tool in zip(sample.dm_spans, sample.after_tool, strict=False):
        if first >= len(predicted) or int(predicted[first]) < 0:
            continue
        right = bool(correct[first]) if first in call_starts else int(predicted[first]) not in bracket_ids
        openings[after_tool][0] += right
        openings[after_tool][1] += 1
