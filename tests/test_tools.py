"""New tools without an ML engineer: `dmforge tools scan` finds them, `add` registers them, `docs` documents them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, VALID
from dmforge.tools.docs import tools_markdown
from dmforge.tools.infer import check_proposal, propose
from dmforge.tools.registry import DEFAULT_REGISTRY, check_call, load_registry
from dmforge.tools.scan import CallUse, scan_corpus
from dmforge.tools.syntax import parse

NEW_TOOL = ROOT / "tests" / "fixtures" / "new_tool"
INVENTORY = """# The Quartermaster

Category: exploration
Role: Dungeon Master
World: Greyhawk
Location: Hommlet
Party: Ana (human rogue 2)

## User
Ana: I buy fifty feet of rope and a lantern, and sell the old shield.

## DM
The quartermaster counts out your coins.
[inventory: add, item=rope]
[inventory: add, item=lantern]
[inventory: remove, item=shield]

## TOOLCALL
[inventory: add, item=rope] => done
[inventory: add, item=lantern] => done
[inventory: remove, item=shield] => done

## DM
He pushes the goods across the counter. Anything else?

## User
Ana: I drop the broken lantern I already had.

## DM
It clatters on the floor.
[inventory: remove, item=broken lantern]

## TOOLCALL
[inventory: remove, item=broken lantern] => done

## DM
The quartermaster sighs and sweeps it into a bin.
"""


def dmforge(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "dmforge", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A scenarios folder with the `cast` fixture, an `inventory` scenario and a misspelt registered call."""
    root = tmp_path / "scenarios"
    shutil.copytree(NEW_TOOL, root)
    (root / "exploration").mkdir()
    (root / "exploration" / "quartermaster.md").write_text(INVENTORY)
    (root / "combat").mkdir()
    (root / "combat" / "tracks.md").write_text(
        VALID.replace("[roll: survival]\n\n## TOOLCALL", "[roll: survivl]\n\n## TOOLCALL")
    )
    return root


def uses(*calls: str) -> list[CallUse]:
    return [CallUse(parse(c), "s.md", i + 1) for i, c in enumerate(calls)]


def test_scan_finds_every_use_with_its_line(corpus: Path, registry):
    found = scan_corpus([corpus], registry)
    casts = found.unregistered(registry)["cast"]
    assert len(casts) == 8 and all(u.line == 14 for u in casts)
    assert [u.line for u in found.unregistered(registry)["inventory"]] == [14, 15, 16, 31]
    misfit = found.misfits(registry)["roll"]
    assert [(Path(u.file).name, u.line, str(u.call)) for u, _ in misfit] == [("tracks.md", 18, "[roll: survivl]")]
    assert "Did you mean `survival`?" in misfit[0][1][0]
    assert found.turns["cast"] == 8


def test_inference_reads_the_registry_rules_backwards(registry):
    cast = propose(
        "cast",
        uses("[cast: fireball, level=3]", "[cast: shield, level=1]", "[cast: bless, level=1, target=Ana]"),
        registry,
    )
    assert [(s.kinds, s.required) for s in cast.spec.positional] == [(["text"], True)]
    assert cast.spec.keywords["level"].kind == "integer" and cast.spec.keywords["level"].required
    assert cast.spec.keywords["target"].kind == "text" and not cast.spec.keywords["target"].required

    # A few words repeated across uses become the tool's own vocabulary; optional bare words become options.
    inv = propose(
        "inventory", uses(*[f"[inventory: {w}, item=x]" for w in ("add", "remove", "add", "remove")]), registry
    )
    assert inv.vocabularies == {"inventory_subject": ["add", "remove"]}
    assert inv.spec.positional[0].kinds == ["inventory_subject"]
    check = propose("check", uses("[check: stealth]", "[check: stealth, advantage]", "[check: wisdom save]"), registry)
    assert check.spec.positional[0].kinds == ["skill", "save"] and check.spec.flags == ["advantage"]
    dice = propose("hurt", uses("[hurt: 2d6]", "[hurt: 5]", "[hurt: 1d8+2]"), registry)
    assert dice.spec.positional[0].kinds == ["dice_or_number"] and not dice.conflicts

    for proposal, calls in ((cast, 3), (inv, 4), (check, 3), (dice, 3)):
        assert len(proposal.conflicts) <= 1 or proposal is cast
        assert proposal.uses == calls


def test_inference_reports_conflicts_instead_of_hiding_them(registry):
    typo = propose("rol", uses("[rol: perception]", "[rol: stealth]", "[rol: insight]"), registry)
    assert any("misspelling of the registered tool `roll`" in c for c in typo.conflicts)
    mixed = propose("hurt", uses("[hurt: 2d6]", "[hurt: 1d8]", "[hurt: 1d4]", "[hurt: a lot]"), registry)
    assert mixed.spec.positional[0].kinds == ["text"]
    assert any("s.md:4" in c and "`dice`" in c for c in mixed.conflicts)
    few = propose("bless", uses("[bless: Ana]"), registry)
    assert any("only 1 use" in c for c in few.conflicts)


def test_every_use_fits_the_proposed_entry(corpus: Path, registry):
    found = scan_corpus([corpus], registry)
    for name, calls in found.unregistered(registry).items():
        proposal = propose(name, calls, registry)
        extended = check_proposal(proposal, calls, registry)
        assert not [c for c in proposal.conflicts if "still fails" in c]
        assert all(check_call(u.call, extended) == [] for u in calls)


