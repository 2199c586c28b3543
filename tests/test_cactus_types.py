"""The generated TypeScript against the real cactus-react-native 0.2.11 types, as a game's cactus.ts would use it.

A small app file imports what `dmforge deploy` writes (dungeonMasterModel.ts and dmTools.ts, from real deploys:
grammar full, lazy and off, and adapter mode with its `loraList`), loads the model both ways Cactus offers
(`CactusLM.init` and `initLlama`), passes the completion parameters and hands a LlamaContext to `runDmTurn`,
and must compile with `tsc --strict`. TypeScript does not reject extra properties of an object that is not a
literal, so `{ ...dungeonMasterModel.completion }` would compile with a field Cactus ignores: the app file
asserts at compile time that every field is one of Cactus's, and a test proves that a bogus field fails the
build and is named.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, finished_run
from dmforge.config import DmforgeConfig
from dmforge.deploy import switch
from dmforge.deploy.app import deploy
from dmforge.deploy.typescript import typescript_module
from dmforge.registry.runs import AdapterExport, read_export, write_export
from dmforge.tools.registry import load_registry

CACTUS = "cactus-react-native@0.2.11"
TYPESCRIPT = "typescript@5.6.3"
# A throwaway app folder, kept between sessions under the git-ignored build/ (the package is ~400 MB unpacked).
FIXTURE = ROOT / "build" / "cactus-react-native-0.2.11"
NPM_INSTALL = [
    "npm",
    "install",
    "--no-audit",
    "--no-fund",
    "--ignore-scripts",
    "--legacy-peer-deps",
    CACTUS,
    TYPESCRIPT,
]


def _installed_version(package: str) -> str | None:
    manifest = FIXTURE / "node_modules" / package / "package.json"
    return json.loads(manifest.read_text())["version"] if manifest.is_file() else None


@pytest.fixture(scope="session")
def cactus() -> Path:
    """The folder holding node_modules with cactus-react-native and TypeScript, installed once."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js is not installed; CI has it")
    if _installed_version("cactus-react-native") != "0.2.11" or _installed_version("typescript") != "5.6.3":
        FIXTURE.mkdir(parents=True, exist_ok=True)
        # Its own package.json, or npm would walk up and install into the repository's node_modules.
        (FIXTURE / "package.json").write_text('{"name": "dmforge-cactus-types", "private": true}\n')
        started = time.monotonic()
        done = subprocess.run(NPM_INSTALL, cwd=FIXTURE, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.fail(
                f"npm could not install {CACTUS} into {FIXTURE} (the npm registry must be reachable):\n"
                + done.stderr[-3000:]
            )
        print(f"npm install {CACTUS} {TYPESCRIPT}: {time.monotonic() - started:.1f}s")
    return FIXTURE


def _deployed(tmp_path: Path, name: str, adapter: bool = False, **sections) -> Path:
    """A real `dmforge deploy` into a fresh app; returns the folder holding the generated TypeScript."""
    run = finished_run(tmp_path / "runs" / name, f"GGUF-{name}".encode())
    if adapter:
        base, lora = run / "gguf" / "base-f16.gguf", run / "gguf" / "lora.gguf"
        base.write_bytes(b"BASE-F16")
        lora.write_bytes(b"LORA-" + name.encode())
        record = AdapterExport.of(lora, base, merged_bytes=7, parity={"passed": True})
        write_export(run, read_export(run).model_copy(update={"adapter": record}))
        sections["deploy"] = {"mode": "adapter"}
    app = tmp_path / "apps" / name
    app.mkdir(parents=True)
    (app / "package.json").write_text('{"name": "dnd-game"}')
    deploy(run, app, DmforgeConfig(train={"runs_root": tmp_path / "runs"}, **sections), load_registry())
    return (app / switch.TARGETS["dmTools.ts"]).parent


def _app_file(lora: bool) -> str:
    """cactus.ts as a game would write it, with the compile-time checks of the completion fields."""
    lora_list = (
        ", lora_list: dungeonMasterModel.loraList.map((l) => ({ ...l, path: absolutePathOf(l.path) }))" if lora else ""
    )
    return f"""\
import {{ CactusLM, initLlama }} from 'cactus-react-native';
import type {{ CompletionParams, ContextParams, LlamaContext }} from 'cactus-react-native';
import {{ dungeonMasterModel, dungeonMasterWindow }} from './dmforge/dungeonMasterModel';
import {{ dungeonMasterSystemMessage, runDmTurn }} from './dmforge/dmTools';
import type {{ DmCompletionRequest, DmContext, DmFieldsNotIn, DmMessage }} from './dmforge/dmTools';

// Every completion field is one Cactus takes (a field it does not take fails here, by name) ...
export const completionFieldsCactusLacks: DmFieldsNotIn<CompletionParams> = {{}};
// ... with the type it takes, and so is what runDmTurn sends.
export const completionAsCactusTakesIt: CompletionParams = dungeonMasterModel.completion;
export const requestAsCactusTakesIt = (request: DmCompletionRequest): CompletionParams => request;
// Cactus's own context is what runDmTurn runs on.
export const contextAsDmContext = (context: LlamaContext): DmContext => context;

const absolutePathOf = (path: string): string => `/data/user/0/com.example.dnd/files/${{path}}`;
const params: ContextParams = {{
  model: absolutePathOf(dungeonMasterModel.modelPath), n_ctx: dungeonMasterModel.n_ctx{lora_list}
}};

function history(): DmMessage[] {{
  return [
    dungeonMasterSystemMessage({{ world: 'Greyhawk', location: 'Hommlet', party: 'Ana (human rogue 2)' }}),
    {{ role: 'user', content: 'Ana: I search the room.' }},
  ];
}}

export async function withCactusLM(): Promise<string> {{
  const {{ lm, error }} = await CactusLM.init({{
    model: absolutePathOf(dungeonMasterModel.modelPath), n_ctx: dungeonMasterModel.n_ctx{lora_list}
  }});
  if (error || !lm) throw error ?? new Error('the model did not load');
  const messages = history();
  const reply = await lm.completion(dungeonMasterWindow(messages, messages.map(() => 10)), {{
    ...dungeonMasterModel.completion,
  }});
  return reply.text;
}}

export async function withLlamaContext(): Promise<number> {{
  const context = await initLlama(params);
  const turn = await runDmTurn(context, history(), {{ runTool: async (call) => `${{call.name}}: 14` }});
  return turn.calls.length;
}}
"""


def _tsc(cactus: Path, folder: Path, files: list[Path]) -> subprocess.CompletedProcess:
    config = {
        "compilerOptions": {
            "strict": True,
            "noUncheckedIndexedAccess": True,
            "noEmit": True,
            "skipLibCheck": True,  # react-native itself, which Cactus's declarations import, is not installed
            "target": "es2020",
            "module": "commonjs",
            "moduleResolution": "node10",
            "baseUrl": ".",
            "paths": {"*": [str(cactus / "node_modules" / "*")]},
            "types": [],
        },
        "files": [str(f) for f in files],
    }
    (folder / "tsconfig.json").write_text(json.dumps(config, indent=2))
    compiler = cactus / "node_modules" / "typescript" / "bin" / "tsc"
    started = time.monotonic()
    done = subprocess.run(
        ["node", str(compiler), "-p", "tsconfig.json"], cwd=folder, capture_output=True, text=True, timeout=300
    )
    print(f"tsc over {len(files)} app file(s): {time.monotonic() - started:.1f}s")
    return done


def test_the_deployed_modules_compile_against_cactus(cactus: Path, tmp_path: Path):
    variants = {
        "full": _deployed(tmp_path, "full"),
        "lazy": _deployed(tmp_path, "lazy", decode={"grammar": "lazy"}),
        "off": _deployed(tmp_path, "off", decode={"grammar": "off"}),
        "adapter": _deployed(tmp_path, "adapter", adapter=True),
    }
    values = {
        name: json.loads((folder.parents[1] / "assets" / "models" / "dungeon-master.json").read_text())
        for name, folder in variants.items()
    }
    completions = {name: v["completion"] for name, v in values.items()}
    assert values["adapter"]["loraList"] == [{"path": "assets/models/dungeon-master-adapter.gguf", "scaled": 1.0}]
    assert completions["lazy"]["grammar_lazy"] is True and "grammar_triggers" in completions["lazy"]
    assert "grammar" not in completions["off"] and completions["full"]["grammar_lazy"] is False
    files = []
    for name, folder in variants.items():
        app_file = folder.parent / "cactus.ts"
        app_file.write_text(_app_file(lora=name == "adapter"))
        files.append(app_file)
    done = _tsc(cactus, tmp_path, files)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_completion_field_cactus_does_not_take_fails_the_build(cactus: Path, tmp_path: Path):
    folder = _deployed(tmp_path, "full")
    values = json.loads((folder.parents[1] / "assets" / "models" / "dungeon-master.json").read_text())
    files = []
    for name, field, value in (("unknown", "repeat_penalty", 1.1), ("mistyped", "seed", "42")):
        app = tmp_path / name
        shutil.copytree(folder, app / "dmforge")
        broken = values | {"completion": values["completion"] | {field: value}}
        (app / "dmforge" / "dungeonMasterModel.ts").write_text(typescript_module(broken))
        (app / "cactus.ts").write_text(_app_file(lora=False))
        files.append(app / "cactus.ts")
    done = _tsc(cactus, tmp_path, files)
    errors = done.stdout
    assert done.returncode != 0
    # tsc names files relative to the folder it runs in; each app's errors follow its name.
    unknown = [line for line in errors.splitlines() if line.startswith("unknown/cactus.ts(")]
    assert any("Property 'repeat_penalty' is missing in type '{}'" in line for line in unknown), errors
    mistyped = errors.split("mistyped/cactus.ts(", 1)[-1]
    assert "Types of property 'seed' are incompatible" in mistyped, errors
    assert "Type 'string' is not assignable to type 'number'" in mistyped, errors
