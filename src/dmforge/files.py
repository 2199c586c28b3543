"""Writing results so that nothing the user had is ever lost or half-written.

Every output is first written beside its destination and then renamed into place, which is
atomic on one filesystem: a crash, Ctrl-C or a full disk leaves the old file (or folder) intact.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dmforge.errors import DmforgeError


def _explain_os_error(exc: OSError, path: Path) -> DmforgeError:
    if exc.errno == errno.ENOSPC:
        return DmforgeError(f"The disk is full while writing {path}. Free some space and run the command again.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DmforgeError(f"No permission to write {path}. Choose another output folder or fix its permissions.")
    return DmforgeError(f"Could not write {path}: {exc.strerror or exc}.")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (UTF-8): see `write_bytes`."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically: a file of its own beside `path` (see `partial_path`), then a rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = partial_path(path)
        try:
            with open(tmp, "xb") as handle:  # "x": never write into another writer's file
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise _explain_os_error(exc, path) from exc


def newer_than(path: Path, *sources: Path) -> bool:
    """`path` exists and was written after every source that exists: a stage's result is still current."""
    return path.is_file() and all(not s.exists() or path.stat().st_mtime >= s.stat().st_mtime for s in sources)


def write_json(path: Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path, fix: str) -> dict:
    """A JSON file dmforge wrote earlier; a torn or hand-edited one is an error that names it and says `fix`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DmforgeError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}). {fix}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DmforgeError(f"{path} cannot be read ({getattr(exc, 'strerror', None) or exc}). {fix}") from exc
    if not isinstance(data, dict):
        raise DmforgeError(f"{path} does not hold a JSON object. {fix}")
    return data


def read_json_or_none(path: Path) -> dict | None:
    """A cache or record dmforge can rebuild: missing, torn or hand-edited reads as None (not there)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def partial_path(dest: Path) -> Path:
    """A name beside `dest` that no other process uses: `.{name}.{pid}-{random}.partial`.

    Fixed temporary names let two runs clobber each other's half-written files; the pid and a random
    part keep them apart, and the common suffix lets `remove_partials` find what a killed process left.
    """
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.{os.getpid()}-{os.urandom(4).hex()}.partial")


def remove_partials(folder: Path) -> list[Path]:
    """Delete every `.partial` file and folder under `folder` that a killed writer left; return them.

    Everything dmforge writes goes through a `partial_path` first, so these are exactly the files that
    never became results. Call it only while holding the folder's lock (locks.py): a live writer's
    partial files would go too.
    """
    removed = [p for p in Path(folder).rglob(".*.partial")]
    for leftover in removed:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return removed


def fsync_file(path: Path) -> None:
    """Flush a written file's bytes to the disk, so a rename after it never publishes an empty file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, and the folders themselves, to the disk.

    A rename is atomic, but without this a power cut can leave the renamed folder holding empty files:
    the old checkpoint must not be dropped before the new one's bytes are on the disk.
    """
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            if not path.is_symlink():
                fsync_file(path)
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a directory; the files themselves are synced
    finally:
        os.close(fd)


# dmforge writes this file into every output folder it creates, and replaces or deletes only folders
# that carry it: a folder of the user's notes passed as `--out` is refused, never emptied.
MARKER = ".dmforge-output"


def is_inside(path: Path, folder: Path) -> bool:
    """`path` is `folder` or lies below it, after resolving links and `..`."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def refuse_overlap(out: Path, protected: Path, what: str) -> None:
    """Refuse an output folder that holds `protected` (the scenarios) or lies inside it."""
    if is_inside(protected, out):
        raise DmforgeError(
            f"The output folder {out} holds the {what} {protected}, so writing it would replace them. "
            "Choose an output folder outside the scenarios (the default is data/dataset).",
            exit_code=2,
        )
    if is_inside(out, protected):
        raise DmforgeError(
            f"The output folder {out} lies inside the {what} {protected}. dmforge reads every file there, so its "
            "own output would be read back as input. Choose an output folder outside the scenarios.",
            exit_code=2,
        )


def _owned(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _mark(folder: Path) -> None:
    (folder / MARKER).write_text("This folder was written by dmforge; dmforge may replace what it holds.\n")


def check_replaceable(dest: Path) -> None:
    """Refuse to replace `dest` unless it is missing, empty, or a folder dmforge made (it holds `MARKER`)."""
    dest = Path(dest)
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise DmforgeError(
            f"{dest} is {'a link' if dest.is_symlink() else 'a file'}, not a folder dmforge made, so dmforge will "
            "not replace it. Choose another output folder.",
            exit_code=2,
        )
    if dest.is_dir() and not _owned(dest) and any(dest.iterdir()):
        raise DmforgeError(
            f"{dest} already holds files that dmforge did not write (it has no {MARKER} file), so dmforge will not "
            "replace it. Choose another output folder, or move those files away and run the command again.",
            exit_code=2,
        )


def claim_folder(folder: Path, legacy_sign: str | None = None) -> Path:
    """Create `folder` as dmforge's, or accept it if it is already dmforge's; refuse anything else.

    A run folder is written into, not replaced, so this is the check `staged_dir` makes for replaced
    folders. `legacy_sign` names a file that marks folders made before the marker existed.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DmforgeError(f"{folder} is a file, not a folder. Name a folder (or none, for a new one).", exit_code=2)
    legacy = legacy_sign is not None and (folder / legacy_sign).is_file()
    if folder.is_dir() and not _owned(folder) and not legacy and any(folder.iterdir()):
        raise DmforgeError(
            f"{folder} already holds files that dmforge did not write (it has no {MARKER} file), so dmforge "
            "will not write into it. Name a new or empty folder, or none for a fresh one.",
            exit_code=2,
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not _owned(folder):
            _mark(folder)
    except OSError as exc:
        raise _explain_os_error(exc, folder) from exc
    return folder


@contextmanager
def staged_dir(dest: Path, replace_unmarked: bool = False) -> Iterator[Path]:
    """Yield an empty folder beside `dest`; on success it replaces `dest`, on any failure it vanishes.

    The old folder is moved aside before the new one is renamed in, and deleted only after, so at every
    instant one complete version exists on disk. Only a folder dmforge made is replaced (see `MARKER`);
    `replace_unmarked` is for folders inside dmforge's own cache or run folders, made before the marker.
    """
    dest = Path(dest)
    if not replace_unmarked:
        check_replaceable(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        stage = partial_path(dest)
        stage.mkdir()
        os.chmod(stage, 0o777 & ~_umask())
        _mark(stage)
    except OSError as exc:
        raise _explain_os_error(exc, dest) from exc
    try:
        yield stage
        fsync_tree(stage)
        old = partial_path(dest)  # a name of its own: two writers each move their own old copy aside
        moved_aside = dest.exists()
        if moved_aside:
            os.replace(dest, old)
        try:
            os.replace(stage, dest)
        except OSError:
            if moved_aside:
                os.replace(old, dest)
            raise
        fsync_dir(dest.parent)
        if moved_aside:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise _explain_os_error(exc, dest) from exc
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
