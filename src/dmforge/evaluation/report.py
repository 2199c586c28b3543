"""The evaluation report: one table of columns (base, fine-tuned F16, quantized files, greedy), the choice
of the file that ships, and a chart.

Written as `report.json` for programs, `report.md` for reading in a repository, and `report.html`
with a chart (`metrics.png`) for people.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from dmforge.files import write_text
from dmforge.plots import figure, save_figure

# (key, label, higher is better): the rows of the table, the app's behaviour first.
HEADLINE = [
    ("call_decision_accuracy", "call decision accuracy", True),
    ("intent_match", "intent match (right tool and roll)", True),
    ("exact_call_match", "exact call match", True),
    ("call_validity", "call validity", True),
    ("loop_rate", "loop rate", False),
    ("call_precision", "call precision", True),
    ("call_recall", "call recall", True),
    ("call_f1", "call F1", True),
    ("tool_accuracy", "tool right, when both call", True),
    ("argument_accuracy", "argument right, when both call", True),
    ("roll_subject_accuracy", "roll subject right, when both roll", True),
    ("continuation_consistency", "continuation consistency", True),
    ("in_character_rate", "in-character rate", True),
    ("mention_recall", "name and place mentions", True),
    ("median_length_ratio", "median length / gold", None),
    ("mean_reply_tokens", "mean reply tokens", None),
    ("perplexity", "perplexity on gold DM turns", False),
]


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _delta(a, b) -> str:
    return "–" if a is None or b is None else f"{b - a:+.3f}"


def comparisons(report: dict) -> list[tuple[str, str, str]]:
    """(label, before, after): fine-tuning against the base, and the shipped file against F16."""
    models = report["models"]
    pairs = [("Δ F16 vs base", "base", "F16")]
    shipped = (report.get("ship") or {}).get("quant")
    if shipped and shipped != "F16" and shipped in models:
        pairs.append((f"Δ {shipped} vs F16", "F16", shipped))
    return [p for p in pairs if p[1] in models and p[2] in models]


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    models = report["models"]
    pairs = comparisons(report)
    headers = ["metric", *models, *(label for label, _, _ in pairs)]
    rows = []
    for key, label, _ in HEADLINE:
        row = [label, *(_fmt(models[n].get(key)) for n in models)]
        row += [_delta(models[a].get(key), models[b].get(key)) for _, a, b in pairs]
        rows.append(row)
    return headers, rows


def chart_png(path: Path, models: dict[str, dict]) -> None:
    keys = [(k, label) for k, label, higher in HEADLINE[:8] if higher is not None]
    fig = figure(10, 4.2)
    ax = fig.subplots()
    width = 0.8 / max(1, len(models))
    for i, (name, metrics) in enumerate(models.items()):
        xs = [j + i * width for j in range(len(keys))]
        ax.bar(xs, [metrics.get(k) or 0 for k, _ in keys], width, label=name)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(keys))])
    ax.set_xticklabels([label for _, label in keys], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title("Tool calls on held-out DM turns (loop rate: lower is better)")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def confusion_png(path: Path, confusion: dict[str, dict[str, int]], title: str) -> None:
    """The roll-subject confusion matrix: gold check (rows) by the model's check (columns), as counts."""
    import numpy as np

    gold = sorted(confusion)
    predicted = sorted({p for row in confusion.values() for p in row} | set(gold))
    counts = np.array([[confusion[g].get(p, 0) for p in predicted] for g in gold], dtype=float)
    fig = figure(max(5.0, 0.38 * len(predicted) + 2.5), max(3.0, 0.34 * len(gold) + 2.0))
    ax = fig.subplots()
    ax.imshow(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    for i in range(len(gold)):
        for j in range(len(predicted)):
            if counts[i, j]:
                ax.text(j, i, f"{counts[i, j]:.0f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(predicted)), predicted, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(gold)), gold, fontsize=7)
    ax.set_xlabel("the model asked for")
    ax.set_ylabel("the scenario asked for")
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def category_rows(metrics: dict) -> list[list[str]]:
    """The call decision per scenario category, then after a player's line and after a tool result."""
    groups = {**(metrics.get("decision_per_category") or {}), **(metrics.get("decision_by_moment") or {})}
    return [
        [
            name,
            str(row["turns"]),
            _fmt(row["call_decision_accuracy"]),
            _fmt(row["gold_call_share"]),
            _fmt(row["predicted_call_share"]),
            str(row.get("missed_calls", "–")),
            str(row.get("extra_calls", "–")),
        ]
        for name, row in groups.items()
    ]


CATEGORY_HEADERS = ["turns of", "turns", "decision", "gold calls", "model calls", "calls missed", "calls extra"]


def _ship_lines(report: dict) -> list[str]:
    ship = report.get("ship")
    if not ship:
        return []
    lines = [
        f"Ships: **{ship['quant']}**, {ship['reason']}.",
        "",
        "| file | size | fallback matrices | KL vs F16 | intent match | call decision | validity | keeps F16's calls |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in ship["candidates"]:
        scored = row["evaluated"] or row.get("screened", False)
        kept = (
            "reference"
            if row["quant"] == "F16"
            else ("yes" if not row.get("shortfalls") else "; ".join(row["shortfalls"]))
        )
        if row.get("screened") and row["quant"] != "F16":  # F16 was scored on its openings only
            kept = f"{kept}, on the calls the replies open with"
        lines.append(
            f"| {row['quant']} | {row['bytes'] / 2**20:.0f} MB | {_fmt(row['fallback_share'])} | "
            f"{_fmt(row['kl_vs_f16'])} | "
            + " | ".join(
                _fmt(row.get(k)) if scored else "not scored"
                for k in ("intent_match", "call_decision_accuracy", "call_validity")
            )
            + f" | {kept if scored else 'not scored'} |"
        )
    return [*lines, ""]


def write_reports(out: Path, report: dict) -> None:
    """report.md and report.html (with metrics.png) from report.json's content; registry/runs.py writes the JSON."""
    models = report["models"]
    out.mkdir(parents=True, exist_ok=True)
    headers, rows = table_rows(report)
    decoding = report.get("decoding", {})
    windowed = report.get("windowed_turns", 0)
    intro = (
        f"{report['turns']} held-out DM turns from {report['source']}, each file run in llama.cpp as the app runs "
        f"it (n_ctx {report.get('n_ctx')}; {windowed} prompts cut to the context window)."
    )
    md = [f"# dmforge evaluation: {report['title']}", "", intro, ""]
    md += [f"- **{name}**: {label}" for name, label in decoding.items()]
    md += ["", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    md += ["", *_ship_lines(report)]
    shipped = (report.get("ship") or {}).get("quant")
    focus = shipped if shipped in models else next(iter(models), "")
    categories = category_rows(models.get(focus) or {})
    if categories:
        md += [f"Call decision per category and moment ({focus}):", "", "| " + " | ".join(CATEGORY_HEADERS) + " |"]
        md += ["|" + "---|" * len(CATEGORY_HEADERS), *("| " + " | ".join(row) + " |" for row in categories), ""]
    confusion = (models.get(focus) or {}).get("roll_confusion") or {}
    if confusion:
        confusion_png(out / "roll-confusion.png", confusion, f"Which roll, when both roll ({focus})")
        md += ["![roll confusion](roll-confusion.png)", ""]
    per_tool = (models.get(shipped) or {}).get("per_tool", {})
    if per_tool:
        md.append(
            f"Per-tool F1 ({shipped}): "
            + ", ".join(f"{tool} {_fmt(v['f1'])} (n={v['support']})" for tool, v in per_tool.items())
        )
    md += [
        "",
        "Per-turn prompts are in turns.jsonl, each column's predictions and verdicts in details.jsonl, "
        "the playtest in playtest.md.",
    ]
    write_text(out / "report.md", "\n".join(md) + "\n")
    chart_png(out / "metrics.png", models)
    image = base64.b64encode((out / "metrics.png").read_bytes()).decode()
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    legend = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(label)}</li>" for n, label in decoding.items())
    ship = "".join(f"<p>{html.escape(line)}</p>" for line in _ship_lines(report)[:1])
    if categories:
        ship += f"<h2>Call decision per category and moment ({html.escape(focus)})</h2><table>"
        ship += "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in CATEGORY_HEADERS) + "</tr>"
        ship += "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in categories)
        ship += "</table>"
    if confusion:
        matrix = base64.b64encode((out / "roll-confusion.png").read_bytes()).decode()
        ship += '<h2>Which roll, when both roll</h2><img alt="roll confusion" src="data:image/png;base64,'
        ship += matrix + '">'

    write_text(
        out / "report.html",
        f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dmforge evaluation</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}
td:first-child,th:first-child{{text-align:left}}</style></head><body>
<h1>dmforge evaluation: {html.escape(report["title"])}</h1>
<p>{html.escape(intro)}</p><ul>{legend}</ul>
<table><tr>{cells}</tr>{body}</table>{ship}
<img alt="metrics chart" src="data:image/png;base64,{image}" width="1000">
</body></html>
""",
    )
