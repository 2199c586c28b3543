"""The `dmforge` command: a thin layer that parses options, calls a pipeline stage, and prints.

Every user-fixable problem arrives here as a `DmforgeError` and leaves as one paragraph on
stderr with a non-zero exit code; Ctrl-C leaves quietly with 130.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import typer
from rich.text import Text

from dmforge.cli.root import app, err_console
from dmforge.errors import DmforgeError
from dmforge.interrupts import Terminated, handle_sigterm

# Importing a group's module registers its commands on `app`, and `dmforge --help` lists them in this order.
# isort: off
from dmforge.cli import data, tools, models, train, export, evaluate, deploy, pipeline  # noqa: F401
# isort: on


def main() -> None:
    """Entry point: run the app and turn every failure into one readable paragraph, never a traceback."""
    # transformers draws a bar for every model load and peft prints a deprecation notice per run: noise
    # between dmforge's own progress bars. Hub downloads turn bars back on (models/resolve.py).
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    handle_sigterm()
    try:
        # Without standalone mode Click returns the code given to `typer.Exit` instead of exiting.
        code = app(standalone_mode=False)
    except DmforgeError as exc:
        _print_error(str(exc))
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort) as exc:
        signal_name = "Terminated (SIGTERM)" if isinstance(exc, Terminated) else "Interrupted"
        err_console.print(
            Text.assemble(
                (f"{signal_name}.", "yellow"),
                " Nothing half-written was left behind; run the command again to resume.",
            )
        )
        sys.exit(143 if isinstance(exc, Terminated) else 130)
    except typer.TyperException as exc:  # usage errors: unknown option, missing argument (exit 2)
        exc.show()  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)
    except Exception as exc:
        _print_error(_unexpected(exc))
        sys.exit(70)
    sys.exit(code if isinstance(code, int) else 0)


def _print_error(message: str) -> None:
    # Paths and scenario text are the user's: `[/x]` in a folder name is text, never Rich markup.
    err_console.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)


def _unexpected(exc: BaseException) -> str:
    """A bug in dmforge, not in the user's input: one paragraph, with the traceback kept in a file."""
    import tempfile
    import time
    import traceback

    if isinstance(exc, MemoryError):
        return (
            "dmforge ran out of memory. Close other programs, or lower train.max_seq_len or train.batch_size "
            "in your config, then run the command again; finished work is kept."
        )
    log = Path(tempfile.gettempdir()) / f"dmforge-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    try:
        log.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
        where = f"The full traceback is in {log}; please attach it to a bug report."
    except OSError:
        where = "Run it again with PYTHONFAULTHANDLER=1 to see where it failed, and please report it."
    return (
        f"dmforge failed unexpectedly with {type(exc).__name__}: {exc}. This is a bug in dmforge, not in your "
        f"scenarios or options. {where} Finished work is kept: run the command again to resume."
    )
