"""llama.cpp's own HF → GGUF converter, pinned to the app's runtime vintage, installed once.

cactus-react-native 0.2.x embeds llama.cpp of about May 2025, the same vintage that
llama-cpp-python 0.3.9 vendors. That package's source distribution on PyPI carries
`vendor/llama.cpp/convert_hf_to_gguf.py` and its `gguf-py`, so the converter comes from the
package registry at install time (`./train.sh` runs `python -m dmforge.export.converter`), is
kept in the virtual environment, and is never cloned or compiled when a model is exported.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from dmforge.errors import DmforgeError
from dmforge.files import staged_dir

LLAMA_CPP_PYTHON = "0.3.9"  # keep equal to the runtime pinned in scripts/bootstrap.sh
_MEMBERS = (
    "vendor/llama.cpp/convert_hf_to_gguf.py",
    "vendor/llama.cpp/convert_lora_to_gguf.py",  # LoRA adapter → GGUF, for adapter updates (export/adapter.py)
    "vendor/llama.cpp/gguf-py/",
)
_SCRIPTS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py")


def converter_dir() -> Path:
    return Path(sys.prefix) / "share" / "dmforge" / f"llama.cpp-{LLAMA_CPP_PYTHON}"


def converter_script(name: str = "convert_hf_to_gguf.py") -> Path:
    script = converter_dir() / name
    if not script.is_file():
        raise DmforgeError(
            f"llama.cpp's GGUF converter (from llama-cpp-python {LLAMA_CPP_PYTHON}) is not installed. Run "
            "./train.sh once with a network connection (it installs it), or "
            f"`{sys.executable} -m dmforge.export.converter`."
        )
    return script


def extract_converter(sdist: Path, target: Path) -> None:
    """Copy the converter and its gguf-py out of a llama-cpp-python source archive."""
    with tarfile.open(sdist) as archive, staged_dir(target, replace_unmarked=True) as stage:
        prefix = archive.getnames()[0].split("/")[0] + "/"
        members = [
            m
            for m in archive.getmembers()
            if m.name.removeprefix(prefix).startswith(_MEMBERS) and (m.isfile() or m.isdir())
        ]
        if not any(m.name.endswith("convert_hf_to_gguf.py") for m in members):
            raise DmforgeError(f"{sdist} has no vendor/llama.cpp/convert_hf_to_gguf.py.")
        for member in members:
            member.name = member.name.removeprefix(prefix + "vendor/llama.cpp/")
            archive.extract(member, stage, filter="data")


def install_converter() -> Path:
    target = converter_dir()
    if all((target / name).is_file() for name in _SCRIPTS):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
            "-d",
            tmp,
        ]
        if subprocess.run(command, check=False).returncode != 0:
            raise DmforgeError(
                f"Could not download the llama-cpp-python {LLAMA_CPP_PYTHON} source from PyPI to get llama.cpp's "
                "converter. Check the network connection and run ./train.sh again."
            )
        extract_converter(next(Path(tmp).glob("*.tar.gz")), target)
    return target


if __name__ == "__main__":
    print(f"llama.cpp converter in {install_converter()}")
