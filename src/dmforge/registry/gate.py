"""The quality gate: a new version reaches the app only if it is not worse than the one already there.

Both are measured on the same held-out turns with the same decoding (the deployed file is scored
as a column of the new run's evaluation), and each gated metric of the new version may be at most
`deploy.gate_tolerance` worse than the deployed one's (lower for the rates of good calls, higher for
the loop rate). A metric that one side
could not measure (no held-out turn called a tool, so no validity) is shown and not gated.
"""

from __future__ import annotations

from dataclasses import dataclass

LABELS = {
    "call_decision_accuracy": "call decision",
    "intent_match": "intent match",
    "exact_call_match": "exact call match",
    "call_validity": "call validity",
    "call_f1": "call F1",
    "loop_rate": "loop rate",
}
LOWER_IS_BETTER = {"loop_rate"}


@dataclass(frozen=True)
class GateRow:
    metric: str
    old: float | None
    new: float | None
    passed: bool


@dataclass(frozen=True)
class GateVerdict:
    against: str  # the deployed version's id
    rows: tuple[GateRow, ...]
    tolerance: float

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def table(self) -> str:
        lines = [f"  {'metric':<20}{'deployed ' + self.against:>16}{'new':>10}{'':>4}"]
        for r in self.rows:
            mark = "ok" if r.passed else "WORSE"
            lines.append(f"  {LABELS.get(r.metric, r.metric):<20}{_num(r.old):>16}{_num(r.new):>10}    {mark}")
        return "\n".join(lines)


def judge(new: dict, old: dict, metrics: list[str], tolerance: float, against: str) -> GateVerdict:
    rows = []
    for key in metrics:
        a, b = old.get(key), new.get(key)
        if a is None or b is None:
            rows.append(GateRow(key, a, b, True))
        elif key in LOWER_IS_BETTER:
            rows.append(GateRow(key, a, b, b <= a + tolerance + 1e-9))
        else:
            rows.append(GateRow(key, a, b, b >= a - tolerance - 1e-9))
    return GateVerdict(against, tuple(rows), tolerance)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
