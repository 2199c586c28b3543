"""Bytes on disk → normalized text, or the reason a file cannot be a scenario.

Game masters save files from every editor there is, so a byte-order mark and Windows line
endings are accepted silently; what cannot be read is rejected with the file and the line.
"""

from __future__ import annotations

from pathlib import Path

from dmforge.scenarios.diagnostics import Diagnostic, diagnose

DEFAULT_MAX_FILE_BYTES = 1024 * 1024


def decode_scenario(
    data: bytes, file: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> tuple[str | None, list[Diagnostic]]:
    """Decode a scenario's bytes; on failure the text is None and one diagnostic says why."""
    if len(data) > max_bytes:
        return None, [
            diagnose(
                "file-too-large",
                file,
                1,
                f"the file is {len(data):,} bytes; the limit is {max_bytes:,} bytes",
            )
        ]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return None, [
            diagnose(
                "file-not-utf8",
                file,
                line,
                f"byte 0x{data[exc.start]:02x} at offset {exc.start} is not valid UTF-8",
            )
        ]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        return None, [diagnose("file-empty", file, 1, "the file has no text")]
    return text, []


def read_scenario_file(path: Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[str | None, list[Diagnostic]]:
    """Read one file from disk; the size is checked before the bytes are loaded."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return None, [
                diagnose("file-too-large", path, 1, f"the file is {size:,} bytes; the limit is {max_bytes:,} bytes")
            ]
        data = path.read_bytes()
    except OSError as exc:
        return None, [diagnose("file-unreadable", path, 1, f"cannot read the file: {exc.strerror or exc}")]
    return decode_scenario(data, str(path), max_bytes)
