"""The tool contract in two languages: Python (training, evaluation) and the app's dmTools.ts, on golden cases.

The model writes calls such as `[roll: perception]`; the app must read and check them exactly as dmforge
did, so both implementations answer the same cases in tests/golden/tool_calls.json: every bracket the scan
finds (kind, text, line, code-point column, the parsed call, the error message), each call's canonical form
and the registry's problems with it. The TypeScript side also runs its agent loop, `runDmTurn`, against a
fake Cactus context (tests/tool_contract.test.ts, with node's test runner).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, sample_app_values
from dmforge.config import DataConfig
from dmforge.contract.system import compose_system_prompt
from dmforge.deploy.tools_ts import tools_module
from dmforge.deploy.typescript import typescript_module
from dmforge.scenarios.model import Header
from dmforge.tools import registry as tool_registry
from dmforge.tools.registry import Registry, check_call, load_registry
from dmforge.tools.syntax import Bracket, CallSyntaxError, parse, scan_brackets

GOLDEN = ROOT / "tests" / "golden" / "tool_calls.json"
CONTRACT = json.loads(GOLDEN.read_text(encoding="utf-8"))
TS_TEST = ROOT / "tests" / "tool_contract.test.ts"


def golden_registry(extra: dict) -> Registry:
    """The built-in registry plus the golden file's own tool and vocabulary (a user-defined kind)."""
    data = load_registry().model_dump(mode="json")
    data["vocabularies"] |= extra["vocabularies"]
    data["tools"] |= extra["tools"]
    return Registry.model_validate(data)


REGISTRY = golden_registry(CONTRACT["registry"])


def _bracket(bracket: Bracket, registry: Registry) -> dict:
    call = bracket.call
    found = {
        "kind": str(bracket.kind),
        "text": bracket.text,
        "line": bracket.line,
        "column": bracket.column,
        "call": None,
        "error": bracket.error,
    }
    if call is not None:
        found["call"] = {"name": call.name, "positional": list(call.positional), "keywords": list(call.keywords)}
        found["canonical"] = str(call)
        found["known"] = call.name in registry.tools
        found["problems"] = check_call(call, registry)
    return found


def python_brackets(text: str, limit: int | None, registry: Registry) -> list[dict]:
    return json.loads(json.dumps([_bracket(b, registry) for b in scan_brackets(text, limit)]))


def python_parse(text: str) -> dict:
    try:
        call = parse(text)
    except CallSyntaxError as exc:
        return {"call": None, "error": str(exc)}
    return {"call": {"name": call.name, "positional": list(call.positional), "keywords": list(call.keywords)}}


@pytest.mark.parametrize("case", CONTRACT["cases"], ids=[c["name"] for c in CONTRACT["cases"]])
def test_python_matches_the_golden_cases(case):
    assert python_brackets(case["text"], case["limit"], REGISTRY) == case["brackets"]


@pytest.mark.parametrize("case", CONTRACT["parse"], ids=[c["name"] for c in CONTRACT["parse"]])
def test_python_parse_matches_the_golden_cases(case):
    assert python_parse(case["text"]) == {k: v for k, v in case.items() if k in ("call", "error")}


def test_the_golden_cases_cover_every_kind_and_every_syntax_error():
    brackets = [b for case in CONTRACT["cases"] for b in case["brackets"]]
    assert {b["kind"] for b in brackets} == {"call", "link", "checkbox", "malformed", "unclosed", "not_a_call"}
    errors = [b["error"] for b in brackets if b["error"]] + [c["error"] for c in CONTRACT["parse"] if "error" in c]
    for message in (
        "is written in square brackets",
        "is not a tool name",
        "nothing follows the colon",
        "is not a valid argument name",
        "is given twice",
        "is empty",
        "which a call argument cannot hold",
        "comes after a key=value pair",
    ):
        assert any(message in e for e in errors), message
    problems = " ".join(p for b in brackets for p in b.get("problems", []))
    for message in (
        "Did you mean",
        "outside the dice limits",
        "cannot take",
        "is extra",
        "is not an option",
        "needs a",
    ):
        assert message in problems, message
    tools = {b["call"]["name"] for b in brackets if b["call"] and not b["problems"]}
    assert set(REGISTRY.tools) <= tools, "every tool has a valid call among the cases"


DEFAULT_PROMPT = " Be the DM.\n"  # what dungeonMasterModel.defaultSystemPrompt holds in the TypeScript test


