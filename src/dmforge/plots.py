"""Figures drawn off screen, for the PNGs every stage writes for people (loss curves, reports, the audit)."""

from __future__ import annotations

from pathlib import Path

from dmforge.files import partial_path


def figure(width: float, height: float, dpi: int = 110):
    """A matplotlib Figure drawn off screen, without pyplot: pyplot's global backend is the caller's (a notebook's
    inline plots stop working if a library switches it to Agg), and a Figure nobody registered needs no closing."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi)


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as PNG beside `path` and rename it in, so a crash never leaves half a PNG."""
    fig.tight_layout()
    tmp = partial_path(path)
    try:
        fig.savefig(tmp, format="png")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
