"""Switching the app's model set all-or-nothing, with every version kept outside the bundle.

The app holds one *set*: the GGUF and its JSON values in `assets/models/`, the TypeScript modules
in `src/dmforge/` (and a vision base's projector). Every set dmforge deploys is first kept whole
in `<app>/.dmforge/versions/<version>-<sha>/` with the sha256 of each file: outside `assets/`, so
backups never ship in the app bundle. A switch then

    1. copies the kept set into `<app>/.dmforge/staging/` and checks every sha256 there;
    2. writes a journal naming the set being replaced;
    3. renames the staged files over the app's (a rename is atomic, and this step takes milliseconds);
    4. records the new set as current and deletes the journal.

A kill before step 3 leaves the app untouched. An error during step 3 puts the old set back at
once; a kill during it leaves the journal, and the next deploy or rollback puts the old set back
before doing anything else (`recover`). The app's files before dmforge's first switch are kept too
(`unversioned-N`), so the first deploy can be rolled back as well.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from dmforge.errors import DmforgeError
from dmforge.files import (
    fsync_dir,
    fsync_file,
    partial_path,
    read_json_or_none,
    remove_partials,
    staged_dir,
    write_json,
    write_text,
)
from dmforge.locks import folder_lock
from dmforge.models.resolve import sha256_file

STATE_DIR = Path(".dmforge")
MODEL_NAME = "dungeon-master.gguf"
BASE_NAME = "dungeon-master-base.gguf"  # adapter mode: the base model, the same for every version
ADAPTER_NAME = "dungeon-master-adapter.gguf"  # adapter mode: this version's LoRA adapter
# A kept set's file → where it lives in the app.
TARGETS = {
    MODEL_NAME: Path("assets") / "models" / MODEL_NAME,
    BASE_NAME: Path("assets") / "models" / BASE_NAME,
    ADAPTER_NAME: Path("assets") / "models" / ADAPTER_NAME,
    "dungeon-master.json": Path("assets") / "models" / "dungeon-master.json",
    "dungeonMasterModel.ts": Path("src") / "dmforge" / "dungeonMasterModel.ts",
    "dmTools.ts": Path("src") / "dmforge" / "dmTools.ts",  # the tool-call contract, written for this model's registry
    "dungeon-master-mmproj.gguf": Path("assets") / "models" / "dungeon-master-mmproj.gguf",
}
KEPT_RECORD = "kept.json"


@dataclass(frozen=True)
class KeptSet:
    folder: Path
    record: dict  # version, files (name → sha256), metrics, base, turns_digest

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def version(self) -> str | None:
        return self.record.get("version")


def state_dir(app: Path) -> Path:
    return Path(app) / STATE_DIR


def kept_root(app: Path) -> Path:
    return state_dir(app) / "versions"


def app_lock(app: Path):
    """One deploy or rollback at a time per app: two would interleave the model and its config."""
    folder = state_dir(app)

    def clean(_holder) -> None:  # a killed deploy's half-copied files; the journal is `recover`'s
        for where in (folder, Path(app) / "assets" / "models", Path(app) / "src" / "dmforge"):
            if where.is_dir():
                remove_partials(where)
        shutil.rmtree(folder / "staging", ignore_errors=True)

    return folder_lock(folder, f"The app {app} (a deploy or rollback is running)", on_stale=clean)


def _prepare_state_dir(app: Path) -> None:
    folder = state_dir(app)
    kept_root(app).mkdir(parents=True, exist_ok=True)
    ignore = folder / ".gitignore"
    if not ignore.is_file():  # kept models are hundreds of MB each: they belong on disk, not in the app's git
        write_text(ignore, "# dmforge's kept model versions (see `dmforge versions`); not for version control\n*\n")


def read_kept(folder: Path) -> KeptSet | None:
    record = read_json_or_none(folder / KEPT_RECORD)
    return KeptSet(folder, record) if record and isinstance(record.get("files"), dict) else None


def app_state(app: Path) -> dict:
    state = read_json_or_none(state_dir(app) / "state.json") or {}
    return {"current": state.get("current"), "history": list(state.get("history", []))}


def current_set(app: Path) -> KeptSet | None:
    name = app_state(app)["current"]
    return read_kept(kept_root(app) / name) if name else None


def kept_sets(app: Path) -> list[KeptSet]:
    root = kept_root(app)
    found = [read_kept(p) for p in sorted(root.iterdir())] if root.is_dir() else []
    return [k for k in found if k is not None]


def keep_set(app: Path, name: str, files: dict[str, Path | str], record: dict) -> KeptSet:
    """Keep a set under `.dmforge/versions/<name>/`: files given as a source path (copied) or text (written).

    `record["files"]` may name the sha256 a source file must have: a file that differs is refused
    (it changed after verification) and nothing is kept.
    """
    dest = kept_root(app) / name
    expected = dict(record.get("files", {}))
    known = read_kept(dest)
    if known is not None and all(known.record["files"].get(n) == d for n, d in expected.items()):
        return known
    _prepare_state_dir(app)
    with staged_dir(dest, replace_unmarked=True) as stage:
        digests = {}
        for file_name, source in files.items():
            target = stage / file_name
            if isinstance(source, Path):
                _copy(source, target)
            else:
                target.write_text(source, encoding="utf-8")
            digests[file_name] = sha256_file(target)
            if file_name in expected and digests[file_name] != expected[file_name]:
                raise DmforgeError(
                    f"{source} does not match the file that was verified (sha256 {digests[file_name][:16]}… where "
                    f"the export recorded {expected[file_name][:16]}…): it was changed or damaged after "
                    "verification, so it is not deployed. Export the run again (`dmforge export RUN`), or deploy "
                    "another version.",
                    exit_code=2,
                )
        write_json(stage / KEPT_RECORD, record | {"files": digests, "kept": time.strftime("%Y-%m-%d %H:%M:%S")})
    kept = read_kept(dest)
    assert kept is not None
    return kept


def _copy(source: Path, dest: Path) -> None:
    shutil.copyfile(source, dest)
    fsync_file(dest)


def _app_has_files(app: Path) -> bool:
    return any((Path(app) / target).is_file() for target in TARGETS.values())


def _matches(app: Path, kept: KeptSet) -> bool:
    """The app's files are exactly this kept set: the same files, each with the kept sha256."""
    for file_name, target in TARGETS.items():
        path, digest = Path(app) / target, kept.record["files"].get(file_name)
        if digest is None:
            if path.exists():
                return False
        elif not path.is_file() or sha256_file(path) != digest:
            return False
    return True


