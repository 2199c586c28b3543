"""The ship rule: a smaller file ships only if it keeps F16's calls on every guarded metric and stays close to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmforge.errors import DmforgeError
from dmforge.export.ship import measured_choice, shortfalls

F16 = {"intent_match": 0.078, "call_decision_accuracy": 0.710, "call_validity": 1.0}


def _files(tmp_path: Path, sizes: dict[str, int]) -> dict[str, str]:
    out = {}
    for quant, size in sizes.items():
        path = tmp_path / f"{quant}.gguf"
        path.write_bytes(b"x" * size)
        out[quant] = str(path)
    return out


def test_near_zero_intent_no_longer_lets_a_file_that_lost_its_call_decisions_ship():
    # The default run of 2026-12-06: Q4_0 kept intent within 0.02 of F16's, but not its decisions, nor its logits.
    q4_0 = {"intent_match": 0.073, "call_decision_accuracy": 0.662, "call_validity": 1.0}
    lost = shortfalls(q4_0, F16, kl=0.405, max_drop=0.02, max_kl=0.1)
    assert lost == ["call decision 0.662 against F16's 0.710", "KL divergence from F16 0.405 above 0.1"]
    assert shortfalls(q4_0 | {"call_decision_accuracy": 0.70}, F16, kl=0.05, max_drop=0.02, max_kl=0.1) == []


def test_validity_and_a_missing_measurement_are_losses_and_nothing_to_measure_is_not():
    assert shortfalls(F16 | {"call_validity": 0.95}, F16, None, 0.02, 0.1) == [
        "call validity 0.950 against F16's 1.000"
    ]
    assert shortfalls(F16 | {"intent_match": None}, F16, None, 0.02, 0.1) == ["intent match – against F16's 0.078"]
    quiet = {"intent_match": None, "call_decision_accuracy": 1.0, "call_validity": None}
    assert shortfalls(quiet, quiet, 0.01, 0.02, 0.1) == []


def test_the_smallest_file_that_keeps_f16s_behaviour_ships(tmp_path: Path):
    files = _files(tmp_path, {"Q4_0": 1, "Q8_0": 2, "F16": 4})
    metrics = {"F16": F16, "Q4_0": F16 | {"call_decision_accuracy": 0.6}, "Q8_0": F16}
    quant, reason = measured_choice(files, metrics, {"Q4_0": 0.4, "Q8_0": 0.006}, 0.02, 0.1)
    assert quant == "Q8_0" and "within 0.02 of F16 on every guarded metric" in reason
    # With every smaller file short of F16, F16 itself ships.
    quant, reason = measured_choice(files, {"F16": F16, "Q4_0": metrics["Q4_0"]}, {"Q4_0": 0.4}, 0.02, 0.1)
    assert quant == "F16" and "reference" in reason
    with pytest.raises(DmforgeError, match="Run `dmforge eval` first"):
        measured_choice(files, {}, {}, 0.02, 0.1)
