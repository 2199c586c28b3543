"""The floor every recipe must beat: a keyword classifier that reads only the line the DM answers.

    .venv/bin/python bench/label_probe.py                       # the shipped corpus
    .venv/bin/python bench/label_probe.py --scenarios my/corpus --json

For every DM turn, the label is what its first call asks for (`roll: perception`, `attack: longsword`,
`initiative`) or `none`. A TF-IDF bag of words and word pairs of the message the DM answers (the
player's line, or the tool results it continues from) feeds a logistic regression. The predicted
label becomes a reply (the calls most often written with that label in the training folds), and the
reply is scored with the project's own metric code (evaluation/metrics.py), so the figures sit in the
same table as the model's.

Two rows:

- **cross-validated by whole scenario** over the whole corpus (5 folds, `GroupKFold`): how consistent
  the corpus is, whatever the split: a corpus whose rules are clear scores high here;
- **the validation split**: trained on the training split, scored on the held-out scenarios that the
  model is scored on (`dmforge data build`'s split), so its figures compare with the model's.

The classifier sees nothing but words, so it cannot know a weapon's dice or a target's name: its
intent and exact match are low by construction, and its skill accuracy when both roll is the figure
that says whether the corpus maps actions to checks consistently.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tables import cell  # noqa: E402

from dmforge.config import load_config  # noqa: E402
from dmforge.dataset.build import held_out_ids  # noqa: E402
from dmforge.dataset.conversation import to_conversation  # noqa: E402
from dmforge.dataset.split import split_scenarios  # noqa: E402
from dmforge.evaluation.metrics import aggregate, reply_brackets, score_turn  # noqa: E402
from dmforge.scenarios import check_paths  # noqa: E402
from dmforge.tools.registry import Registry, load_registry  # noqa: E402

COLUMNS = [
    ("call_decision_accuracy", "decision"),
    ("intent_match", "intent"),
    ("exact_call_match", "exact"),
    ("tool_accuracy", "tool, when both call"),
    ("argument_accuracy", "argument, when both call"),
    ("roll_subject_accuracy", "roll subject, when both roll"),
]


def dm_turns(conversations: list[dict], registry: Registry) -> list[dict]:
    """Every DM turn: the message it answers, its gold reply, its label, its scenario and category."""
    out = []
    for c in conversations:
        messages = c["messages"]
        for i, m in enumerate(messages):
            if m["role"] != "assistant" or i == 0:
                continue
            calls, _, _, _ = reply_brackets(m["content"], registry)
            label = "none"
            if calls:
                first = calls[0].normalized()
                label = f"{first.name}: {', '.join(first.positional)}" if first.positional else first.name
            out.append(
                {
                    "scenario": c["scenario"],
                    "category": c["category"],
                    "answers": messages[i - 1]["content"],
                    "gold": m["content"],
                    "label": label,
                    "calls": "\n".join(str(call) for call in calls),
                }
            )
    return out


def fit_and_predict(train: list[dict], test: list[dict]) -> list[str]:
    """The predicted reply for every test turn: the usual calls of the label the classifier picks."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    labels = [t["label"] for t in train]
    if len(set(labels)) == 1:
        chosen = labels * len(test)
    else:
        model = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
            LogisticRegression(max_iter=2000, C=10.0),
        )
        model.fit([t["answers"] for t in train], labels)
        chosen = list(model.predict([t["answers"] for t in test]))
    usual: dict[str, Counter] = defaultdict(Counter)
    for t in train:
        usual[t["label"]][t["calls"]] += 1
    return [usual[label].most_common(1)[0][0] if label != "none" else "" for label in chosen]


def score(test: list[dict], replies: list[str], registry: Registry) -> dict:
    verdicts = [score_turn(reply, t["gold"], registry) for t, reply in zip(test, replies, strict=True)]
    return aggregate(verdicts, [t["category"] for t in test])


def cross_validated(turns: list[dict], registry: Registry, folds: int) -> dict:
    from sklearn.model_selection import GroupKFold

    groups = [t["scenario"] for t in turns]
    ordered: list[dict] = []
    replies: list[str] = []
    for train_index, test_index in GroupKFold(n_splits=folds).split(turns, groups=groups):
        train, test = [turns[i] for i in train_index], [turns[i] for i in test_index]
        ordered += test
        replies += fit_and_predict(train, test)
    return score(ordered, replies, registry)


def probe(scenarios: Path, folds: int = 5, validation_list: Path | None = None) -> dict:
    config = load_config(None, {"data": {"scenarios": scenarios, "validation_list": validation_list}})
    registry = load_registry(config.data.tool_registry)
    report = check_paths([scenarios], registry, config.data.max_file_bytes)
    every = [to_conversation(s, config.data) for s in report.scenarios]
    data = config.data
    held = held_out_ids(data, report.scenarios)
    _, validation_split = split_scenarios(report.scenarios, data.validation_fraction, data.seed, held)
    held_out = {s.id for s in validation_split}
    turns = dm_turns(every, registry)
    train = [t for t in turns if t["scenario"] not in held_out]
    validation = [t for t in turns if t["scenario"] in held_out]
    return {
        "scenarios": len(every),
        "dm_turns": len(turns),
        "cross_validated": cross_validated(turns, registry, min(folds, len({t["scenario"] for t in turns}))),
        "validation_split": score(validation, fit_and_predict(train, validation), registry) if validation else {},
        "validation_turns": len(validation),
    }


def table(result: dict) -> str:
    lines = [
        "| keyword baseline | " + " | ".join(label for _, label in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    rows = [
        (f"cross-validated by scenario ({result['dm_turns']} turns)", result["cross_validated"]),
        (f"validation split ({result['validation_turns']} turns)", result["validation_split"]),
    ]
    for name, metrics in rows:
        lines.append(f"| {name} | " + " | ".join(cell(metrics.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", type=Path, default=ROOT / "data" / "scenarios", help="The corpus to probe.")
    parser.add_argument("--folds", type=int, default=5, help="Cross-validation folds (whole scenarios).")
    parser.add_argument("--validation-list", type=Path, help="Hold out these scenario ids (data.validation_list).")
    parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = parser.parse_args()
    result = probe(args.scenarios, args.folds, args.validation_list)
    if args.json:
        for part in ("cross_validated", "validation_split"):
            result[part].pop("per_tool", None)
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        sys.stdout.write(table(result))


if __name__ == "__main__":
    main()
