"""Quantize an F16 GGUF with llama.cpp itself (through llama-cpp-python), and see what it did.

The `gguf` package cannot write K-quants, so llama.cpp's own quantizer does the work; it takes a
second or two for these models.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dmforge.errors import DmforgeError
from dmforge.files import partial_path

# Name → llama.cpp's file type. F16 is the converter's output itself.
QUANT_TYPES = {"F16": 1, "Q8_0": 7, "Q6_K": 18, "Q5_K_M": 17, "Q5_0": 8, "Q4_K_M": 15, "Q4_0": 2}
# The row width each type's blocks need: K-quants pack 256 weights per block, the older types 32. A
# matrix whose rows are not a multiple falls back to another type (llama.cpp picks Q5_0, Q5_1 or Q8_0).
BLOCK_WIDTH = {"F16": 1, "Q8_0": 32, "Q6_K": 256, "Q5_K_M": 256, "Q5_0": 32, "Q4_K_M": 256, "Q4_0": 32}
# Always exported: the reference, the safe choice for tiny models, and the usual phone default.
ALWAYS = ("F16", "Q8_0", "Q4_K_M")


@contextmanager
def _native_output_to(log: Path) -> Iterator[None]:
    """Send what llama.cpp's C code prints (a few lines per tensor) to `log` instead of the terminal.

    Python's sys.stdout cannot catch it: the C library writes to file descriptors 1 and 2 directly.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("wb") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def quantize(f16: Path, out: Path, quant: str) -> Path:
    if quant not in QUANT_TYPES:
        raise DmforgeError(f"Unknown quantization `{quant}`. Choose from {', '.join(QUANT_TYPES)}.", exit_code=2)
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[quant]
    params.nthread = os.cpu_count() or 1
    partial = partial_path(out)
    log = out.with_name(out.stem + ".quantize.log")
    with _native_output_to(log):
        code = llama_cpp.llama_model_quantize(str(f16).encode(), str(partial).encode(), ctypes.byref(params))
    if code != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise DmforgeError(
            f"llama.cpp could not quantize {f16} to {quant} (code {code}). {_log_tail(log)}Its whole output is in "
            f"{log}. Export without this type (drop it from export.quants), or report the log."
        )
    partial.replace(out)
    return out


def tensor_types(gguf: Path) -> Counter:
    from gguf import GGUFReader

    return Counter(t.tensor_type.name for t in GGUFReader(gguf).tensors)


def _row_widths(gguf: Path) -> list[int]:
    """The row width (llama.cpp's ne0) of every weight matrix in the file; 1-D norms never quantize."""
    from gguf import GGUFReader

    return [int(t.shape[0]) for t in GGUFReader(gguf).tensors if len(t.shape) > 1]


def fallback_share(gguf: Path, quant: str) -> tuple[int, int]:
    """(weight matrices that cannot take `quant`'s blocks, all weight matrices) for the model in `gguf`.

    Counted from the model's shapes, so it is the same for the F16 file and its quantizations: the
    types a mix chooses on purpose (Q4_K_M keeps some matrices at Q6_K) are not fallbacks.
    """
    widths = _row_widths(gguf)
    return sum(w % BLOCK_WIDTH[quant] != 0 for w in widths), len(widths)


def export_types(f16: Path, requested: list[str]) -> list[str]:
    """What to write: the requested types, the ones always made, and every other type the model's widths
    take without fallback (so the measured choice of what ships has every clean candidate)."""
    widths = _row_widths(f16)
    clean = [q for q in QUANT_TYPES if all(w % BLOCK_WIDTH[q] == 0 for w in widths)]
    wanted = [*ALWAYS, *requested, *clean]
    return [q for q in QUANT_TYPES if q in wanted]


def _log_tail(log: Path, lines: int = 8) -> str:
    """The last lines of a native log, to show in the error itself rather than 'see the log'."""
    try:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return ("It ended with: " + " | ".join(line.strip() for line in tail if line.strip()) + ". ") if tail else ""
