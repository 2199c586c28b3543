"""Reading files: encodings, line endings, size, emptiness; each failure names file, line, reason."""

from __future__ import annotations

from pathlib import Path

from conftest import VALID, codes, parse_text
from dmforge.scenarios.reader import decode_scenario, read_scenario_file


def test_bom_and_crlf_are_accepted_silently():
    data = "\ufeff".encode() + VALID.replace("\n", "\r\n").encode()
    text, diags = decode_scenario(data, "s.md")
    assert diags == []
    assert "\r" not in text and not text.startswith("\ufeff")
    scenario, diags = parse_text(text)
    assert diags == []
    assert scenario.header.title == "Goblin Ambush on the Triboar Trail"
    assert [t.kind.value for t in scenario.turns] == ["user", "dm", "toolcall", "dm"]


def test_old_mac_line_endings_are_normalized():
    text, diags = decode_scenario(VALID.replace("\n", "\r").encode(), "s.md")
    assert diags == [] and text.count("\n") == VALID.count("\n")


def test_empty_and_blank_files_are_rejected():
    for data in (b"", b"   \n\n\t", "\ufeff".encode()):
        text, diags = decode_scenario(data, "s.md")
        assert text is None and codes(diags) == ["file-empty"]


def test_non_utf8_names_the_line_of_the_bad_byte():
    data = b"# Title\nRole: Dungeon Master\nWorld: caf\xe9\n"
    text, diags = decode_scenario(data, "cafe.md")
    assert text is None
    (d,) = diags
    assert (d.code, d.file, d.line) == ("file-not-utf8", "cafe.md", 3)
    assert "0xe9" in d.message and "UTF-8" in d.hint


def test_oversize_file_is_rejected_before_reading(tmp_path: Path):
    path = tmp_path / "big.md"
    path.write_bytes(b"x" * 2048)
    text, diags = read_scenario_file(path, max_bytes=1024)
    assert text is None and codes(diags) == ["file-too-large"]
    assert "2,048 bytes" in diags[0].message and "max_file_bytes" in diags[0].hint


def test_default_limit_is_one_mebibyte(tmp_path: Path):
    path = tmp_path / "big.md"
    path.write_bytes(VALID.encode() + b"\n" + b"a" * (1024 * 1024))
    assert codes(read_scenario_file(path)[1]) == ["file-too-large"]


def test_unreadable_path(tmp_path: Path):
    text, diags = read_scenario_file(tmp_path / "missing.md")
    assert text is None and codes(diags) == ["file-unreadable"]
