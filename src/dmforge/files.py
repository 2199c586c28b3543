"""Writing results so that nothing the user had is ever lost or half-written.

Every output is first written beside its destination and then renamed into place, which is
atomic on one filesystem: a crash, Ctrl-C or a full disk leaves the old file (or folder) intact.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
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
    """Write a text file atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the user expects ordinary permissions
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise _explain_os_error(exc, path) from exc


def newer_than(path: Path, *sources: Path) -> bool:
    """`path` exists and was written after every source that exists: a stage's result is still current."""
    return path.is_file() and all(not s.exists() or path.stat().st_mtime >= s.stat().st_mtime for s in sources)


def write_json(path: Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


@contextmanager
def staged_dir(dest: Path) -> Iterator[Path]:
    """Yield an empty folder beside `dest`; on success it replaces `dest`, on any failure it vanishes.

    The old folder is moved aside before the new one is renamed in, and deleted only after,
    so at every instant one complete version exists on disk.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
        os.chmod(stage, 0o777 & ~_umask())
    except OSError as exc:
        raise _explain_os_error(exc, dest) from exc
    try:
        yield stage
        old = dest.with_name(f".{dest.name}.old")
        if old.exists():
            shutil.rmtree(old)
        moved_aside = dest.exists()
        if moved_aside:
            os.replace(dest, old)
        try:
            os.replace(stage, dest)
        except OSError:
            if moved_aside:
                os.replace(old, dest)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise _explain_os_error(exc, dest) from exc
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
