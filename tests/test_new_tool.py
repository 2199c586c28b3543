"""A new tool is learnt, not only registered: scan → add → a short real training → evaluation → deploy.

The fixture tool is `cast` (`[cast: fireball, level=3]`), used by eight small scenarios beside a few
from the sample corpus. After `dmforge tools add cast`, the whole pipeline runs on SmolLM2-135M for a
few steps, and every stage is shown to carry the new tool: the dataset's conversations, the rendered
training samples (the call's tokens are trained), the evaluation (a per-tool row for `cast` scored on
held-out turns), the grammar the app decodes with, and the app's TypeScript tool module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from dmforge.config import load_config
from dmforge.dataset.split import split_scenarios
from dmforge.scenarios import check_paths
from dmforge.tools.registry import load_registry

NEW_TOOL = ROOT / "tests" / "fixtures" / "new_tool"
CATEGORIES = ("combat", "exploration", "social")


def dmforge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dmforge", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800
    )


def _corpus(dest: Path) -> None:
    shutil.copytree(NEW_TOOL, dest)
    for category in CATEGORIES:
        for path in sorted((ROOT / "data" / "scenarios" / category).glob("*.md"))[:2]:
            (dest / category).mkdir(exist_ok=True)
            shutil.copy(path, dest / category / path.name)


@pytest.mark.slow
def test_a_new_tool_is_carried_by_every_stage(tmp_path: Path):
    project = tmp_path / "game"
    scenarios = project / "scenarios"
    project.mkdir()
    _corpus(scenarios)
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "dnd-game"}')
    config = {
        "data": {"scenarios": "scenarios", "validation_fraction": 0.3, "out": "dataset"},
        "train": {
            "runs_root": "runs",
            "max_steps": 4,
            "grad_accum": 1,
            "max_seq_len": 768,
            "eval_every": 4,
            "save_every": 4,
            "preflight_steps": 1,
        },
        "decode": {"n_predict": 48},
    }
    (project / "dmforge.yaml").write_text(yaml.safe_dump(config))

    before = dmforge("tools", "scan", "--json", cwd=project)
    assert before.returncode == 1 and "cast" in json.loads(before.stdout)["unregistered"]
    added = dmforge("tools", "add", "cast", cwd=project)
    assert added.returncode == 0, added.stdout + added.stderr
    registry = load_registry(project / "tools.yaml")
    assert "cast" in registry.tools

    # The split is by hashed scenario id: some `cast` scenarios are held out, so the evaluation sees the tool.
    checked = check_paths([scenarios], registry)
    _, held_out = split_scenarios(checked.scenarios, 0.3, load_config(project / "dmforge.yaml").data.seed)
    assert any(s.id.startswith("magic/") for s in held_out)

    result = dmforge("pipeline", "--app", str(app), cwd=project)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    run = project / "runs" / "smollm2-135m"

    lines = (run / "dataset" / "train.jsonl").read_text().splitlines()
    conversations = [json.loads(line) for line in lines if line]
    stats = json.loads((run / "dataset" / "stats.json").read_text())
    assert "cast" in json.dumps(stats)
    assert any("[cast:" in m["content"] for c in conversations for m in c["messages"] if m["role"] == "assistant")

    from transformers import AutoTokenizer

    from dmforge.contract.chat import IGNORE, build_samples, detect_chat_format

    tokenizer = AutoTokenizer.from_pretrained(run / "merged")
    fmt = detect_chat_format(tokenizer)
    samples = build_samples(tokenizer, fmt, conversations, 768)
    cast_spans = [
        (s, c) for s in samples for c in s.calls if tokenizer.decode(s.input_ids[c.start : c.end]).startswith("[cast")
    ]
    assert cast_spans, "the rendered samples hold the new tool's calls"
    assert all(all(s.labels[i] != IGNORE for i in range(c.start, c.end)) for s, c in cast_spans), "and train them"

    report = json.loads((run / "eval" / "report.json").read_text())
    rows = [m["per_tool"]["cast"] for m in report["models"].values() if "cast" in m.get("per_tool", {})]
    assert rows and all(row["support"] >= 1 for row in rows), "the evaluation scores the new tool on held-out turns"
    assert "cast" in (run / "eval" / "report.md").read_text()

    values = json.loads((app / "assets" / "models" / "dungeon-master.json").read_text())
    assert "tool-cast" in values["completion"]["grammar"]
    tools_ts = next(app.rglob("dmTools.ts")).read_text()
    assert '"cast"' in tools_ts
