"""`dmforge data audit`: coverage against floors, quiet turns, cue conflicts, near duplicates, JSON and PNG."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from dmforge.config import AuditConfig
from dmforge.dataset.audit import action_verbs, audit, read_rulebook
from dmforge.scenarios import check_paths
from test_cli import assert_no_traceback, dmforge

HEADER = "Role: Dungeon Master\nWorld: W\nLocation: L\nParty: Ana (human rogue 2)\n"


def _scene(folder: Path, name: str, *exchanges: tuple[str, str], category: str = "exploration") -> None:
    """A scenario of (player line, DM reply) exchanges; a reply with a call gets a TOOLCALL and a quiet DM turn."""
    body = []
    for player, dm in exchanges:
        body += ["## User", f"Ana: {player}", "", "## DM", dm, ""]
        calls = [line for line in dm.splitlines() if line.startswith("[")]
        if calls:
            body += ["## TOOLCALL", *(f"{c} => 12" for c in calls), "", "## DM", "Twelve. It works out.", ""]
    path = folder / category / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {name}\n\n{HEADER}\n" + "\n".join(body), encoding="utf-8")


def test_action_verbs_skip_auxiliaries_hedges_and_getting_into_place():
    assert action_verbs("Mira: While she talks, I'll quietly watch her face.") == ["watch"]
    assert action_verbs("Bo: I'm not answering yet. I look the ship over.") == ["look"]
    assert action_verbs("Bo: I step up to the guard and tell him we're pilgrims.") == ["tell"]
    assert action_verbs("Bo: I kick the door, then climb through.") == ["kick", "climb"]
    assert action_verbs("Bo: What's that noise?") == []


def test_a_verb_the_corpus_answers_with_one_check_is_a_conflict_elsewhere(tmp_path: Path):
    for i in range(5):
        _scene(tmp_path, f"wall-{i}", (f"I climb the wall number {i}.", "It is slick with rain.\n[roll: athletics]"))
    _scene(tmp_path, "odd-one", ("I climb the rigging to the crow's nest.", "Up you go.\n[roll: acrobatics]"))
    scenarios = check_paths([tmp_path]).scenarios
    report = audit(scenarios, _registry(), AuditConfig(rulebook=None))
    (conflict,) = report.conflicts
    assert conflict["verb"] == "climb" and conflict["expected"] == ["athletics"] and not conflict["documented"]
    assert conflict["checks"] == {"athletics": 5, "acrobatics": 1}
    (place,) = conflict["places"]
    assert place["check"] == "acrobatics" and place["file"].endswith("odd-one.md") and place["line"] == 8
    assert not report.passed


def test_the_rulebook_documents_verbs_whose_object_decides(tmp_path: Path):
    rulebook = tmp_path / "rules.md"
    rulebook.write_text(
        textwrap.dedent(
            """\
            ## Actions whose object decides

            | verb | checks | what decides |
            |---|---|---|
            | look, examine | perception, insight | the room: perception; a face: insight |
            """
        )
    )
    assert read_rulebook(rulebook) == {"look": {"perception", "insight"}, "examine": {"perception", "insight"}}
    corpus = tmp_path / "corpus"
    for i in range(5):
        _scene(corpus, f"room-{i}", (f"I look around room {i}.", "Dust everywhere.\n[roll: perception]"))
    _scene(corpus, "face", ("I look at his face. Is he lying?", "He meets your eyes.\n[roll: insight]"))
    _scene(corpus, "book", ("I look through the ledger.", "Columns of figures.\n[roll: investigation]"))
    report = audit(check_paths([corpus]).scenarios, _registry(), AuditConfig(rulebook=rulebook))
    (conflict,) = report.conflicts  # insight is documented for `look`, investigation is not
    assert conflict["documented"] and [p["check"] for p in conflict["places"]] == ["investigation"]


def test_floors_and_quiet_turns(tmp_path: Path):
    _scene(tmp_path, "a", ("I sneak past.", "The guard dozes.\n[roll: stealth]"), ("I wave.", "She waves back."))
    report = audit(check_paths([tmp_path]).scenarios, _registry(), AuditConfig(skill_floor=2, tool_floor=1))
    below = {(b["kind"], b["name"]): b["calls"] for b in report.below_floor()}
    assert below[("skill", "stealth")] == 1 and below[("skill", "arcana")] == 0  # every skill is listed
    assert ("tool", "roll") not in below and below[("tool", "attack")] == 0
    data = report.to_json()
    assert data["dm_turns"] == 3 and data["quiet_share"] == pytest.approx(2 / 3)
    assert data["quiet_share_per_category"]["exploration"] == {"dm_turns": 3, "quiet_share": pytest.approx(2 / 3)}


def test_near_duplicates_across_files_are_found_and_stock_phrases_are_not(tmp_path: Path):
    line = "I press my ear against the cold iron door and listen for the guards on the other side."
    _scene(tmp_path, "one", (line, "Footsteps, two sets.\n[roll: perception]"))
    _scene(tmp_path, "two", (line.replace("cold", "rusted"), "Silence.\n[roll: perception]"))
    _scene(tmp_path, "three", ("I sing a song about the old king of the mountain.", "They cheer.\n[roll: performance]"))
    duplicates = audit(check_paths([tmp_path]).scenarios, _registry(), AuditConfig()).duplicates
    assert len(duplicates) == 1 and duplicates[0]["kind"] == "player" and duplicates[0]["similarity"] > 0.6
    assert {duplicates[0]["a"]["file"], duplicates[0]["b"]["file"]} == {
        str(tmp_path / "exploration" / "one.md"),
        str(tmp_path / "exploration" / "two.md"),
    }


def test_the_cli_writes_json_and_a_png_and_exits_1_when_the_audit_fails(tmp_path: Path):
    corpus = tmp_path / "corpus"
    _scene(corpus, "a", ("I sneak past.", "The guard dozes.\n[roll: stealth]"))
    png = tmp_path / "coverage.png"
    result = dmforge("data", "audit", str(corpus), "--json", "--png", str(png))
    assert_no_traceback(result)
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert not data["passed"] and data["coverage"]["skill"]["stealth"] == {"calls": 1, "scenarios": 1}
    assert {"kind": "skill", "name": "stealth", "calls": 1, "floor": 40} in data["below_floor"]
    assert png.read_bytes().startswith(b"\x89PNG")
    human = dmforge("data", "audit", str(corpus))
    assert human.returncode == 1 and "audit fails" in human.stdout and "stealth" in human.stdout


def _registry():
    from dmforge.tools.registry import load_registry

    return load_registry()
