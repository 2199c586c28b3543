"""Merged model folder → F16 GGUF through the pinned converter, with the known traps fixed first.

The converter of the app's vintage reads a model the way transformers 4 wrote it. transformers 5
differs in two ways that would break the app silently:
- rope settings live under `rope_parameters`; the converter reads only a top-level `rope_theta`
  and would fall back to llama.cpp's default base (10000 where SmolLM2 needs 100000). The
  converter runs through `run_converter`, which puts them back where it looks;
- the chat template is saved in `chat_template.jinja`; the converter embeds only the one in
  `tokenizer_config.json`, so the GGUF would carry no template and the app would format turns
  with a generic one. A staging copy of the folder gets it in `tokenizer_config.json`.
And a Gemma base that came as a GGUF file has no `tokenizer.model`, the only place this converter
reads Gemma's vocabulary from: the staging copy gets one rebuilt from the base GGUF (export/vocab.py).
The verification after export checks both, so a regression here cannot pass unnoticed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from dmforge.errors import DmforgeError
from dmforge.export.converter import converter_dir, converter_script
from dmforge.export.vocab import needs_sentencepiece, vocabulary_gguf, write_sentencepiece_model
from dmforge.files import partial_path, write_text


def converter_ready_config(config: dict) -> dict:
    """config.json in the form the May-2025 converter reads (rope settings at the top level)."""
    fixed = dict(config)
    rope = config.get("rope_parameters") or {}
    if "rope_theta" not in fixed and "rope_theta" in rope:
        fixed["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default" and "rope_scaling" not in fixed:
        fixed["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    return fixed


def stage_for_converter(model_dir: Path, stage: Path) -> None:
    """A converter-ready view of `model_dir` in `stage`: weights linked, config and template adjusted."""
    for item in model_dir.iterdir():
        if item.name not in ("config.json", "tokenizer_config.json"):
            (stage / item.name).symlink_to(item.resolve())
    config = json.loads((model_dir / "config.json").read_text())
    (stage / "config.json").write_text(json.dumps(converter_ready_config(config), indent=2))
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    template_file = model_dir / "chat_template.jinja"
    if template_file.is_file() and not tokenizer_config.get("chat_template"):
        tokenizer_config["chat_template"] = template_file.read_text()
    (stage / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))
    if needs_sentencepiece(config) and not (model_dir / "tokenizer.model").is_file():
        source = vocabulary_gguf(model_dir)
        if source is None:
            raise DmforgeError(
                f"{model_dir} has no tokenizer.model, and llama.cpp's converter reads this architecture's "
                "vocabulary only from one. Copy the base model's tokenizer.model into the folder, then export again."
            )
        write_sentencepiece_model(source, stage / "tokenizer.model")


_KNOWN_FAILURES = {
    "BPE pre-tokenizer was not recognized": (
        "llama.cpp of the app's vintage does not know this model's pre-tokenizer, so the app could not load "
        "the file. Choose a base from `dmforge models list` whose Cactus column says yes."
    ),
    "is not supported": (
        "llama.cpp of the app's vintage cannot convert this architecture. Choose a base from "
        "`dmforge models list` whose Cactus column says yes."
    ),
}


def convert_to_gguf(model_dir: Path, out: Path, *, fix_traps: bool = True) -> Path:
    """Write `out` (F16 GGUF). `fix_traps=False` converts the folder as it is (the tests use it)."""
    script = converter_script()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dmforge-convert-") as tmp:
        source = model_dir
        if fix_traps:
            source = Path(tmp) / "model"
            source.mkdir()
            stage_for_converter(model_dir, source)
        partial = partial_path(out)
        if fix_traps:
            command = [
                sys.executable,
                "-m",
                "dmforge.export.run_converter",
                str(script),
                str(converter_dir() / "gguf-py"),
            ]
            env = dict(os.environ)
        else:  # the converter exactly as llama.cpp ships it
            command = [sys.executable, str(script)]
            env = {**os.environ, "PYTHONPATH": str(converter_dir() / "gguf-py")}
        result = subprocess.run(
            [*command, str(source), "--outfile", str(partial), "--outtype", "f16"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        log = result.stdout + result.stderr
        log_path = out.with_name(out.stem + ".convert.log")
        write_text(log_path, f"$ {' '.join(command)} {source} --outfile {partial} --outtype f16\n\n{log}")
        reason = next((fix for needle, fix in _KNOWN_FAILURES.items() if needle in log), None)
        tail = [line.strip() for line in log.strip().splitlines()[-6:] if line.strip()] or ["no output"]
        raise DmforgeError(
            f"Converting {model_dir} to GGUF failed. The converter's last lines: {' | '.join(tail)}. "
            + (f"{reason} " if reason else "If the model's architecture is one llama.cpp converts, report this. ")
            + f"The whole log is in {log_path}."
        )
    partial.replace(out)
    return out


def base_gguf(base_dir: Path) -> Path:
    """The base model itself as an F16 GGUF, converted once per base and kept in the dmforge cache.

    The evaluation scores the base through llama.cpp like every other column, so that base, fine-tuned
    and shipped files differ only in their weights. The cache key covers the folder's files (name, size,
    modification time), so a changed base is converted again.
    """
    import hashlib

    from dmforge.models.resolve import cache_root

    base_dir = base_dir.resolve()
    digest = hashlib.sha256(str(base_dir).encode())
    for item in sorted(base_dir.iterdir()):
        stat = item.stat()
        digest.update(f"{item.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    out = cache_root() / "gguf" / digest.hexdigest()[:16] / "base-f16.gguf"
    if not out.is_file():
        convert_to_gguf(base_dir, out)
    return out
