"""Which device and number format to train with, chosen for speed without breaking anything.

- CUDA: bf16 where the GPU supports it, else fp32 (fp16 training needs loss scaling and breaks
  more often than it helps on the small models dmforge trains).
- Apple MPS: fp32 always; bf16 on MPS gives wrong results or errors in too many kernels.
- CPU: bf16 where the processor has native bf16 (AVX512-BF16 or AMX; measured 1.4x faster than fp32
  for SmolLM2 LoRA), else fp32 (emulated bf16 is slower than fp32).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import torch

from dmforge.errors import DmforgeError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda", "mps" or "cpu"
    dtype: torch.dtype
    threads: int
    description: str
    memory_bytes: int  # what this device can hold: GPU memory, or system RAM for CPU and MPS

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def _cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def physical_cores() -> int:
    """Threads for PyTorch and llama.cpp: a hyper-thread shares its core's vector units and only slows them."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def system_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        import psutil

        return psutil.virtual_memory().total


def detect_hardware(device: str = "auto", dtype: str = "auto", threads: int | None = None) -> Hardware:
    """The device and dtype to use; `device`/`dtype` other than "auto" are honoured when possible."""
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DmforgeError("`device: cuda` was asked for, but PyTorch sees no CUDA GPU. Use `device: auto`.")
    if device == "mps" and not torch.backends.mps.is_available():
        raise DmforgeError("`device: mps` was asked for, but this machine has no Apple GPU. Use `device: auto`.")

    if dtype == "auto":
        if device == "cuda":
            chosen = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        elif device == "cpu":
            chosen = torch.bfloat16 if _cpu_has_native_bf16() else torch.float32
        else:
            chosen = torch.float32
    else:
        chosen = DTYPES[dtype]
        if device == "mps" and chosen == torch.bfloat16:
            raise DmforgeError("bf16 is unreliable on Apple MPS; use `dtype: float32` (or `auto`).")

    if threads is None and device == "cpu":
        # One thread per physical core: a second thread on a hyper-threaded core competes for the same
        # vector units, and PyTorch's own default counts logical cores on some platforms.
        threads = physical_cores()
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return Hardware(device, chosen, threads, f"CUDA {props.name} x{torch.cuda.device_count()}", props.total_memory)
    label = "Apple GPU (MPS)" if device == "mps" else f"CPU {platform.processor() or platform.machine()}"
    return Hardware(device, chosen, threads, label, system_memory_bytes())
