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


def test_the_report_shows_the_roll_confusion_and_the_decision_per_category_and_moment(tmp_path: Path, registry):
    from dmforge.evaluation.metrics import aggregate, score_turn
    from dmforge.evaluation.report import write_reports

    hit = "[attack: club, target=Ana] => 15, hit"
    verdicts = [
        score_turn("[roll: insight]", "[roll: perception]", registry),
        score_turn("[roll: perception]", "[roll: perception]", registry),
        score_turn("Quiet.", "Quiet.", registry),
        score_turn("Fifteen hits.", "[damage: 1d6, target=Ana]", registry, tool_results=hit),
    ]
    metrics = aggregate(verdicts, ["exploration", "exploration", "social", "combat"])
    report = {"title": "t", "source": "s", "turns": 4, "models": {"F16": metrics}, "ship": None}
    write_reports(tmp_path, report)
    assert (tmp_path / "roll-confusion.png").read_bytes().startswith(b"\x89PNG")
    md = (tmp_path / "report.md").read_text()
    assert "| roll subject right, when both roll | 0.500 |" in md
    assert "| exploration | 2 | 1.000 | 1.000 | 1.000 | 0 | 0 |" in md
    assert "| social | 1 | 1.000 | 0.000 | 0.000 | 0 | 0 |" in md
    assert "| after a player's line | 3 | 1.000 | 0.667 | 0.667 | 0 | 0 |" in md
    assert "| after a tool result | 1 | 0.000 | 1.000 | 0.000 | 1 | 0 |" in md, "the missed damage is counted"
    page = (tmp_path / "report.html").read_text()
    assert "Which roll, when both roll" in page and "data:image/png;base64," in page
