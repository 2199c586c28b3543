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

# Name → llama.cpp's file type. F16 is the converter's output itself.
QUANT_TYPES = {"F16": 1, "Q8_0": 7, "Q6_K": 18, "Q5_K_M": 17, "Q4_K_M": 15, "Q4_0": 2}
# The tensor type each file type is mostly made of, to count the tensors that fell back to another.
_MAIN_TENSOR_TYPE = {"F16": "F16", "Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K_M": "Q5_K", "Q4_K_M": "Q4_K", "Q4_0": "Q4_0"}


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
    partial = out.with_name(out.name + ".partial")
    log = out.with_name(out.stem + ".quantize.log")
    with _native_output_to(log):
        code = llama_cpp.llama_model_quantize(str(f16).encode(), str(partial).encode(), ctypes.byref(params))
    if code != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise DmforgeError(f"llama.cpp could not quantize {f16} to {quant} (code {code}); its output is in {log}.")
    partial.replace(out)
    return out


def tensor_types(gguf: Path) -> Counter:
    from gguf import GGUFReader

    return Counter(t.tensor_type.name for t in GGUFReader(gguf).tensors)


def fallback_share(gguf: Path, quant: str) -> tuple[int, int]:
    """(tensors of another type than the quant's main one, all 2-D tensors) — 1-D norms never count."""
    from gguf import GGUFReader

    matrices = [t for t in GGUFReader(gguf).tensors if len(t.shape) > 1]
    other = sum(t.tensor_type.name != _MAIN_TENSOR_TYPE[quant] for t in matrices)
    return other, len(matrices)
