"""One writer per folder: a lock on a run folder and on an app's `assets/models`.

Two `./train.sh` on the same run folder, or two deploys into one app, would interleave their
checkpoints and half-copied models. The lock is an advisory `flock` on `<folder>/.dmforge.lock`,
which the kernel drops when its process dies, even by `kill -9`: a lock file left behind by a
killed process is therefore stale by construction, and the next process takes it over, says so,
and cleans up what the dead one left half-written. The file holds the holder's pid and command,
so the refusal can name them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dmforge.errors import DmforgeError
from dmforge.files import claim_folder, refuse_overlap, remove_partials

try:
    import fcntl
except ImportError:  # Windows: dmforge's users are on macOS and Linux; there the lock is advisory only
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".dmforge.lock"


@dataclass
class Holder:
    pid: int
    command: str
    host: str
    started: str

    def describe(self) -> str:
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        return f"pid {self.pid}{where}, `{self.command}`, since {self.started}"


_held: dict[Path, list] = {}  # folder → [file descriptor, depth]: a process may nest its own locks


def _read_holder(fd: int) -> Holder | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = json.loads(os.read(fd, 4096).decode("utf-8") or "null")
        return Holder(int(raw["pid"]), str(raw["command"]), str(raw["host"]), str(raw["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _me() -> bytes:
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200]
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    info = {"pid": os.getpid(), "command": command, "host": socket.gethostname(), "started": started}
    return json.dumps(info).encode()


def _acquire(lock_path: Path, what: str) -> tuple[int, Holder | None]:
    """Lock `lock_path`; return the descriptor and the dead holder whose stale lock was taken over, if any."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = holder.describe() if holder else "a process that has not written its pid yet"
            raise DmforgeError(
                f"{what} is in use by another dmforge process ({who}). Two processes writing one folder would mix "
                "their files. Wait for it to finish, or stop it (Ctrl-C in its terminal, or `kill "
                f"{holder.pid if holder else '<pid>'}`), then run the command again; it resumes where it stopped.",
                exit_code=75,
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # A holder unlinks the file as it releases; if it did so between our open and our lock, the
        # descriptor points at a file no one else will see. Start again on the file now at the path.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        stale = _read_holder(fd)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, _me())
        os.fsync(fd)
        return fd, stale


@contextmanager
def folder_lock(folder: Path, what: str, on_stale=None) -> Iterator[None]:
    """Hold the lock on `folder` (created if missing) for the block. `what` names it in the refusal.

    `on_stale(holder)` is called when the previous holder died while holding it (its leftovers are
    the caller's to clean, now that no one else can be writing).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        key = folder.resolve()
    except OSError as exc:
        raise DmforgeError(
            f"Cannot create {folder} ({exc.strerror or exc}). Check that the path is right and writable."
        ) from exc
    if fcntl is None or key in _held:
        if key in _held:
            _held[key][1] += 1
        try:
            yield
        finally:
            if key in _held:
                _held[key][1] -= 1
        return
    lock_path = folder / LOCK_NAME
    try:
        fd, stale = _acquire(lock_path, what)
    except OSError as exc:
        raise DmforgeError(
            f"Cannot lock {folder} ({exc.strerror or exc}): dmforge needs to write a {LOCK_NAME} file there. "
            "Check the folder's permissions, or choose a writable folder."
        ) from exc
    _held[key] = [fd, 1]
    try:
        if stale is not None and stale.pid != os.getpid() and on_stale is not None:
            on_stale(stale)
        yield
    finally:
        _held.pop(key, None)
        with contextlib.suppress(OSError):  # unlinked while still held, so no one locks a file about to vanish
            lock_path.unlink(missing_ok=True)
        os.close(fd)


def clean_after(folder: Path, console=None):
    """An `on_stale` callback: remove what a killed process left half-written under `folder`, and say so."""

    def clean(holder: Holder) -> None:
        from rich.markup import escape

        removed = remove_partials(folder)
        if console is not None:
            console.print(
                f"[yellow]note:[/] a dmforge process ({escape(holder.describe())}) stopped without finishing in "
                f"{escape(str(folder))}; {len(removed)} half-written file(s) it left were removed. Its complete "
                "results are kept, and this run goes on from them."
            )

    return clean


def hold_run_folder(run_dir: Path, scenarios: Path, console=None):
    """Claim `run_dir` for a training run (never the scenarios, never a folder of the user's) and lock it.

    `./train.sh` and `dmforge finetune` both call it; the lock nests, so the pipeline's hold covers finetune.
    """
    refuse_overlap(run_dir, scenarios, "scenarios folder")
    claim_folder(run_dir, legacy_sign="identity.json")
    return folder_lock(run_dir, f"The run folder {run_dir}", on_stale=clean_after(run_dir, console))
