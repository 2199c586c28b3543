"""`dmforge deploy --app PATH`: put the verified GGUF into the app and tell `cactus.ts` how to run it.

The file that ships is the one the evaluation chose (export/ship.py), unless `--quant` names
another. It is copied into `<app>/assets/models/` beside the old one and renamed over it, so the
app always has a complete model file; the previous file is kept as `<name>.previous`. The
integration values are written as a TypeScript module and as JSON: `modelPath`, `n_ctx`, the stop
token, the system-message template the app must send, the completion parameters with every sampler
field set and the tool-call grammar (exactly what the evaluation measured), and the token framing
the context window needs (deploy/typescript.py).

Android: a model inside the APK's assets cannot be opened by path. Copy it to app storage once
(e.g. `RNFS.copyFileAssets(dungeonMasterModel.androidAsset, dest)`) and pass that absolute path
to `CactusLM.init({ model: dest, ... })`. On iOS the bundled file can be used in place.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from dmforge.config import DecodeConfig, DmforgeConfig
from dmforge.deploy.typescript import typescript_module
from dmforge.errors import DmforgeError
from dmforge.export.ship import ShipChoice, shipped
from dmforge.files import fsync_dir, fsync_file, partial_path, read_json, read_json_or_none, write_json, write_text
from dmforge.locks import clean_after, folder_lock
from dmforge.models.resolve import sha256_file
from dmforge.tools.grammar import LAZY_TRIGGER, registry_grammar
from dmforge.tools.registry import Registry

MODELS_DIR = Path("assets") / "models"
TS_PATH = Path("src") / "dmforge" / "dungeonMasterModel.ts"
MODEL_NAME = "dungeon-master.gguf"


@dataclass
class DeployResult:
    model: Path
    backup: Path | None
    config_json: Path
    config_ts: Path
    values: dict


def install_file(source: Path, dest: Path) -> Path | None:
    """Copy `source` to `dest` atomically; an existing `dest` is kept as `<dest>.previous`. Returns the backup.

    Both copies go through names of their own (files.partial_path) and are flushed before the renames,
    so a kill at any instant leaves `dest` whole: the old model or the new one, never half of either.
    """
    partial = partial_path(dest)
    backup = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, partial)
        fsync_file(partial)
        if dest.exists():
            backup = dest.with_name(dest.name + ".previous")
            backup_partial = partial_path(backup)
            try:
                shutil.copyfile(dest, backup_partial)
                fsync_file(backup_partial)
                os.replace(backup_partial, backup)
            finally:
                backup_partial.unlink(missing_ok=True)
        os.replace(partial, dest)
        fsync_dir(dest.parent)
    except OSError as exc:
        raise DmforgeError(
            f"Could not write {dest}: {exc.strerror or exc}. The app's previous model is untouched. "
            "Free some disk space or fix the folder's permissions, then run deploy again."
        ) from exc
    finally:
        partial.unlink(missing_ok=True)
    return backup


def completion_params(decode: DecodeConfig, stop: list[str], registry: Registry) -> dict:
    """`lm.completion`'s parameters as the evaluation used them: every sampler field, and the grammar."""
    params = {
        "jinja": True,
        "stop": stop,
        "n_predict": decode.n_predict,
        "temperature": decode.temperature,
        "top_k": decode.top_k,
        "top_p": decode.top_p,
        "min_p": decode.min_p,
        "typical_p": 1.0,
        "xtc_probability": 0.0,
        "penalty_last_n": decode.penalty_last_n,
        "penalty_repeat": decode.penalty_repeat,
        "penalty_freq": decode.penalty_freq,
        "penalty_present": decode.penalty_present,
        "dry_multiplier": decode.dry_multiplier,
        "dry_base": decode.dry_base,
        "dry_allowed_length": decode.dry_allowed_length,
        "dry_penalty_last_n": decode.dry_penalty_last_n,
        "dry_sequence_breakers": decode.dry_sequence_breakers,
        "mirostat": 0,
        "seed": decode.seed,
    }
    if decode.grammar != "off":
        params["grammar"] = registry_grammar(registry, lazy=decode.grammar == "lazy")
        params["grammar_lazy"] = decode.grammar == "lazy"
        if decode.grammar == "lazy":
            # A pattern trigger (type 2 in Cactus 0.2's llama.cpp): a word trigger that is one token must also
            # be a preserved token, and the jinja chat path replaces `preserved_tokens` with its own list.
            params["grammar_triggers"] = [{"type": 2, "value": LAZY_TRIGGER, "token": 0}]
    return params


