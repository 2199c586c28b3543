"""The app's TypeScript comes from real `.ts` templates (src/dmforge/deploy/templates/), filled with data.

Two guards. The rendered modules are byte for byte what dmforge wrote before the templates existed: an app
that deploys a new version sees no change in dmTools.ts or dungeonMasterModel.ts unless the data changed.
And each template is TypeScript on its own, its generated blocks holding typed placeholders, so that
`tsc --strict` checks the template itself and not only what a deploy makes of it.

The digests follow the output: after a deliberate change to a template, or to the data it is filled with
(the built-in registry, the default config, the Python limits), check the new output and re-record them
with `.venv/bin/python tests/test_ts_templates.py`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ROOT, SMOLLM2_CHAT_FORMAT, sample_app_values
from dmforge.config import DecodeConfig, DmforgeConfig
from dmforge.deploy.app import completion_params
from dmforge.deploy.templates import TemplateError, render
from dmforge.deploy.tools_ts import tools_module
from dmforge.deploy.typescript import typescript_module
from dmforge.tools.registry import Registry, load_registry

TEMPLATES = ROOT / "src" / "dmforge" / "deploy" / "templates"
GOLDEN = json.loads((ROOT / "tests" / "golden" / "tool_calls.json").read_text(encoding="utf-8"))["registry"]


def _registry(vocabularies: dict, tools: dict, keep_tools: bool = True) -> Registry:
    """The built-in registry with these vocabularies and tools added (or, without keep_tools, as its only tools)."""
    data = load_registry().model_dump(mode="json")
    data["vocabularies"] |= vocabularies
    data["tools"] = (data["tools"] if keep_tools else {}) | tools
    return Registry.model_validate(data)


# A tool whose JSON needs ensure_ascii=False to stay readable in the app: the registry is written as it reads.
SPELL = {
    "cast": {
        "summary": "Cast a spell — its name, then the target, e.g. `[cast: fireball, target=the bridge…]`.",
        "positional": [{"name": "spell", "kinds": ["spell"]}],
        "keywords": {"target": {"kind": "text"}, "level": {"kind": "integer", "min": 1, "max": 9}},
    }
}


def _deployed_values(adapter: bool = False, **decode) -> dict:
    """The values deploy/app.py's app_values writes, in its order, for the default config and a fake GGUF."""
    config = DmforgeConfig(decode=decode)
    stop = [SMOLLM2_CHAT_FORMAT["end_of_turn"]]
    model = "dungeon-master-base-f16.gguf" if adapter else "dungeon-master.gguf"
    values = {
        "modelPath": f"assets/models/{model}",
        "mmprojPath": None,
        "androidAsset": f"models/{model}",
        "n_ctx": 1024,
        "stop": stop,
        "jinja": True,
        "toolResultRole": "tool",
        "toolResultPrefix": "",
        "systemTemplate": config.data.system_template,
        "defaultSystemPrompt": config.data.system_prompt,
        "messageFraming": SMOLLM2_CHAT_FORMAT["framing"],
        "replyHeaderTokens": SMOLLM2_CHAT_FORMAT["reply_header"],
        "completion": completion_params(config.decode, stop, load_registry()),
        "quantization": "F16 base + LoRA adapter" if adapter else "Q4_K_M",
        "version": "v1",
        "shippedBecause": "deploy.mode: adapter (base + adapter scored beside the merged files)"
        if adapter
        else "the smallest that keeps F16's calls",
        "sha256": "0" * 64,
        "bytes": 7,
    }
    if adapter:
        values["loraList"] = [{"path": "assets/models/dungeon-master-adapter.gguf", "scaled": 1.0}]
        values["androidLoraAssets"] = ["models/dungeon-master-adapter.gguf"]
        values["loraSha256"] = "1" * 64
        values["loraBytes"] = 5
    return values


RENDERS: dict[str, Callable[[], str]] = {
    "dmTools, built-in registry": lambda: tools_module(load_registry()),
    "dmTools, custom vocabulary and tool": lambda: tools_module(_registry(GOLDEN["vocabularies"], GOLDEN["tools"])),
    "dmTools, a non-ASCII tool alone": lambda: tools_module(
        _registry({"spell": ["fireball", "cure wounds"]}, SPELL, keep_tools=False)
    ),
    "dmTools, no tools": lambda: tools_module(_registry({}, {}, keep_tools=False)),
    "dungeonMasterModel, sample app values": lambda: typescript_module(sample_app_values()),
    "dungeonMasterModel, deployed merged": lambda: typescript_module(_deployed_values()),
    "dungeonMasterModel, deployed adapter": lambda: typescript_module(_deployed_values(adapter=True)),
    "dungeonMasterModel, lazy grammar": lambda: typescript_module(_deployed_values(grammar="lazy")),
    "dungeonMasterModel, no grammar": lambda: typescript_module(_deployed_values(grammar="off")),
    "dungeonMasterModel, tool results as user text": lambda: typescript_module(
        sample_app_values(
            toolResultRole="user",
            toolResultPrefix="Tool results:\n",
            systemTemplate="{system}\n\nWorld: {world} — {{x}}\x1c ",
            defaultSystemPrompt=" Be the DM…\n",
        )
    ),
    "dungeonMasterModel, only the window's values": lambda: typescript_module(
        {
            "n_ctx": 2048,
            "messageFraming": {},
            "replyHeaderTokens": 0,
            "completion": completion_params(DecodeConfig(), ["<|im_end|>"], load_registry()),
        }
    ),
}

