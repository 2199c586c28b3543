"""notebooks/dmforge.ipynb: committed without outputs, and run top to bottom on a tiny budget (as CI does)."""

from __future__ import annotations

import os

import nbformat
import pytest

from conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "dmforge.ipynb"
SECTIONS = (
    "Environment and hardware",
    "Scenario check",
    "The dataset",
    "What the model is trained on",
    "Training",
    "Export and verification",
    "Evaluation",
    "Play it yourself",
    "Deploy",
    "Advanced",
)


def test_the_notebook_is_committed_without_outputs_and_has_every_stage():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), "strip the outputs"
    headings = [c.source.splitlines()[0] for c in notebook.cells if c.cell_type == "markdown"]
    for section in SECTIONS:
        assert any(section in h for h in headings), section
    # Every stage goes through dmforge.api, the functions the command runs: no second implementation.
    text = "\n".join(c.source for c in code)
    for call in ("dm.check(", "dm.build(", "dm.train(", "dm.export(", "dm.evaluate(", "dm.deploy("):
        assert call in text, call


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_on_a_tiny_budget(monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("DMFORGE_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # a failing cell raises CellExecutionError, with the cell and its traceback
    printed = "\n".join(
        o.get("text", "")
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "stream"
    )
    assert "training device:" in printed
    assert "checks, 0 failed" in printed
    assert "PLAYER: Ana:" in printed and "DM:" in printed
    assert "version v1:" in printed
    assert "`train.lora_r`" in printed  # the advanced section's refused value names the option
    # The cells tagged `plot` draw: the dataset's plots, the live loss curve, the evaluation chart.
    drawing = [c for c in notebook.cells if "plot" in c.metadata.get("tags", [])]
    assert len(drawing) == 3
    for cell in drawing:
        kinds = [(o.output_type, sorted(o.get("data", {}))) for o in cell.outputs]
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), f"{cell.source[:60]!r}: {kinds}"
