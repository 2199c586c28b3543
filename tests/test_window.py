"""The context window: one rule in Python and in the app's TypeScript, checked on shared golden cases."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import ROOT
from dmforge.contract.window import context_window, turn_units, window_start
from dmforge.deploy.typescript import typescript_module

CASES = json.loads((ROOT / "tests" / "golden" / "window_cases.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_python_window_matches_the_golden_cases(case):
    assert window_start(case["roles"], case["costs"], case["budget"]) == case["start"]


def test_units_keep_a_dm_turn_with_its_tool_results():
    assert turn_units(["system", "user", "assistant", "tool", "assistant", "user"]) == [(1, 2), (2, 4), (4, 5), (5, 6)]


def test_context_window_keeps_the_system_message():
    messages = [{"role": r, "content": r} for r in ("system", "user", "assistant", "user")]
    assert [m["role"] for m in context_window(messages, [10, 50, 50, 5], 30)] == ["system", "user"]


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        window_start(["system", "user"], [1], 10)


VALUES = {
    "modelPath": "assets/models/dungeon-master.gguf",
    "n_ctx": 2048,
    "messageFraming": {"system": 5, "user": 5, "assistant": 6, "tool": 5},
    "replyHeaderTokens": 4,
    "completion": {"n_predict": 192, "stop": ["<|im_end|>"], "temperature": 0.0},
}


def test_typescript_window_matches_the_golden_cases(tsc, tmp_path):
    (tmp_path / "dungeonMasterModel.ts").write_text(typescript_module(VALUES))
    (tmp_path / "check.ts").write_text(
        "import { windowStart, dungeonMasterWindow } from './dungeonMasterModel';\n"
        "declare const process: { argv: string[] };\n"
        "declare function require(name: string): any;\n"
        "const cases = JSON.parse(require('fs').readFileSync(process.argv[2], 'utf8')).cases;\n"
        "const got = cases.map((c: any) => windowStart(c.roles, c.costs, c.budget));\n"
        "const msgs = ['system', 'user', 'assistant', 'user'].map((role) => ({ role, content: role }));\n"
        "const sent = dungeonMasterWindow(msgs, [1800, 100, 100, 10]).map((m) => m.role);\n"
        "console.log(JSON.stringify({ got, sent }));\n"
    )
    subprocess.run(
        [
            "node",
            str(tsc),
            "--strict",
            "--noUncheckedIndexedAccess",
            "--target",
            "es2020",
            "--module",
            "commonjs",
            "--outDir",
            str(tmp_path / "js"),
            str(tmp_path / "check.ts"),
        ],
        check=True,
        timeout=120,
    )
    out = subprocess.run(
        ["node", str(tmp_path / "js" / "check.js"), str(ROOT / "tests" / "golden" / "window_cases.json")],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["got"] == [c["start"] for c in CASES]
    # 2048 - 192 - 4 = 1852 tokens: the system message (1805) and the newest turn (15) fit, nothing older.
    assert result["sent"] == ["system", "user"]
