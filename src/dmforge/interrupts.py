"""Ctrl-C and SIGTERM: both stop dmforge the same way, and never in the middle of a step that must be whole.

`kill`, a closed laptop lid under systemd, a CI timeout and `docker stop` all send SIGTERM. Python's
default ends the process on the spot, skipping the checkpoint that Ctrl-C writes; `handle_sigterm`
turns SIGTERM into `Terminated`, a `KeyboardInterrupt`, so every `except KeyboardInterrupt` path runs.

`deferred()` guards the few places where stopping halfway would leave state that no resume can
reproduce (an optimizer step taken but not counted): a signal that arrives inside is held until the
block ends. A second Ctrl-C inside stops at once, since the last complete checkpoint is still whole.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python would raise KeyboardInterrupt for Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def handle_sigterm() -> None:
    """Make SIGTERM behave like Ctrl-C for the rest of the process (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextmanager
def deferred(on_hold=None) -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then raise the first as usual.

    `on_hold()` is called when a signal is held, to tell the user why dmforge has not stopped yet.
    A second signal while one is held is raised at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum, frame) -> None:
        if held:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        held.append(signum)
        if on_hold is not None:
            on_hold()

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held:
        raise Terminated() if held[0] == signal.SIGTERM else KeyboardInterrupt()
