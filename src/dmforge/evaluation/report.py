"""The evaluation report: one table, three columns (base, fine-tuned, GGUF), with deltas.

Written as `report.json` for programs, `report.md` for reading in a repository, and `report.html`
with a chart (`metrics.png`) for people.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from dmforge.files import write_json, write_text
from dmforge.training.plots import save_figure

HEADLINE = [
    ("call_decision_accuracy", "call decision accuracy", True),
    ("call_precision", "call precision", True),
    ("call_recall", "call recall", True),
    ("call_f1", "call F1", True),
    ("exact_call_match", "exact call match", True),
    ("call_validity", "call validity", True),
    ("continuation_consistency", "continuation consistency", True),
    ("in_character_rate", "in-character rate", True),
    ("mention_recall", "name and place mentions", True),
    ("median_length_ratio", "median length / gold", None),
    ("perplexity", "perplexity on gold DM turns", False),
]


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _delta(a, b) -> str:
    if a is None or b is None:
        return "–"
    return f"{b - a:+.3f}"


def table_rows(models: dict[str, dict]) -> list[list[str]]:
    names = list(models)
    rows = []
    for key, label, _ in HEADLINE:
        values = [models[n].get(key) for n in names]
        row = [label, *(_fmt(v) for v in values)]
        if "base" in models and "fine-tuned" in models:
            row.append(_delta(models["base"].get(key), models["fine-tuned"].get(key)))
        if "fine-tuned" in models and "gguf" in models:
            row.append(_delta(models["fine-tuned"].get(key), models["gguf"].get(key)))
        rows.append(row)
    return rows


def _headers(models: dict[str, dict]) -> list[str]:
    headers = ["metric", *models]
    if "base" in models and "fine-tuned" in models:
        headers.append("Δ fine-tuned vs base")
    if "fine-tuned" in models and "gguf" in models:
        headers.append("Δ GGUF vs fine-tuned")
    return headers


def chart_png(path: Path, models: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(k, label) for k, label, higher in HEADLINE if higher]
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    width = 0.8 / max(1, len(models))
    for i, (name, metrics) in enumerate(models.items()):
        xs = [j + i * width for j in range(len(keys))]
        ax.bar(xs, [metrics.get(k) or 0 for k, _ in keys], width, label=name)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(keys))])
    ax.set_xticklabels([label for _, label in keys], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title("Tool calls and narration on held-out DM turns (higher is better)")
    ax.legend()
    save_figure(fig, path)


def write_reports(out: Path, report: dict) -> None:
    models = report["models"]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    headers, rows = _headers(models), table_rows(models)
    md = [
        f"# dmforge evaluation: {report['title']}",
        "",
        f"{report['turns']} held-out DM turns from {report['source']}; greedy decoding.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    md += [
        "",
        "Per-tool F1 (fine-tuned): "
        + ", ".join(
            f"{tool} {_fmt(v['f1'])}" for tool, v in (models.get("fine-tuned") or {}).get("per_tool", {}).items()
        ),
        "",
        "Per-turn details (prompt, gold, prediction, verdict) are in details.jsonl; the playtest in playtest.md.",
    ]
    write_text(out / "report.md", "\n".join(md) + "\n")
    chart_png(out / "metrics.png", models)
    image = base64.b64encode((out / "metrics.png").read_bytes()).decode()
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    write_text(
        out / "report.html",
        f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dmforge evaluation</title>
<style>body{{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}
td:first-child,th:first-child{{text-align:left}}</style></head><body>
<h1>dmforge evaluation: {html.escape(report["title"])}</h1>
<p>{report["turns"]} held-out DM turns from {html.escape(report["source"])}; greedy decoding.</p>
<table><tr>{cells}</tr>{body}</table>
<img alt="metrics chart" src="data:image/png;base64,{image}" width="900">
</body></html>
""",
    )
