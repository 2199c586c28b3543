"""The PNGs dmforge writes for people, and that writing them leaves the caller's matplotlib alone."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from dmforge.evaluation.report import chart_png
from dmforge.training.plots import loss_curve_png


def test_charts_are_written_without_touching_pyplot_or_its_backend(tmp_path: Path):
    # A notebook's inline backend stopped drawing once dmforge had called matplotlib.use("Agg").
    import matplotlib.pyplot as plt

    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        before = plt.get_fignums()
        loss_curve_png(tmp_path / "loss.png", [(1, 3.0), (2, 2.5)], [(2, 2.7)], "run")
        chart_png(tmp_path / "metrics.png", {"base": {"call_decision_accuracy": 0.5}, "F16": {"intent_match": 0.2}})
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(previous)
    assert plt.get_fignums() == before
    for name in ("loss.png", "metrics.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
