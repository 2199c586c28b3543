"""The run folder's records, typed: the one module that reads and writes them.

    <run>/manifest.json        RunManifest   what training took in and gave out (finetune writes it)
    <run>/gguf/export.json     ExportReport  the GGUF files, their sha256 and every check (export writes it)
    <run>/eval/report.json     EvalReport    the scored columns and the file that ships (evaluation writes it)

Every stage goes through these functions, so a record has one shape everywhere, and a torn or
hand-edited one is an error that names the file and the command that rebuilds it. Before these
models the records were plain dicts read in five places, and two rules picked the shipped file.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from dmforge.errors import DmforgeError
from dmforge.files import read_json, read_json_or_none, write_json
from dmforge.models.resolve import sha256_file

# What a `train.method: full` run keeps in its run folder instead of a LoRA adapter: the trained layers' weights.
TRAINED_LAYERS = "trained-layers.safetensors"


class _Record(BaseModel):
    # Records from an older dmforge may carry fields this one no longer writes: they are ignored, not fatal.
    model_config = ConfigDict(extra="ignore")


class BaseRecord(_Record):
    spec: str
    origin: str
    path: str
    model_type: str = "?"


class RunManifest(_Record):
    dmforge_version: str
    base: BaseRecord
    dataset: dict
    chat_format: dict
    max_seq_len: int | None = None
    adapter: str  # the LoRA adapter's folder, or a `full` run's trained-layers file
    merged: str
    sample_reply: dict | None = None
    steps: int | None = None
    # Each scenario file (relative to the scenarios folder) with its sha256: what a later run diffs against.
    scenarios: dict[str, str] = {}
    # How the run trained: "full", or "incremental" from `parent` (a version id) on changed files plus replay.
    kind: str = "full"
    parent: str | None = None
    incremental: dict | None = None


class AdapterExport(_Record):
    """The run's LoRA adapter as a GGUF for the base's F16 GGUF, and its parity with the merged export."""

    file: str
    bytes: int
    sha256: str
    base_file: str
    base_bytes: int
    base_sha256: str
    merged_bytes: int
    parity: dict
    passed: bool

    @classmethod
    def of(cls, adapter: Path, base: Path, merged_bytes: int, parity: dict) -> AdapterExport:
        """The record of an adapter GGUF and its base GGUF as they are on disk, with the parity check's verdict."""
        return cls(
            file=str(adapter),
            bytes=adapter.stat().st_size,
            sha256=sha256_file(adapter),
            base_file=str(base),
            base_bytes=base.stat().st_size,
            base_sha256=sha256_file(base),
            merged_bytes=merged_bytes,
            parity=parity,
            passed=parity["passed"],
        )


class ExportReport(_Record):
    passed: bool
    files: dict[str, str]
    sha256: dict[str, str] = {}
    checks: list[dict]
    quantizations: list[dict] = []
    warnings: list[str] = []
    sample_reply: dict | None = None
    chat_format: dict
    max_seq_len: int | None = None
    requested: list[str]
    types: list[str] = []
    max_size_gb: float
    adapter: AdapterExport | None = None  # with deploy.mode: adapter (export/adapter.py)

    def failed(self) -> list[str]:
        return [f"{c['file']} {c['name']}: {c['reason']}" for c in self.checks if not c["passed"]]


class ShipRecord(_Record):
    quant: str
    reason: str
    max_metric_drop: float | None = None
    max_kl: float | None = None
    candidates: list[dict] = []


class EvalReport(_Record):
    title: str
    run_dir: str
    source: str
    turns: int
    windowed_turns: int = 0
    n_ctx: int
    models: dict[str, dict]
    decoding: dict[str, object] = {}
    ship: ShipRecord
    reused: list[str] = []
    playtest: dict | None = None
    # The turns, context and decoding the columns were scored on (evaluation/run.turns_digest).
    turns_digest: str | None = None


def scenario_hashes(scenarios) -> dict[str, str]:
    """Each scenario file's id (its path under the scenarios folder) and the sha256 of its normalized text."""
    return {s.id: s.fingerprint for s in sorted(scenarios, key=lambda s: s.id)}


def manifest_path(run_dir: Path) -> Path:
    return run_dir / "manifest.json"


def export_path(run_dir: Path) -> Path:
    return run_dir / "gguf" / "export.json"


def eval_path(run_dir: Path) -> Path:
    return run_dir / "eval" / "report.json"


def _read(path: Path, model: type[_Record], fix: str):
    data = read_json(path, fix)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the top level"
        raise DmforgeError(f"{path} is not a record this dmforge can read ({where}: {first['msg']}). {fix}") from exc


def read_manifest(run_dir: Path) -> RunManifest:
    path = manifest_path(run_dir)
    if not path.is_file():
        raise DmforgeError(
            f"{run_dir} is not a finished run (no manifest.json). Train it first: "
            f"`dmforge finetune --run-dir {run_dir}`.",
            exit_code=2,
        )
    return _read(path, RunManifest, f"Train the run again: `dmforge finetune --run-dir {run_dir}`.")


def read_export(run_dir: Path) -> ExportReport:
    path = export_path(run_dir)
    if not path.is_file():
        raise DmforgeError(f"{run_dir} has no exported GGUF. Run `dmforge export {run_dir}` first.", exit_code=2)
    return _read(path, ExportReport, f"Export it again: `dmforge export {run_dir}`.")


def read_eval(run_dir: Path) -> EvalReport | None:
    """The evaluation report, or None when the run was not evaluated (or its report is damaged: evaluate again)."""
    path = eval_path(run_dir)
    if not path.is_file():
        return None
    try:
        return _read(path, EvalReport, "")
    except DmforgeError:
        return None


def read_identity(run_dir: Path) -> dict | None:
    """What the run folder trained on (training/finetune.run_identity), or None for a folder that is not a run."""
    return read_json_or_none(run_dir / "identity.json")


def write_manifest(run_dir: Path, manifest: RunManifest) -> None:
    write_json(manifest_path(run_dir), manifest.model_dump(mode="json"))


def write_export(run_dir: Path, report: ExportReport) -> None:
    write_json(export_path(run_dir), report.model_dump(mode="json"))


def write_eval(run_dir: Path, report: EvalReport) -> None:
    write_json(eval_path(run_dir), report.model_dump(mode="json"))
