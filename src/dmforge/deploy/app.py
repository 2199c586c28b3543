"""`dmforge deploy`: put a verified version into the app and tell `cactus.ts` how to run it.

The file that ships is the one the evaluation chose (export/ship.py), unless `--quant` names
another, and it must be byte for byte the file that was verified (its sha256 is in export.json).
Every deploy registers the run as a version (registry/versions.py), keeps the set outside the
bundle and switches the app to it all-or-nothing (deploy/switch.py); `--version vN` switches to
any kept version and `dmforge rollback` to the one before. The integration values are written as
a TypeScript module and as JSON: `modelPath`, `n_ctx`, the stop token, the system-message template
the app must send, the completion parameters with every sampler field set and the tool-call
grammar (exactly what the evaluation measured), and the token framing the context window needs
(deploy/typescript.py).

Android: a model inside the APK's assets cannot be opened by path. Copy it to app storage once
(e.g. `RNFS.copyFileAssets(dungeonMasterModel.androidAsset, dest)`) and pass that absolute path
to `CactusLM.init({ model: dest, ... })`. On iOS the bundled file can be used in place.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from dmforge.config import DecodeConfig, DmforgeConfig
from dmforge.deploy import switch
from dmforge.deploy.typescript import typescript_module
from dmforge.errors import DmforgeError
from dmforge.export.ship import forced_quant, shipped
from dmforge.models.resolve import sha256_file
from dmforge.registry.runs import ExportReport, read_eval, read_export
from dmforge.registry.versions import Version, load_versions, mark_deployed, register
from dmforge.tools.grammar import LAZY_TRIGGER, registry_grammar
from dmforge.tools.registry import Registry

MODELS_DIR = Path("assets") / "models"
TS_PATH = switch.TARGETS["dungeonMasterModel.ts"]
MODEL_NAME = switch.MODEL_NAME


@dataclass
class DeployResult:
    model: Path
    config_json: Path
    config_ts: Path
    values: dict
    version: str | None
    replaced: str | None  # the kept set the app had before (a version id, or unversioned-N)
    kept: Path  # where this set is kept, outside the bundle


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


def _check_app(app: Path) -> None:
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


def deploy(
    run_dir: Path, app: Path, config: DmforgeConfig, registry: Registry, quant: str | None = None
) -> DeployResult:
    """Register the run as a version and switch the app to it; `quant` overrides the evaluated choice."""
    export = read_export(run_dir)
    if not export.passed:
        raise DmforgeError(
            f"The export of {run_dir} failed verification ({'; '.join(export.failed())}); it is not deployed."
        )
    _check_app(app)
    choice = shipped(export, read_eval(run_dir), forced_quant(config, quant))
    if not choice.path.is_file():
        raise DmforgeError(f"{choice.path} is missing. Run `dmforge export {run_dir}` again.")
    _check_verified(export, choice.quant, run_dir)
    version = register(config.train.runs_root, run_dir, forced_quant(config, quant))
    return _switch_to_version(app, version, config, registry)


def deploy_version(app: Path, version_id: str, config: DmforgeConfig, registry: Registry) -> DeployResult:
    """Switch the app to a version: its kept copy in the app, or else its run folder's verified file."""
    _check_app(app)
    version = load_versions(config.train.runs_root).get(version_id)
    return _switch_to_version(app, version, config, registry)


def rollback(app: Path, config: DmforgeConfig) -> DeployResult:
    """Switch the app back to the set deployed before the current one, byte for byte."""
    _check_app(app)
    with switch.app_lock(app):
        switch.recover(app)
        kept = switch.previous_set(app)
        replaced = switch.switch(app, kept)
    if kept.version:
        mark_deployed(config.train.runs_root, app, kept.version)
    return _result(app, kept, replaced)


def _check_verified(export: ExportReport, quant: str, run_dir: Path) -> None:
    path, expected = Path(export.files[quant]), export.sha256.get(quant)
    if expected is None:
        raise DmforgeError(
            f"{run_dir}'s export predates file hashes, so {path.name} cannot be checked. Export it again: "
            f"`dmforge export {run_dir}`.",
            exit_code=2,
        )
    actual = sha256_file(path)
    if actual != expected:
        raise DmforgeError(
            f"{path} is not the file that was verified: its sha256 is {actual[:16]}…, and the export recorded "
            f"{expected[:16]}…. It was changed or damaged after verification, so it is not deployed. Export the run "
            f"again (`dmforge export {run_dir}`), or deploy another version (`dmforge versions`).",
            exit_code=2,
        )


