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


def test_the_report_shows_the_roll_confusion_and_the_decision_per_category(tmp_path: Path, registry):
    from dmforge.evaluation.metrics import aggregate, score_turn
    from dmforge.evaluation.report import write_reports

    verdicts = [
        score_turn("[roll: insight]", "[roll: perception]", registry),
        score_turn("[roll: perception]", "[roll: perception]", registry),
        score_turn("Quiet.", "Quiet.", registry),
    ]
    metrics = aggregate(verdicts, ["exploration", "exploration", "social"])
    report = {"title": "t", "source": "s", "turns": 3, "models": {"F16": metrics}, "ship": None}
    write_reports(tmp_path, report)
    assert (tmp_path / "roll-confusion.png").read_bytes().startswith(b"\x89PNG")
    md = (tmp_path / "report.md").read_text()
    assert "| roll subject right, when both roll | 0.500 |" in md
    assert "| exploration | 2 | 1.000 | 1.000 | 1.000 |" in md and "| social | 1 | 1.000 | 0.000 | 0.000 |" in md
    page = (tmp_path / "report.html").read_text()
    assert "Which roll, when both roll" in page and "data:image/png;base64," in page
