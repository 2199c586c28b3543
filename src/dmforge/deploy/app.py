"""`dmforge deploy`: put a verified version into the app and tell `cactus.ts` how to run it.

The file that ships is the one the evaluation chose (export/ship.py), unless `--quant` names
another, and it must be byte for byte the file that was verified (its sha256 is in export.json).
Every deploy registers the run as a version (registry/versions.py), keeps the set outside the
bundle and switches the app to it all-or-nothing (deploy/switch.py); `--version vN` switches to
any kept version and `dmforge rollback` to the one before. The integration values are written as
a TypeScript module and as JSON: `modelPath`, `n_ctx`, the stop token, the system-message template
the app must send, the completion parameters with every sampler field set and the tool-call
grammar (exactly what the evaluation measured), and the token framing the context window needs
(deploy/typescript.py). Beside it goes `dmTools.ts` (deploy/tools_ts.py): the tool-call syntax, the
registry check and the agent loop, ported from the Python that trained and evaluated the model.

Android: a model inside the APK's assets cannot be opened by path. Copy it to app storage once
(e.g. `RNFS.copyFileAssets(dungeonMasterModel.androidAsset, dest)`) and pass that absolute path
to `initLlama({ model: dest, ... })`. On iOS the bundled file can be used in place.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from dmforge.config import DecodeConfig, DmforgeConfig
from dmforge.deploy import switch
from dmforge.deploy.tools_ts import tools_module
from dmforge.deploy.typescript import typescript_module
from dmforge.errors import DmforgeError
from dmforge.export.ship import forced_quant, shipped, shipped_column
from dmforge.models.resolve import sha256_file
from dmforge.registry.runs import ExportReport, read_eval, read_export
from dmforge.registry.versions import Version, load_versions, mark_deployed, register
from dmforge.tools.grammar import LAZY_TRIGGER, decode_grammar
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
        params["grammar"] = decode_grammar(registry, decode)
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
    evaluation, forced = read_eval(run_dir), forced_quant(config, quant)
    choice = shipped(export, evaluation, forced)
    if not choice.path.is_file():
        raise DmforgeError(f"{choice.path} is missing. Run `dmforge export {run_dir}` again.")
    _check_verified(export, choice.quant, run_dir)
    column = None if quant else shipped_column(evaluation, config)
    version = register(config.train.runs_root, run_dir, forced, column)
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
    mode = config.deploy.mode
    if not (run_dir / "gguf").is_dir():
        kept = [k for k in switch.kept_sets(app) if k.version == version.id]
        kept.sort(key=lambda k: k.record.get("mode", "merged") != mode)  # the configured mode first
        if not kept:
            raise DmforgeError(
                f"{version.id} is not kept in {app} and its run folder {run_dir} is gone, so it cannot be deployed. "
                f"`dmforge versions --app {app}` lists the versions that can.",
                exit_code=2,
            )
        return kept[0]
    export = read_export(run_dir)
    quant, sha = version.gguf.quant, version.gguf.sha256
    if export.sha256.get(quant) != sha:
        raise DmforgeError(
            f"{run_dir} was exported again after {version.id} was registered, so its {quant} file is no longer "
            f"{version.id}'s. Deploy the run itself (`dmforge deploy {run_dir} --app {app}`), which registers it anew.",
            exit_code=2,
        )
    # No second hash of the source here: keep_set checks the copy against the verified sha256 it is given.
    mmproj = next((run_dir / "gguf").glob("mmproj*.gguf"), None)
    if mode == "adapter":
        models, expected, suffix = _adapter_files(export, run_dir)
    else:
        models, expected, suffix = {MODEL_NAME: Path(export.files[quant])}, {MODEL_NAME: sha}, sha[:12]
    name = f"{version.id}-{suffix}"
    values = app_values(export, config, registry, version, {n: (models[n], expected[n]) for n in models}, mmproj)
    texts = {"dungeon-master.json": json.dumps(values, indent=2, ensure_ascii=False) + "\n"}
    texts["dungeonMasterModel.ts"] = typescript_module(values)
    texts["dmTools.ts"] = tools_module(registry)  # the calls this version was trained on, read as training read them
    files: dict = {**models, **texts}
    if mmproj is not None:  # a vision base's projector travels with the model
        files["dungeon-master-mmproj.gguf"] = mmproj
    expected |= {n: hashlib.sha256(t.encode()).hexdigest() for n, t in texts.items()}
    record = {
        "version": version.id,
        "mode": mode,
        "files": expected,
        "base": version.base,
        "quant": quant,
        "metrics": version.metrics,
        "turns_digest": version.turns_digest,
        "run_dir": version.run_dir,
    }
    return switch.keep_set(app, name, files, record)


def _adapter_files(export: ExportReport, run_dir: Path) -> tuple[dict[str, Path], dict[str, str], str]:
    """Adapter mode's model files (the base's F16 GGUF and the LoRA GGUF), their verified sha256, a set name."""
    adapter = export.adapter
    if adapter is None or not adapter.passed:
        raise DmforgeError(
            f"{run_dir} has no verified adapter GGUF, which `deploy.mode: adapter` ships. Export it with "
            f"`deploy.mode: adapter` in the config (`dmforge export {run_dir}`), or deploy the merged model.",
            exit_code=2,
        )
    for path, digest in ((adapter.file, adapter.sha256), (adapter.base_file, adapter.base_sha256)):
        if not Path(path).is_file() or sha256_file(Path(path)) != digest:
            raise DmforgeError(
                f"{path} is missing or not the file that was verified with the adapter. Export {run_dir} again.",
                exit_code=2,
            )
    files = {switch.BASE_NAME: Path(adapter.base_file), switch.ADAPTER_NAME: Path(adapter.file)}
    expected = {switch.BASE_NAME: adapter.base_sha256, switch.ADAPTER_NAME: adapter.sha256}
    return files, expected, f"adapter-{adapter.sha256[:12]}"


def _result(app: Path, kept: switch.KeptSet, replaced: switch.KeptSet | None) -> DeployResult:
    values_file = kept.folder / "dungeon-master.json"  # an unversioned set may have none
    values = json.loads(values_file.read_text(encoding="utf-8")) if values_file.is_file() else {}
    return DeployResult(
        model=app / values.get("modelPath", switch.TARGETS[MODEL_NAME].as_posix()),
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
    version: Version,
    models: dict[str, tuple[Path, str]],
    mmproj: Path | None,
) -> dict:
    """What cactus.ts needs to run this version exactly as it was evaluated.

    `models` is the set's GGUF files (name → (file, sha256)): the merged model, or in adapter mode the
    base and the LoRA adapter that `CactusLM.init` takes as `lora_list`.
    """
    fmt = export.chat_format
    stop = [fmt["end_of_turn"]]
    adapter_mode = switch.ADAPTER_NAME in models
    model_name = switch.BASE_NAME if adapter_mode else MODEL_NAME
    values = {
        "modelPath": (MODELS_DIR / model_name).as_posix(),
        "mmprojPath": (MODELS_DIR / "dungeon-master-mmproj.gguf").as_posix() if mmproj else None,
        "androidAsset": f"models/{model_name}",
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
        "quantization": "F16 base + LoRA adapter" if adapter_mode else version.gguf.quant,
        "version": version.id,
        "shippedBecause": "deploy.mode: adapter (base + adapter scored beside the merged files)"
        if adapter_mode
        else version.gguf.reason,
        "sha256": models[model_name][1],
        "bytes": models[model_name][0].stat().st_size,
    }
    if adapter_mode:
        # CactusLM.init({ model, lora_list: [{ path, scaled }] }): paths on the device, like `model` (see Android).
        values["loraList"] = [{"path": (MODELS_DIR / switch.ADAPTER_NAME).as_posix(), "scaled": 1.0}]
        values["androidLoraAssets"] = [f"models/{switch.ADAPTER_NAME}"]
        values["loraSha256"] = models[switch.ADAPTER_NAME][1]
        values["loraBytes"] = models[switch.ADAPTER_NAME][0].stat().st_size
    return values