def _keep_unversioned(app: Path) -> KeptSet:
    """The app's files as they are (a model from before dmforge's versions, or edited by hand), kept."""
    taken = [k.name for k in kept_sets(app) if k.name.startswith("unversioned-")]
    number = 1 + max((int(n.rsplit("-", 1)[1]) for n in taken if n.rsplit("-", 1)[1].isdigit()), default=0)
    files = {n: Path(app) / t for n, t in TARGETS.items() if (Path(app) / t).is_file()}
    return keep_set(app, f"unversioned-{number}", files, {"version": None})


def _verify_kept(kept: KeptSet) -> None:
    for file_name, digest in kept.record["files"].items():
        path = kept.folder / file_name
        if not path.is_file() or sha256_file(path) != digest:
            raise DmforgeError(
                f"The kept copy {path} is missing or no longer matches its sha256, so it cannot be deployed. Deploy "
                "another version, or deploy this one again from its run folder (`dmforge deploy RUN --app APP`).",
                exit_code=2,
            )


def _place(source: Path, target: Path) -> None:
    """Move a staged file over `target`: a rename, or (across filesystems) a copy beside it and a rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        partial = partial_path(target)
        try:
            _copy(source, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)


def _restore(app: Path, kept: KeptSet | None) -> None:
    """Put `kept` back as the app's set (None: the app had no model, so remove what a switch placed)."""
    for file_name, target in TARGETS.items():
        path = Path(app) / target
        if kept is not None and file_name in kept.record["files"]:
            partial = partial_path(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                _copy(kept.folder / file_name, partial)
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
        else:
            path.unlink(missing_ok=True)
        fsync_dir(path.parent)


def recover(app: Path) -> str | None:
    """Undo a switch that a kill interrupted (its journal is still there); call it holding `app_lock`."""
    journal_path = state_dir(app) / "journal.json"
    journal = read_json_or_none(journal_path)
    if journal is None:
        journal_path.unlink(missing_ok=True)
        return None
    before = journal.get("from")
    _restore(app, read_kept(kept_root(app) / before) if before else None)
    journal_path.unlink(missing_ok=True)
    return (
        f"an earlier deploy into {app} was interrupted while it swapped files; the app's previous model "
        f"({before or 'none'}) was put back"
    )


def switch(app: Path, kept: KeptSet) -> KeptSet | None:
    """Make `kept` the app's set, all-or-nothing; returns the set it replaced. Hold `app_lock` around it."""
    app = Path(app)
    _verify_kept(kept)
    state = app_state(app)
    before = read_kept(kept_root(app) / state["current"]) if state["current"] else None
    if _app_has_files(app) and (before is None or not _matches(app, before)):
        before = _keep_unversioned(app)
    elif before is not None and before.name == kept.name:
        return None  # the app has exactly this set already (./train.sh run again): nothing to replace
    staging = state_dir(app) / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for file_name in kept.record["files"]:
            _copy(kept.folder / file_name, staging / file_name)
            if sha256_file(staging / file_name) != kept.record["files"][file_name]:
                raise DmforgeError(
                    f"Copying {kept.folder / file_name} gave a different file. Check the disk, then deploy again."
                )
        fsync_dir(staging)
        journal = state_dir(app) / "journal.json"
        write_json(journal, {"from": before.name if before else None, "to": kept.name})
        try:
            for file_name, target in TARGETS.items():
                if file_name in kept.record["files"]:
                    _place(staging / file_name, app / target)
                else:
                    (app / target).unlink(missing_ok=True)
            for folder in {(app / t).parent for t in TARGETS.values()}:
                fsync_dir(folder)
        except BaseException:
            _restore(app, before)  # a failure midway: the old set goes back before anything else
            journal.unlink(missing_ok=True)
            raise
        history = state["history"]
        if before is not None and history[-1:] != [before.name]:  # the app's own files, kept just now
            history.append(before.name)
        history.append(kept.name)
        write_json(state_dir(app) / "state.json", {"current": kept.name, "history": history})
        journal.unlink(missing_ok=True)
    except OSError as exc:
        raise DmforgeError(
            f"Could not deploy into {app}: {exc.strerror or exc} ({exc.filename or 'while copying'}). The app's "
            "previous model and config are in place. Free some disk space or fix the folder's permissions, then "
            "deploy again.",
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return before


def previous_set(app: Path) -> KeptSet:
    """The set deployed before the current one (what `dmforge rollback` restores)."""
    state = app_state(app)
    for name in reversed(state["history"][:-1]):
        if name != state["current"]:
            kept = read_kept(kept_root(app) / name)
            if kept is not None:
                return kept
    raise DmforgeError(
        f"{app} has no earlier model to roll back to: dmforge has deployed only "
        f"{state['current'] or 'nothing'} there. `dmforge versions --app {app}` lists what is kept.",
        exit_code=2,
    )
