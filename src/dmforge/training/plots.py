"""Loss curves as a PNG and a small HTML page, for people rather than programs."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from dmforge.files import write_text
from dmforge.plots import figure, save_figure


def loss_curve_png(path: Path, train: list[tuple[int, float]], val: list[tuple[int, float]], title: str) -> None:
    fig = figure(7, 4)
    ax = fig.subplots()
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], label="training loss (DM tokens)", color="#4c72b0", lw=1)
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], "o-", label="validation loss", color="#dd8452")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def metrics_html(path: Path, png: Path, title: str, rows: dict[str, object]) -> None:
    image = base64.b64encode(png.read_bytes()).decode()
    table = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    write_text(
        path,
        f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:820px;margin:2em auto;color:#222}}
th{{text-align:left;padding-right:1.5em;font-weight:600}}td,th{{padding:.2em 0}}</style></head>
<body><h1>{html.escape(title)}</h1><img alt="loss curve" src="data:image/png;base64,{image}" width="770">
<table>{table}</table></body></html>
""",
    )
