"""scripts/bootstrap.sh's disk check: a first install that cannot fit stops before pip fills the disk, and
says how much it needs and how much is free; an update of an installed .venv needs far less."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bootstrap.sh"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="bootstrap.sh is a bash script")


def _check_space(project: Path, free_mb: int, **env: str) -> subprocess.CompletedProcess:
    """Run dmforge_check_space in `project`, under the shell options test.sh and train.sh set, with a `df`
    that reports `free_mb` free."""
    bin_dir = project / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    df = bin_dir / "df"
    df.write_text(
        "#!/bin/sh\n"
        "echo 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
        f"echo '/dev/vda 999999999 1 {free_mb * 1024} 1% /'\n"
    )
    df.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if k != "DMFORGE_INSTALL_MB"}
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; source {SCRIPT}; dmforge_check_space && echo fits"],
        capture_output=True,
        text=True,
        cwd=project,
        env={**clean, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env},
    )


def test_a_first_install_that_cannot_fit_stops_and_says_what_to_free(tmp_path: Path):
    result = _check_space(tmp_path, free_mb=1000)
    assert result.returncode == 1
    assert "fits" not in result.stdout
    message = " ".join(result.stderr.split())
    assert "needs about 3000 MB free" in message and "1000 MB are free" in message
    assert str(tmp_path) in message and "pip cache purge" in message


def test_a_first_install_with_room_goes_ahead(tmp_path: Path):
    result = _check_space(tmp_path, free_mb=5000)
    assert result.returncode == 0 and "fits" in result.stdout
    assert result.stderr == ""


def test_an_update_of_a_venv_that_holds_torch_needs_far_less(tmp_path: Path):
    version = subprocess.run(
        ["bash", "-c", f"source {SCRIPT}; echo $TORCH_VERSION"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (tmp_path / ".venv" / "lib" / "python3.11" / "site-packages" / f"torch-{version}+cpu.dist-info").mkdir(parents=True)
    assert _check_space(tmp_path, free_mb=1000).returncode == 0
    assert _check_space(tmp_path, free_mb=100).returncode == 1


def test_the_estimate_can_be_overridden(tmp_path: Path):
    assert _check_space(tmp_path, free_mb=1000, DMFORGE_INSTALL_MB="800").returncode == 0
    assert _check_space(tmp_path, free_mb=1000, DMFORGE_INSTALL_MB="1200").returncode == 1