def test_scan_cli_lists_new_tools_and_misfits(corpus: Path):
    result = dmforge("tools", "scan", "--scenarios", str(corpus), "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert set(report["unregistered"]) == {"cast", "inventory"}
    cast = report["unregistered"]["cast"]
    assert cast["uses"] == 8 and len(cast["places"]) == 8 and cast["places"][0].endswith(".md:14")
    assert cast["entry"]["keywords"]["level"] == {"kind": "integer", "required": True}
    assert report["misfits"]["roll"][0]["call"] == "[roll: survivl]"
    human = dmforge("tools", "scan", "--scenarios", str(corpus))
    assert "dmforge tools add cast inventory" in human.stdout and "Traceback" not in human.stderr
    assert dmforge("tools", "scan").returncode == 0  # the sample corpus fits the built-in registry


def test_add_writes_the_project_registry_and_config_and_rechecks(corpus: Path, tmp_path: Path):
    (corpus / "combat" / "tracks.md").unlink()  # only the new tools are left to fix
    project = tmp_path / "game"
    project.mkdir()
    result = dmforge("tools", "add", "cast", "inventory", "--scenarios", str(corpus), cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 errors" in result.stdout and "dmforge tools docs" in result.stdout
    written = (project / "tools.yaml").read_text()
    builtin = (ROOT / "src/dmforge/tools/registry.yaml").read_text()
    # The copy keeps the built-in file's comments and order, with the new entries appended in the same style.
    assert written.replace("  inventory_subject: [add, remove]\n", "").startswith(builtin)
    assert written.index("\n  cast:\n") < written.index("\n  inventory:\n")
    assert "      - {name: subject, kinds: [inventory_subject]}\n" in written
    assert "  inventory_subject: [add, remove]\n" in written
    registry = load_registry(project / "tools.yaml")
    assert check_call(parse("[cast: fireball, level=3]"), registry) == []
    assert (project / "dmforge.yaml").read_text() == "data:\n  tool_registry: tools.yaml\n"
    # The project config is read without --config, so every command now knows the new tools.
    assert dmforge("data", "check", str(corpus), cwd=project).returncode == 0
    again = dmforge("tools", "add", "cast", "--scenarios", str(corpus), cwd=project)
    assert again.returncode == 0 and "already registered" in again.stdout
    assert (project / "tools.yaml").read_text() == written


def test_add_sets_the_registry_in_a_named_config_and_keeps_its_comments(corpus: Path, tmp_path: Path):
    config = tmp_path / "game.yaml"
    config.write_text("# my game\ntrain:\n  max_steps: 10  # short runs\n")
    result = dmforge(
        "tools",
        "add",
        "cast",
        "--scenarios",
        str(corpus),
        "--config",
        str(config),
        "--registry",
        str(tmp_path / "t.yaml"),
    )
    assert result.returncode == 1  # inventory and the misspelt roll still fail, and are listed
    assert "inventory" in result.stdout and "survivl" in result.stdout
    text = config.read_text()
    assert text.startswith("# my game\ntrain:\n  max_steps: 10  # short runs\n")
    assert f"tool_registry: {tmp_path / 't.yaml'}" in text


def test_add_refuses_names_the_scenarios_never_call(corpus: Path, tmp_path: Path):
    result = dmforge("tools", "add", "teleport", "--scenarios", str(corpus), "--registry", str(tmp_path / "t.yaml"))
    assert result.returncode == 2 and "never call `teleport`" in result.stderr
    assert "cast, inventory" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "t.yaml").exists()


def test_a_hand_edited_registry_with_a_mistake_names_its_line(corpus: Path, tmp_path: Path):
    broken = tmp_path / "t.yaml"
    text = (ROOT / "src/dmforge/tools/registry.yaml").read_text()
    broken.write_text(
        text.replace("      dc: {kind: integer, min: 1, max: 40}", "      dc: {kind: integr, min: 1, max: 40}")
    )
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  tool_registry: {broken}\n")
    result = dmforge("tools", "scan", "--scenarios", str(corpus), "--config", str(config))
    line = next(i for i, text in enumerate(broken.read_text().splitlines(), 1) if "integr" in text)
    assert result.returncode == 1 and f"line {line}" in result.stderr and "`integer`" in result.stderr
    assert "Traceback" not in result.stderr


def test_committed_tool_docs_are_current():
    registry = load_registry()
    corpus = scan_corpus([ROOT / "data" / "scenarios"], registry)
    expected = tools_markdown(registry, corpus, DEFAULT_REGISTRY, "data/scenarios")
    committed = (ROOT / "docs" / "tools.md").read_text()
    assert committed == expected, "docs/tools.md is stale: run `dmforge tools docs` and commit it"


def test_docs_show_syntax_values_examples_and_warn_on_rare_tools(corpus: Path, tmp_path: Path):
    project = tmp_path / "game"
    project.mkdir()
    assert dmforge("tools", "add", "cast", "inventory", "--scenarios", str(corpus), cwd=project).returncode == 1
    result = dmforge("tools", "docs", "--scenarios", str(corpus), cwd=project)
    assert result.returncode == 0, result.stderr
    page = (project / "docs" / "tools.md").read_text()
    assert "Syntax: `[cast: <name>, level=<level>, (target=<target>)]`" in page
    assert "- `[cast: fireball, level=3]`" in page
    assert "8 DM turns in the scenarios call `cast`. ⚠" in page
    assert "**inventory_subject**: `add`, `remove`" in page
    check = dmforge("tools", "docs", "--scenarios", str(corpus), "--check", cwd=project)
    assert check.returncode == 0
    (project / "docs" / "tools.md").write_text(page + "edited\n")
    assert dmforge("tools", "docs", "--scenarios", str(corpus), "--check", cwd=project).returncode == 1
