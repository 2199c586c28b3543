"""Checking folders: per-file isolation, categories, duplicates, README files, bad paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import VALID, codes
from dmforge.errors import DmforgeError
from dmforge.scenarios import check_paths, collect_files
from dmforge.scenarios.check import ScenarioFile


def _tree(root: Path, files: dict[str, bytes | str]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def test_one_bad_file_never_stops_the_others(tmp_path: Path):
    root = _tree(
        tmp_path,
        {
            "combat/a.md": VALID,
            "combat/broken.md": b"\xff\xfe\x00",
            "combat/empty.md": "",
            "social/b.md": VALID.replace("Category: combat\n", "").replace("Thorin:", "Thorin says:"),
        },
    )
    report = check_paths([root])
    assert report.files == 4
    assert sorted(s.id for s in report.scenarios) == ["combat/a.md", "social/b.md"]
    assert sorted(codes(report.diagnostics)) == ["file-empty", "file-not-utf8"]
    assert report.errors == 2 and report.warnings == 0


def test_category_comes_from_the_first_folder_below_the_root(tmp_path: Path):
    no_category = VALID.replace("Category: combat\n", "")
    root = _tree(
        tmp_path,
        {
            "exploration/caves/deep.md": no_category,
            "top.md": no_category.replace("Thorin:", "Elara:"),
        },
    )
    report = check_paths([root])
    assert {s.id: s.header.category for s in report.scenarios} == {
        "exploration/caves/deep.md": "exploration",
        "top.md": "general",
    }


def test_a_file_named_alone_keeps_its_folder_category(tmp_path: Path):
    root = _tree(tmp_path, {"puzzle/riddle.md": VALID.replace("Category: combat\n", "")})
    (scenario,) = check_paths([root / "puzzle" / "riddle.md"]).scenarios
    assert scenario.header.category == "puzzle"


def test_exact_duplicate_files_are_reported_and_kept_once(tmp_path: Path):
    root = _tree(tmp_path, {"combat/a.md": VALID, "combat/copy-of-a.md": VALID})
    report = check_paths([root])
    assert [s.id for s in report.scenarios] == ["combat/a.md"]
    (d,) = report.diagnostics
    assert d.code == "scenario-duplicate" and d.file.endswith("copy-of-a.md") and "a.md" in d.message


def test_readme_and_hidden_folders_are_skipped(tmp_path: Path):
    root = _tree(tmp_path, {"README.md": "# notes", ".trash/old.md": "junk", "combat/a.md": VALID, "notes.txt": "x"})
    assert [f.id for f in collect_files([root])] == ["combat/a.md"]


def test_missing_path_is_a_usage_error(tmp_path: Path):
    with pytest.raises(DmforgeError) as info:
        check_paths([tmp_path / "nowhere"])
    assert info.value.exit_code == 2 and "nowhere" in str(info.value)


def test_folder_without_scenarios_is_an_error(tmp_path: Path):
    with pytest.raises(DmforgeError, match=r"No scenario files \(\*\.md\)"):
        check_paths([tmp_path])


def test_files_are_read_in_a_stable_order(tmp_path: Path):
    root = _tree(tmp_path, {"b/z.md": VALID, "a/y.md": VALID + "\n", "a/x.md": VALID + "\n\n"})
    assert [f.id for f in collect_files([root])] == ["a/x.md", "a/y.md", "b/z.md"]


def test_scenario_file_ids_use_forward_slashes(tmp_path: Path):
    file = ScenarioFile(tmp_path / "combat" / "x.md", tmp_path)
    assert file.id == "combat/x.md" and file.default_category == "combat"


def test_internal_errors_become_diagnostics(tmp_path: Path, monkeypatch):
    import dmforge.scenarios.check as check

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(check, "parse_scenario", explode)
    root = _tree(tmp_path, {"combat/a.md": VALID})
    report = check_paths([root])
    assert codes(report.diagnostics) == ["internal-error"] and "boom" in report.diagnostics[0].message


def test_unknown_tools_are_listed_with_every_place(tmp_path: Path):
    body = VALID.replace(
        "[roll: survival]\n\n## TOOLCALL\n[roll: survival] => 14", "[fly: up]\n\n## TOOLCALL\n[fly: up] => ok"
    )
    root = _tree(tmp_path, {"combat/a.md": body, "combat/b.md": body.replace("Thorin:", "Elara:")})
    report = check_paths([root])
    places = report.unknown_tools()
    assert list(places) == ["fly"] and len(places["fly"]) == 2
    assert all(p.endswith(":18") for p in places["fly"])
    assert report.to_json()["unknown_tools"] == places