def _switch_to_version(app: Path, version: Version, config: DmforgeConfig, registry: Registry) -> DeployResult:
    with switch.app_lock(app):
        note = switch.recover(app)
        if note:
            print(f"note: {note}")
        kept = _kept_for(app, version, config, registry)
        replaced = switch.switch(app, kept)
    mark_deployed(config.train.runs_root, app, version.id)
    return _result(app, kept, replaced)


def _kept_for(app: Path, version: Version, config: DmforgeConfig, registry: Registry) -> switch.KeptSet:
    """The version's set, kept in the app: made from its run folder when that still holds it, else the kept copy."""
    run_dir = Path(version.run_dir)
    sha = version.gguf.sha256
    name = f"{version.id}-{sha[:12]}"
    if not (run_dir / "gguf").is_dir():
        kept = switch.read_kept(switch.kept_root(app) / name)
        if kept is None:
            raise DmforgeError(
                f"{version.id} is not kept in {app} and its run folder {run_dir} is gone, so it cannot be deployed. "
                f"`dmforge versions --app {app}` lists the versions that can.",
                exit_code=2,
            )
        return kept
    export = read_export(run_dir)
    quant = version.gguf.quant
    if export.sha256.get(quant) != sha:
        raise DmforgeError(
            f"{run_dir} was exported again after {version.id} was registered, so its {quant} file is no longer "
            f"{version.id}'s. Deploy the run itself (`dmforge deploy {run_dir} --app {app}`), which registers it anew.",
            exit_code=2,
        )
    _check_verified(export, quant, run_dir)
    path = Path(export.files[quant])
    mmproj = next((run_dir / "gguf").glob("mmproj*.gguf"), None)
    values = app_values(export, config, registry, quant, version, path.stat().st_size, mmproj is not None)
    texts = {"dungeon-master.json": json.dumps(values, indent=2, ensure_ascii=False) + "\n"}
    texts["dungeonMasterModel.ts"] = typescript_module(values)
    files: dict = {MODEL_NAME: path, **texts}
    if mmproj is not None:  # a vision base's projector travels with the model
        files["dungeon-master-mmproj.gguf"] = mmproj
    expected = {MODEL_NAME: sha} | {n: hashlib.sha256(t.encode()).hexdigest() for n, t in texts.items()}
    record = {
        "version": version.id,
        "files": expected,
        "base": version.base,
        "quant": quant,
        "metrics": version.metrics,
        "turns_digest": version.turns_digest,
        "run_dir": version.run_dir,
    }
    return switch.keep_set(app, name, files, record)


def _result(app: Path, kept: switch.KeptSet, replaced: switch.KeptSet | None) -> DeployResult:
    values_file = kept.folder / "dungeon-master.json"  # an unversioned set may have none
    values = json.loads(values_file.read_text(encoding="utf-8")) if values_file.is_file() else {}
    return DeployResult(
        model=app / switch.TARGETS[MODEL_NAME],
        config_json=app / switch.TARGETS["dungeon-master.json"],
        config_ts=app / TS_PATH,
        values=values,
        version=kept.version,
        replaced=replaced.name if replaced else None,
        kept=kept.folder,
    )


def app_values(
    export: ExportReport,
    config: DmforgeConfig,
    registry: Registry,
    quant: str,
    version: Version,
    size: int,
    has_mmproj: bool,
) -> dict:
    """What cactus.ts needs to run this version exactly as it was evaluated."""
    fmt = export.chat_format
    stop = [fmt["end_of_turn"]]
    return {
        "modelPath": (MODELS_DIR / MODEL_NAME).as_posix(),
        "mmprojPath": (MODELS_DIR / "dungeon-master-mmproj.gguf").as_posix() if has_mmproj else None,
        "androidAsset": f"models/{MODEL_NAME}",
        "n_ctx": export.max_seq_len or config.train.max_seq_len,
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
        "quantization": quant,
        "version": version.id,
        "shippedBecause": version.gguf.reason,
        "sha256": version.gguf.sha256,
        "bytes": size,
    }
