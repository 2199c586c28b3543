"""What every bench table shows of a scored column, and how a cell is written: one place, so that the
sweeps' tables line up with each other and with `dmforge eval`'s report."""

from __future__ import annotations

# The app's outcomes first, in the order of the report's ship table.
CALL_METRICS = [
    ("call_decision_accuracy", "decision"),
    ("intent_match", "intent"),
    ("exact_call_match", "exact"),
    ("call_validity", "validity"),
    ("loop_rate", "loops"),
]


def cell(value) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