def _system_cases() -> tuple[str, list[dict]]:
    """A template with every placeholder and literal braces, and what Python composes from it."""
    template = "{system}\n\nWorld: {world}\nLocation: {location}\nParty: {party}\n{title} ({category}; {tags}; {level}) {{x}}\x1c "
    config = DataConfig(system_template=template, system_prompt=DEFAULT_PROMPT)
    fields = [
        {"world": "Greyhawk ", "location": "Hommlet", "party": "Ana; Bo", "title": "T", "category": "combat"},
        {"system": "  Be terse.\x85", "world": "W", "location": "L", "party": "P", "title": "", "category": "general"},
        {"system": "\ufeffKeep it short.", "world": "", "location": "", "party": "", "title": "X", "category": "c"},
    ]
    tags = [["goblins", "ambush"], [], ["one"]]
    levels = [3, None, 11]
    cases = []
    for field, tag, level in zip(fields, tags, levels, strict=True):
        header = Header(**{k: v for k, v in field.items() if k != "system"}, tags=tag, level=level)
        cases.append(
            {
                "fields": field | {"tags": tag, "level": level},
                "content": compose_system_prompt(config, header, field.get("system")),
            }
        )
    return template, cases


def _run(command: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, **kw)


def test_typescript_matches_python_and_runs_the_agent_loop(tsc, tmp_path: Path):
    template, system_cases = _system_cases()
    values = sample_app_values(
        toolResultRole="user",
        toolResultPrefix="Tool results:\n",
        systemTemplate=template,
        defaultSystemPrompt=DEFAULT_PROMPT,
    )
    (tmp_path / "dungeonMasterModel.ts").write_text(typescript_module(values), encoding="utf-8")
    (tmp_path / "dmTools.ts").write_text(tools_module(REGISTRY), encoding="utf-8")
    shutil.copy(TS_TEST, tmp_path / TS_TEST.name)
    contract = CONTRACT | {"systemCases": system_cases, "toolNames": REGISTRY.names()}
    (tmp_path / "contract.json").write_text(json.dumps(contract, ensure_ascii=False), encoding="utf-8")
    compiled = _run(
        [
            *("node", str(tsc), "--strict", "--noUncheckedIndexedAccess", "--noUnusedLocals", "--target", "es2020"),
            *("--module", "commonjs", "--outDir", "js", TS_TEST.name),
        ],
        cwd=tmp_path,  # away from any node_modules/@types, which tsc would load into the compile
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    ran = _run(
        # The spec reporter repeats the failing tests at the end, where the message below shows them.
        ["node", "--test", "--test-reporter=spec", str(tmp_path / "js" / TS_TEST.name.replace(".ts", ".js"))],
        env={"PATH": os.environ["PATH"], "DMFORGE_CONTRACT": str(tmp_path / "contract.json")},
    )
    assert ran.returncode == 0, ran.stdout[-6000:] + ran.stderr[-2000:]
    assert "fail 0" in ran.stdout and "pass 0" not in ran.stdout, ran.stdout[-2000:]


def test_dmtools_is_generated_from_the_registry_and_the_python_limits():
    module = tools_module(REGISTRY)
    assert "import { dungeonMasterModel, dungeonMasterWindow } from './dungeonMasterModel';" in module
    assert (
        'export type DmToolName = "attack" | "condition" | "damage" | "heal" | "initiative" | "inventory" | "roll";'
        in module
    )
    assert '"inventory_action": [' in module and "cactus-react-native'" not in module
    assert f"export const MAX_DICE_TEXT = {tool_registry.MAX_DICE_TEXT};" in module
    assert f"export const MAX_ARGUMENTS = {tool_registry.MAX_ARGUMENTS};" in module


def regenerate() -> None:
    """Rewrite the golden expectations from Python's current answers (after a deliberate change)."""
    for case in CONTRACT["cases"]:
        case["brackets"] = python_brackets(case["text"], case["limit"], REGISTRY)
    for case in CONTRACT["parse"]:
        for key in ("call", "error"):
            case.pop(key, None)
        case |= python_parse(case["text"])

    def entry(key: str, value) -> str:  # one case a line: a diff shows which cases changed
        if not isinstance(value, list):
            return f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}"
        items = ",\n".join(f"    {json.dumps(item, ensure_ascii=False)}" for item in value)
        return f"  {json.dumps(key)}: [\n{items}\n  ]"

    GOLDEN.write_text("{\n" + ",\n".join(entry(k, v) for k, v in CONTRACT.items()) + "\n}\n", encoding="utf-8")


if __name__ == "__main__":
    regenerate()
    print(f"wrote {GOLDEN.relative_to(ROOT)}", file=sys.stderr)