def deploy(
    run_dir: Path, app: Path, config: DmforgeConfig, registry: Registry, quant: str | None = None
) -> DeployResult:
    """Copy the shipped GGUF into `app` and write its values for cactus.ts; `quant` overrides the choice."""
    export_path = run_dir / "gguf" / "export.json"
    if not export_path.is_file():
        raise DmforgeError(f"{run_dir} has no exported GGUF. Run `dmforge export {run_dir}` first.", exit_code=2)
    export = read_json(export_path, f"Export it again: `dmforge export {run_dir}`.")
    if not export["passed"]:
        failed = [f"{c['file']}: {c['name']}" for c in export["checks"] if not c["passed"]]
        raise DmforgeError(f"The export of {run_dir} failed verification ({'; '.join(failed)}); it is not deployed.")
    if not app.is_dir():
        raise DmforgeError(
            f"The app folder {app} does not exist. Pass the React Native app's root folder.", exit_code=2
        )
    if not (app / "package.json").is_file():
        raise DmforgeError(
            f"{app} has no package.json, so it is not the app's root folder. Pass the folder that "
            "holds the app's package.json.",
            exit_code=2,
        )
    evaluation = read_json_or_none(run_dir / "eval" / "report.json")
    choice = shipped(export, evaluation, quant or config.deploy.quant)
    if not choice.path.is_file():
        raise DmforgeError(f"{choice.path} is missing. Run `dmforge export {run_dir}` again.")

    models = app / MODELS_DIR
    # One deploy at a time per app: two would interleave the model and its config values.
    with folder_lock(models, f"The app's models folder {models}", on_stale=clean_after(models)):
        return _install(run_dir, app, config, registry, export, choice)


def _install(
    run_dir: Path, app: Path, config: DmforgeConfig, registry: Registry, export: dict, choice: ShipChoice
) -> DeployResult:
    model = app / MODELS_DIR / MODEL_NAME
    backup = install_file(choice.path, model)
    digest = sha256_file(model)
    if digest != sha256_file(choice.path):
        raise DmforgeError(f"{model} does not match {choice.path} after copying. Check the disk, then deploy again.")
    mmproj = next((run_dir / "gguf").glob("mmproj*.gguf"), None)
    mmproj_dest = None
    if mmproj is not None:  # a vision base's projector travels with the model
        mmproj_dest = app / MODELS_DIR / "dungeon-master-mmproj.gguf"
        install_file(mmproj, mmproj_dest)

    fmt = export["chat_format"]
    stop = [fmt["end_of_turn"]]
    values = {
        "modelPath": (MODELS_DIR / MODEL_NAME).as_posix(),
        "mmprojPath": (MODELS_DIR / mmproj_dest.name).as_posix() if mmproj_dest else None,
        "androidAsset": f"models/{MODEL_NAME}",
        "n_ctx": export.get("max_seq_len") or config.train.max_seq_len,
        "stop": stop,
        "jinja": True,
        "toolResultRole": "tool" if fmt["tool_role"] else "user",
        "toolResultPrefix": "" if fmt["tool_role"] else fmt["tool_prefix"],
        "systemTemplate": config.data.system_template,
        "defaultSystemPrompt": config.data.system_prompt,
        # The context window (deploy/typescript.py): a message costs its content's tokens plus its role's framing.
        "messageFraming": fmt.get("framing") or {},
        "replyHeaderTokens": fmt.get("reply_header", 0),
        "completion": completion_params(config.decode, stop, registry),
        "quantization": choice.quant,
        "shippedBecause": choice.reason,
        "sha256": digest,
        "bytes": model.stat().st_size,
    }
    config_json = app / MODELS_DIR / "dungeon-master.json"
    config_ts = app / TS_PATH
    write_json(config_json, values)
    write_text(config_ts, typescript_module(values))
    for path in [model, config_json, config_ts, *([mmproj_dest] if mmproj_dest else [])]:
        if not (path.is_file() and os.access(path, os.R_OK)):
            raise DmforgeError(f"{path} was written but cannot be read back. Check the app folder's permissions.")
    return DeployResult(model, backup, config_json, config_ts, values)
