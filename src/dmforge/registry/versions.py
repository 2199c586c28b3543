"""Model versions: every verified, evaluated run gets a number (v1, v2, …) in `<runs_root>/versions.json`.

A version records what went in (base, training options, each scenario file's hash, its parent
version) and what came out (the GGUF that ships, its size and sha256, the headline metrics on the
held-out turns). The next ./train.sh diffs its scenarios against the latest version
(registry/lineage.py), the gate compares a new version with the deployed one (registry/gate.py),
and `dmforge deploy --version vN` or `dmforge rollback` switch the app between versions
(deploy/app.py). `dmforge versions` lists them.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from dmforge.errors import DmforgeError
from dmforge.files import read_json, write_json
from dmforge.locks import folder_lock
from dmforge.registry.runs import read_eval, read_export, read_identity, read_manifest

BOOK_NAME = "versions.json"

# The metrics a version keeps: the app's outcome on the validation turns, as the summary shows them.
HEADLINE = (
    "call_decision_accuracy",
    "intent_match",
    "exact_call_match",
    "call_validity",
    "loop_rate",
    "call_f1",
    "perplexity",
)
SHORT = {
    "call_decision_accuracy": "decision",
    "intent_match": "intent",
    "exact_call_match": "exact",
    "call_validity": "validity",
    "loop_rate": "loops",
    "call_f1": "call F1",
    "perplexity": "ppl",
}


class GgufRecord(BaseModel):
    path: str
    quant: str
    bytes: int
    sha256: str
    reason: str = ""  # why this file ships (export/ship.py)


class Version(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    created: str
    run_dir: str
    kind: str  # "full" or "incremental"
    parent: str | None = None
    base: str
    # The run's identity without its scenarios: versions with equal options can continue one another.
    options: dict
    scenarios: dict[str, str]
    gguf: GgufRecord
    metrics: dict[str, float | None]
    turns: int
    turns_digest: str | None = None
    steps: int | None = None

    @property
    def number(self) -> int:
        return int(self.id.removeprefix("v"))


class VersionBook(BaseModel):
    versions: list[Version] = []
    # The app folder (resolved) → the version deployed there, as this project last left it.
    deployed: dict[str, str] = {}

    def get(self, version_id: str) -> Version:
        for version in self.versions:
            if version.id == version_id:
                return version
        known = ", ".join(v.id for v in self.versions) or "none yet"
        raise DmforgeError(
            f"There is no version {version_id!r} (known: {known}). `dmforge versions` lists them.", exit_code=2
        )

    def for_run(self, run_dir: Path) -> Version | None:
        key = str(Path(run_dir).resolve())
        return next((v for v in self.versions if v.run_dir == key), None)

    def latest(self, options: dict | None = None) -> Version | None:
        """The newest version (with these training options, when given)."""
        same = [v for v in self.versions if options is None or v.options == options]
        return max(same, key=lambda v: v.number, default=None)


def book_path(runs_root: Path) -> Path:
    return Path(runs_root) / BOOK_NAME


def load_versions(runs_root: Path) -> VersionBook:
    path = book_path(runs_root)
    if not path.is_file():
        return VersionBook()
    fix = (
        "It is dmforge's list of trained versions; restore it from a backup, or move it away to start the list "
        "again (the run folders and the app's kept versions are not touched)."
    )
    try:
        return VersionBook.model_validate(read_json(path, fix))
    except ValidationError as exc:
        raise DmforgeError(f"{path} is damaged ({exc.errors()[0]['msg']}). {fix}") from exc


def _lock(runs_root: Path):
    return folder_lock(Path(runs_root), f"The versions list in {runs_root}")


def update_versions(runs_root: Path, change) -> VersionBook:
    """Read, change (`change(book)` edits it in place) and write the list under its lock: no lost update."""
    with _lock(runs_root):
        book = load_versions(runs_root)
        change(book)
        write_json(book_path(runs_root), book.model_dump(mode="json"))
        return book


def options_of(identity: dict) -> dict:
    """The part of a run's identity (training/finetune.run_identity) that two versions must share to chain."""
    return identity["config"]


def register(runs_root: Path, run_dir: Path, ship_quant: str | None = None, column: str | None = None) -> Version:
    """Record the run as a version (a new number, or the same one updated when it was registered before).

    The run must have passed verification; its shipped file is the evaluation's choice unless
    `ship_quant` names one. Its metrics are that file's column, or `column` (base + adapter).
    """
    from dmforge.export.ship import shipped

    manifest, export, evaluation = read_manifest(run_dir), read_export(run_dir), read_eval(run_dir)
    identity = read_identity(run_dir)
    if identity is None:
        raise DmforgeError(f"{run_dir} has no identity.json, so it is not a dmforge run folder.", exit_code=2)
    if not export.passed:
        raise DmforgeError(f"{run_dir} failed verification ({'; '.join(export.failed())}); it is not a version.")
    choice = shipped(export, evaluation, ship_quant)
    digest = export.sha256.get(choice.quant)
    if digest is None:
        raise DmforgeError(
            f"{run_dir}'s export predates file hashes, so its GGUF cannot be checked at deploy. Export it again: "
            f"`dmforge export {run_dir}`.",
            exit_code=2,
        )
    metrics = evaluation.models.get(column or choice.quant, {}) if evaluation else {}
    record = {
        "created": time.strftime("%Y-%m-%d %H:%M"),
        "run_dir": str(Path(run_dir).resolve()),
        "kind": manifest.kind,
        "parent": manifest.parent,
        "base": manifest.base.spec,
        "options": options_of(identity),
        "scenarios": manifest.scenarios,
        "gguf": GgufRecord(
            path=str(Path(choice.path).resolve()),
            quant=choice.quant,
            bytes=choice.path.stat().st_size,
            sha256=digest,
            reason=choice.reason,
        ),
        "metrics": {k: metrics.get(k) for k in HEADLINE},
        "turns": evaluation.turns if evaluation else 0,
        "turns_digest": evaluation.turns_digest if evaluation else None,
        "steps": manifest.steps,
    }
    registered: list[Version] = []

    def change(book: VersionBook) -> None:
        known = book.for_run(run_dir)
        if known is not None:  # evaluated again, or another file chosen: same version, new figures
            updated = known.model_copy(update=record | {"created": known.created})
            book.versions[book.versions.index(known)] = updated
            registered.append(updated)
            return
        number = max((v.number for v in book.versions), default=0) + 1
        version = Version(id=f"v{number}", **record)
        book.versions.append(version)
        registered.append(version)

    update_versions(runs_root, change)
    return registered[0]


def mark_deployed(runs_root: Path, app: Path, version_id: str) -> None:
    def change(book: VersionBook) -> None:
        book.deployed[str(Path(app).resolve())] = version_id

    update_versions(runs_root, change)


def version_table(book: VersionBook, deployed: dict[str, str]) -> list[dict]:
    """One row per version, newest first: its record, where it is deployed, and its deltas against its parent."""
    by_id = {v.id: v for v in book.versions}
    rows = []
    for version in sorted(book.versions, key=lambda v: v.number, reverse=True):
        parent = by_id.get(version.parent) if version.parent else None
        deltas = {}
        if parent is not None:
            for key in HEADLINE:
                new, old = version.metrics.get(key), parent.metrics.get(key)
                deltas[key] = None if new is None or old is None else round(new - old, 6)
        rows.append(
            version.model_dump(mode="json")
            | {"deployed_to": sorted(app for app, vid in deployed.items() if vid == version.id), "deltas": deltas}
        )
    return rows