# Taken from the output of the code before the refactor (the TypeScript held as Python strings in
# deploy/tools_ts.py and deploy/typescript.py): the templates reproduced it byte for byte. Changed on purpose
# since, with the digests re-recorded: dmTools.ts's comment on where the system message is composed
# (contract/system.py since the app contract moved into one package); the decoding of round 7 (a 16-token
# penalty window with DRY across quotes, and the grammar's bound of 4 calls per reply).
DIGESTS = {
    "dmTools, built-in registry": "4baa84edabf6c61f10f88e9b3541edca9637d75d3c570a1ead50cc40a330c759",
    "dmTools, custom vocabulary and tool": "9393d4b1a8d2eb2d4c74f36d6b17afa82801af135a2deb3206696bb5e6c6622d",
    "dmTools, a non-ASCII tool alone": "4ef92ed3f3de41191b75306b0437620d6903233e9f0489f709bb44ac071d021b",
    "dmTools, no tools": "dbfde6d94bf99bcdfb4a3f4fa57987b9dfe5ac216b9339ee4b921f51eb59e749",
    "dungeonMasterModel, sample app values": "873063600d9eb8351dbbe20025fb37e09651334675fbeaa805cd8e36070c1809",
    "dungeonMasterModel, deployed merged": "4955d079774bc5d44de9d9e89e2c661fa085bc7d897f10ad1ca9bba0a83a3b83",
    "dungeonMasterModel, deployed adapter": "b1b9636ad790997d73166a90b46b0fbd9a8a7f67aa7adf87944b6bb07c359b62",
    "dungeonMasterModel, lazy grammar": "9ede8792d4e83c7233720da7bc959fdd5efcd7767c5c58c01c09c9e1324e4d25",
    "dungeonMasterModel, no grammar": "37a05af7d2e79477a41d9d9a49d6c43fb5b76f45e81181a426a9f0e93a8b3ede",
    "dungeonMasterModel, tool results as user text": "2faa06679f95890d953c78a561612a11f59c9f5542c689302e483c09b993ce15",
    "dungeonMasterModel, only the window's values": "df5537b4f9d2b70958e04a36523a44482fd59bee9c6f42e146bce7f37dc632bc",
}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.mark.parametrize("name", list(RENDERS))
def test_the_rendered_typescript_is_byte_identical_to_the_pre_template_output(name):
    assert _digest(RENDERS[name]()) == DIGESTS[name]


def test_no_template_markup_reaches_the_app():
    for name, render_module in RENDERS.items():
        text = render_module()
        assert "@dmforge" not in text and "declare const" not in text, name


def test_each_template_compiles_on_its_own(tsc: Path, tmp_path: Path):
    """The templates as they are, placeholders and all, under the flags the generated modules are held to."""
    templates = sorted(TEMPLATES.glob("*.ts"))
    assert {t.name for t in templates} == {"dmTools.ts", "dungeonMasterModel.ts"}
    for template in templates:  # away from the repository's node_modules, whose @types tsc would load
        shutil.copy(template, tmp_path / template.name)
    flags = ["--strict", "--noUncheckedIndexedAccess", "--noUnusedLocals", "--noEmit", "--target", "es2020"]
    compiled = subprocess.run(
        ["node", str(tsc), *flags, "--module", "commonjs", *(t.name for t in templates)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr


def test_a_block_without_data_or_data_without_a_block_is_refused():
    with pytest.raises(TemplateError, match="no data is given for the block 'registry'"):
        render("dmTools.ts", {"limits": ""})
    with pytest.raises(TemplateError, match="filled"):
        render("dmTools.ts", {"limits": "", "registry": "", "extra": ""})


def test_the_templates_ship_with_the_package():
    """An installed (not editable) dmforge has only the files package-data names."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["dmforge"]
    package = ROOT / "src" / "dmforge"
    for template in TEMPLATES.glob("*.ts"):
        path = template.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(path, pattern) for pattern in patterns), path


if __name__ == "__main__":
    for name, render in RENDERS.items():
        print(f"    {json.dumps(name)}: {json.dumps(_digest(render()))},")
