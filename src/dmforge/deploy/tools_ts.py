"""The app's side of the tool contract: `dmTools.ts`, written by `dmforge deploy` beside `dungeonMasterModel.ts`.

The model writes calls such as `[roll: perception]`; the app must read them exactly as training and the
evaluation did, check them against the same registry, and run its agent loop the way the playtest does.
So this module writes, into the app, a line-for-line TypeScript port of `tools/syntax.py` (same results,
same error messages, same line and column numbers), of `tools/registry.py`'s `check_call` (with a small
dice reader for the d20 grammar in place of the `d20` package), the registry itself as data, the system
message as `contract.system.compose_system_prompt` builds it, and `runDmTurn`, one DM turn of the agent loop of
`evaluation/playtest.py`. tests/test_tool_contract.py holds both languages to the same golden cases.

The TypeScript itself is templates/dmTools.ts; this module only writes its data into it.
"""

from __future__ import annotations

import json

from dmforge.deploy.templates import render
from dmforge.tools import registry as reg
from dmforge.tools import syntax
from dmforge.tools.registry import Registry


def _constants() -> str:
    """The limits, from the Python modules that define them, so the two languages cannot drift apart."""
    values = {
        "MAX_DICE_TEXT": reg.MAX_DICE_TEXT,
        "MAX_DICE_TERMS": reg.MAX_DICE_TERMS,
        "MAX_DICE_COUNT": reg.MAX_DICE_COUNT,
        "MAX_DIE_SIDES": reg.MAX_DIE_SIDES,
        "MAX_ARGUMENTS": reg.MAX_ARGUMENTS,
        "UNCLOSED_SHOWN": syntax.UNCLOSED_SHOWN,
    }
    return "".join(f"export const {name} = {value};\n" for name, value in values.items())


def _registry(registry: Registry) -> str:
    """The registry as data, and its tool names as a type (`never` for a registry without tools)."""
    data = json.dumps(registry.model_dump(mode="json"), indent=2, ensure_ascii=False)
    names = " | ".join(json.dumps(name) for name in registry.names()) or "never"
    return f"export const dmToolRegistry: DmToolRegistry = {data};\n\nexport type DmToolName = {names};\n"


def tools_module(registry: Registry) -> str:
    """The text of `dmTools.ts` for `registry` (the registry the model was trained and evaluated with)."""
    return render("dmTools.ts", {"limits": _constants(), "registry": _registry(registry)})
