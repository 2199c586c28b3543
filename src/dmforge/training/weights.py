"""How much each trained token weighs in the loss: narration, the call, and the call's argument.

A DM turn is mostly narration, and the loss is mostly narration's. What the app needs most is the
call, and within the call one or two tokens decide everything: in `[roll: perception]` the model
already knows `[roll:` from the scene (a check is due), and only ` perception` says *which* check.
So three weights, from light to heavy:

- narration: 1;
- the call's tokens, and the first and last token of a turn that makes none:
  `call_loss_weight`;
- each turn's first token, where a calls-first turn decides whether to call at all:
  `decision_loss_weight` (unset: the call weight);
- the first token of a turn that answers a player's line without a call, where a model trained on a
  corpus that mostly rolls learns to roll anyway: `quiet_opening_loss_weight` (unset: the decision
  weight). After a tool result the opposite mistake dominates, so those quiet openings keep theirs;
- the argument's tokens (the skill, save, weapon or dice right after the tool's name):
  `argument_loss_weight`.

With `call_balance: sqrt`, a call's argument weight is also scaled by the inverse square root of how
often its intent (`roll: perception`) occurs in the training set, normalised so that the mean over
all calls stays the same: a rare skill's six examples then pull as hard as a frequent skill's
twenty-five, against the collapse onto the frequent strings.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from dmforge.config import TrainConfig
from dmforge.contract.chat import Sample


@dataclass(frozen=True)
class TokenWeights:
    call: float = 1.0
    argument: float = 1.0
    decision: float | None = None  # None: the call weight
    quiet_opening: float | None = None  # None: the decision weight; only turns that answer a player
    balance: dict[str, float] = field(default_factory=dict)  # intent → factor on its argument weight

    def fill(self, row: torch.Tensor, sample: Sample) -> None:
        """Set the call and argument weights of one sample's row (already 1 on trained tokens, 0 elsewhere)."""
        if self.call != 1.0:
            for position in (t for turn in sample.quiet_turns for t in turn):
                row[position] = self.call
        for call in sample.calls:
            if self.call != 1.0:
                row[call.start : call.end] = self.call
            argument = self.argument * self.balance.get(call.intent, 1.0)
            if call.argument and argument != self.call:
                row[call.argument.start : call.argument.stop] = argument
        if self.decision is not None and self.decision != self.call:
            for first, _ in sample.dm_spans:
                row[first] = self.decision
        if self.quiet_opening is not None:
            quiet = {first for first, _ in sample.quiet_turns}
            for (first, _), after_tool in zip(sample.dm_spans, sample.after_tool, strict=True):
                if first in quiet and not after_tool:
                    row[first] = self.quiet_opening


def intent_balance(samples: list[Sample]) -> dict[str, float]:
    """Inverse square root of each intent's count among the calls, normalised to a mean of 1 over the calls."""
    counts = Counter(call.intent for s in samples for call in s.calls)
    if not counts:
        return {}
    raw = {intent: 1 / math.sqrt(n) for intent, n in counts.items()}
    mean = sum(raw[intent] * n for intent, n in counts.items()) / sum(counts.values())
    return {intent: value / mean for intent, value in raw.items()}


def token_weights(config: TrainConfig, samples: list[Sample]) -> TokenWeights:
    """The weights a run trains with; the balance is counted on its own training samples."""
    balance = intent_balance(samples) if config.call_balance == "sqrt" else {}
    return TokenWeights(
        call=config.call_loss_weight,
        argument=config.argument_loss_weight,
        decision=config.decision_loss_weight,
        quiet_opening=config.quiet_opening_loss_weight,
        balance=balance,
    )
