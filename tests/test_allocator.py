"""train.sh's allocator choice (scripts/allocator.sh): jemalloc where it loads, glibc's otherwise, and never a
library the loader would refuse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "allocator.sh"


def _installed_jemalloc() -> Path | None:
    """The first of the script's own places that holds the library, if any."""
    if sys.platform != "linux":
        return None
    places = subprocess.run(
        ["bash", "-c", f"source {SCRIPT}; echo $DMFORGE_JEMALLOC_PLACES"], capture_output=True, text=True, check=True
    ).stdout.split()
    return next((Path(p) for p in places if Path(p).is_file()), None)


SYSTEM_JEMALLOC = _installed_jemalloc()

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the allocator is chosen on Linux only")


def _choose(tmp_path: Path, places: str, **env: str) -> subprocess.CompletedProcess:
    """Source the script as train.sh does, with `places` as its search list; print the environment it leaves."""
    script = (
        f"set -euo pipefail; source {SCRIPT}; DMFORGE_JEMALLOC_PLACES='{places}'; "
        'dmforge_allocator; echo "LD_PRELOAD=${LD_PRELOAD:-}"; echo "MALLOC_CONF=${MALLOC_CONF:-}"'
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "DMFORGE_ALLOCATOR")}
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env={**clean, **env}, check=True, cwd=tmp_path
    )


def _vars(result: subprocess.CompletedProcess) -> dict[str, str]:
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def test_without_jemalloc_the_system_allocator_stays_and_the_user_learns_how_to_get_it(tmp_path: Path):
    result = _choose(tmp_path, str(tmp_path / "missing.so"), PATH="/usr/bin:/bin")
    assert _vars(result) == {"LD_PRELOAD": "", "MALLOC_CONF": ""}
    assert "apt install libjemalloc2" in result.stderr


def test_a_library_the_loader_refuses_is_never_preloaded(tmp_path: Path):
    broken = tmp_path / "libjemalloc.so.2"
    broken.write_bytes(b"not an ELF file")
    result = _choose(tmp_path, str(broken), DMFORGE_JEMALLOC=str(broken))
    assert _vars(result)["LD_PRELOAD"] == ""
    assert "cannot be preloaded" in result.stderr


@pytest.mark.skipif(SYSTEM_JEMALLOC is None, reason="libjemalloc2 is not installed here")
def test_jemalloc_is_preloaded_and_torch_trains_under_it(tmp_path: Path):
    chosen = _vars(_choose(tmp_path, f"{tmp_path / 'missing.so'} {SYSTEM_JEMALLOC}"))
    assert chosen["LD_PRELOAD"] == str(SYSTEM_JEMALLOC)
    assert "background_thread:true" in chosen["MALLOC_CONF"]
    # The real library in a real process: torch allocates through it and a backward pass runs.
    probe = (
        "import torch; x = torch.randn(64, 64, requires_grad=True); (x @ x).sum().backward(); "
        "print(any('jemalloc' in line for line in open('/proc/self/maps')), float(x.grad.abs().sum()) > 0)"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env={**os.environ, **chosen}, check=True
    )
    assert ran.stdout.split() == ["True", "True"], ran.stderr


@pytest.mark.skipif(SYSTEM_JEMALLOC is None, reason="libjemalloc2 is not installed here")
def test_the_users_own_settings_win(tmp_path: Path):
    kept = _vars(_choose(tmp_path, str(SYSTEM_JEMALLOC), MALLOC_CONF="narenas:1"))
    assert kept["MALLOC_CONF"] == "narenas:1"
    off = _vars(_choose(tmp_path, str(SYSTEM_JEMALLOC), DMFORGE_ALLOCATOR="system"))
    assert off["LD_PRELOAD"] == ""
