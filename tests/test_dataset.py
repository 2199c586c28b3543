"""The dataset builder: conversations, split, augmentation, dedupe, files on disk, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import CORPUS, VALID, parse_text
from dmforge.config import DataConfig
from dmforge.dataset import build_dataset, split_scenarios, to_conversation
from dmforge.dataset.augment import rename_scenario
from dmforge.errors import DmforgeError
from dmforge.scenarios import TurnKind, check_paths
from dmforge.tools.registry import check_call

CORPUS_SCENARIOS = check_paths([CORPUS]).scenarios


def test_conversation_messages_keep_every_turn_and_structure():
    scenario, _ = parse_text(VALID, category="combat")
    conv = to_conversation(scenario, DataConfig())
    roles = [m["role"] for m in conv["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    system, user, dm, tool, dm2 = conv["messages"]
    assert system["content"].startswith("You are the Dungeon Master of a D&D 5e game.")
    assert "World: Forgotten Realms, 1491 DR" in system["content"]
    assert "Party: Thorin Ironfist (dwarf fighter 3)" in system["content"]
    assert user["name"] == "Thorin" and user["content"].startswith("Thorin: I creep")
    assert dm["tool_calls"] == [
        {"name": "roll", "call": "[roll: survival]", "arguments": [{"key": "", "value": "survival"}]}
    ]
    assert tool["content"] == "[roll: survival] => 14"
    assert tool["tool_results"][0]["result"] == "14" and tool["tool_results"][0]["name"] == "roll"
    assert dm2["tool_calls"] == []
    # every message has every field, so Arrow sees one schema
    assert all(set(m) == {"role", "content", "name", "tool_calls", "tool_results"} for m in conv["messages"])
    assert conv["party"] == ["Thorin Ironfist", "Elara Moonwhisper"] and conv["category"] == "combat"


def test_split_is_deterministic_stratified_and_by_whole_scenario():
    train, val = split_scenarios(CORPUS_SCENARIOS, 0.15, seed=1)
    again = split_scenarios(list(reversed(CORPUS_SCENARIOS)), 0.15, seed=1)
    assert {s.id for s in val} == {s.id for s in again[1]}
    assert not {s.id for s in train} & {s.id for s in val}
    assert len(train) + len(val) == len(CORPUS_SCENARIOS)
    by_category: dict[str, list[int]] = {}
    for split, scenarios in ((0, train), (1, val)):
        for s in scenarios:
            by_category.setdefault(s.header.category, [0, 0])[split] += 1
    for category, (n_train, n_val) in by_category.items():
        assert n_val >= 1, category
        assert abs(n_val - 0.15 * (n_train + n_val)) <= 1, category
    other_seed = split_scenarios(CORPUS_SCENARIOS, 0.15, seed=2)[1]
    assert {s.id for s in other_seed} != {s.id for s in val}


def test_adding_a_scenario_moves_at_most_one_other():
    base = CORPUS_SCENARIOS[:-1]
    _, val_before = split_scenarios(base, 0.15, seed=3)
    _, val_after = split_scenarios(CORPUS_SCENARIOS, 0.15, seed=3)
    before = {s.id for s in val_before}
    after = {s.id for s in val_after} - {CORPUS_SCENARIOS[-1].id}
    assert len(before ^ after) <= 1


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(CORPUS_SCENARIOS), st.integers(1, 5), st.integers(0, 10_000))
def test_augmentation_never_breaks_a_tool_call(scenario, copy_index, seed):
    from dmforge.tools.registry import load_registry

    registry = load_registry()
    renamed = rename_scenario(scenario, registry, seed, copy_index)
    if renamed is None:
        return
    assert len(renamed.turns) == len(scenario.turns)
    for before, after in zip(scenario.turns, renamed.turns, strict=True):
        assert before.kind is after.kind
        assert [c.name for c in before.calls] == [c.name for c in after.calls]
        assert all(check_call(c, registry) == [] for c in after.calls)
        if after.kind is TurnKind.TOOLCALL:
            dm = renamed.turns[renamed.turns.index(after) - 1]
            assert [r.call.normalized() for r in after.results] == [c.normalized() for c in dm.calls]
    # The rendered copy must itself pass the checker.
    assert renamed.header.party != scenario.header.party or renamed.header.location != scenario.header.location


def test_augmentation_renames_consistently_everywhere():
    from dmforge.tools.registry import load_registry

    scenario, _ = parse_text(VALID.replace("[roll: survival]", "[heal: 5, target=Thorin]"), category="combat")
    renamed = rename_scenario(scenario, load_registry(), seed=1, copy_index=1)
    new_name = renamed.header.party_members[0].name
    first = new_name.split()[0]
    assert "Thorin" not in renamed.header.party and first != "Thorin"
    assert renamed.turns[0].text.startswith(f"{first}:") and renamed.turns[0].speaker == first
    assert renamed.turns[1].calls[0].keyword("target") == first
    assert renamed.turns[2].results[0].call.keyword("target") == first
    assert not renamed.header.location.startswith("Triboar Trail")
    assert rename_scenario(scenario, load_registry(), seed=1, copy_index=1).header == renamed.header  # deterministic


def _build(tmp_path: Path, scenarios: Path, **options):
    config = DataConfig(scenarios=scenarios, out=tmp_path / "dataset", **options)
    from dmforge.tools.registry import load_registry

    return build_dataset(config, load_registry())


def test_build_writes_jsonl_datasetdict_stats_and_manifest(tmp_path: Path):
    import datasets

    stats, out = _build(tmp_path, CORPUS, augment_copies=1)
    rows = {
        split: [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        for split in ("train", "validation")
    }
    assert stats.scenarios["train"] + stats.scenarios["validation"] == len(CORPUS_SCENARIOS)
    assert len(rows["train"]) == stats.conversations["train"] > stats.scenarios["train"]
    assert all(not r["augmented"] for r in rows["validation"]), "validation is never augmented"
    assert {r["scenario"] for r in rows["train"]}.isdisjoint({r["scenario"] for r in rows["validation"]})
    hf = datasets.load_from_disk(str(out / "hf"))
    assert hf["train"].num_rows == len(rows["train"]) and hf["validation"].num_rows == len(rows["validation"])
    assert hf["train"][0]["messages"] == rows["train"][0]["messages"]
    saved = json.loads((out / "stats.json").read_text())
    checked = check_paths([CORPUS])
    assert saved["tool_calls"] == sum(saved["calls_per_tool"].values()) == checked.tool_calls
    assert saved["dm_turns"] == checked.dm_turns and saved["dm_turns_without_calls"] > 0
    assert set(saved["calls_per_tool"]) == {"roll", "initiative", "attack", "damage", "heal", "condition"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["scenarios"]) == len(CORPUS_SCENARIOS) and len(manifest["corpus_fingerprint"]) == 64


def test_build_is_reproducible(tmp_path: Path):
    _, out_a = _build(tmp_path / "a", CORPUS, augment_copies=1)
    _, out_b = _build(tmp_path / "b", CORPUS, augment_copies=1)
    assert (out_a / "train.jsonl").read_bytes() == (out_b / "train.jsonl").read_bytes()


def test_exact_duplicate_conversations_are_removed(tmp_path: Path):
    root = tmp_path / "s"
    (root / "combat").mkdir(parents=True)
    (root / "combat" / "a.md").write_text(VALID)
    (root / "combat" / "b.md").write_text(VALID.replace("\n## DM\n", "\n## DM   \n"))  # same story, other bytes
    stats, _ = _build(tmp_path, root, validation_fraction=0.0)
    assert stats.duplicates_removed == 1 and stats.conversations["train"] == 1


def test_build_refuses_scenarios_with_errors_and_keeps_the_old_dataset(tmp_path: Path):
    root = tmp_path / "s"
    (root / "combat").mkdir(parents=True)
    (root / "combat" / "a.md").write_text(VALID)
    _build(tmp_path, root)
    before = (tmp_path / "dataset" / "train.jsonl").read_bytes()
    (root / "combat" / "bad.md").write_text(VALID.replace("[roll: survival] => 14", "[roll: stealth] => 14"))
    with pytest.raises(DmforgeError, match=r"1 error\(s\), so no dataset was built.*bad\.md:\d+.*dmforge data check"):
        _build(tmp_path, root)
    assert (tmp_path / "dataset" / "train.jsonl").read_bytes() == before


def test_a_failure_midway_leaves_the_previous_dataset_whole(tmp_path: Path, monkeypatch):
    import dmforge.dataset.build as build

    _build(tmp_path, CORPUS)
    before = {p.name: p.read_bytes() for p in (tmp_path / "dataset").iterdir() if p.is_file()}

    def full_disk(stage, conversations):
        (stage / "hf").mkdir()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build, "_write_hf", full_disk)
    with pytest.raises(DmforgeError, match=r"The disk is full while writing .*dataset\. Free some space"):
        _build(tmp_path, CORPUS, seed=99)
    after = {p.name: p.read_bytes() for p in (tmp_path / "dataset").iterdir() if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"], "no staging folder is left behind"


def test_calls_first_moves_the_calls_before_the_narration_and_keeps_them_intact():
    from dmforge.dataset.conversation import calls_first

    assert calls_first("The mud is churned. Make a Wisdom (Survival) check.\n[roll: survival]") == (
        "[roll: survival]\nThe mud is churned. Make a Wisdom (Survival) check."
    )
    two = "Ouch.\n[damage: 2d4+2, type=slashing, target=Vesk]\n[roll: constitution save, dc=10]"
    assert calls_first(two) == "[damage: 2d4+2, type=slashing, target=Vesk]\n[roll: constitution save, dc=10]\nOuch."
    assert calls_first("A noise [roll: perception] nearby. See [the map](x).") == (
        "[roll: perception]\nA noise nearby. See [the map](x)."
    ), "an inline call moves too; a Markdown link is not a call"
    assert calls_first("No call here.") == "No call here."


def test_the_call_order_option_reorders_every_dm_turn_of_the_dataset():
    from dmforge.tools.syntax import find_calls

    scenario = CORPUS_SCENARIOS[0]
    written = to_conversation(scenario, DataConfig(call_order="as_written"))
    first = to_conversation(scenario, DataConfig(call_order="first"))
    for a, b in zip(written["messages"], first["messages"], strict=True):
        assert find_calls(a["content"]) == find_calls(b["content"]), "the same calls in the same order"
        if a["role"] == "assistant" and find_calls(a["content"]):
            assert b["content"].startswith("[") and a["tool_calls"] == b["tool_calls"]


def test_a_validation_list_pins_the_held_out_set(tmp_path: Path):
    pinned = tmp_path / "held-out.txt"
    chosen = [s.id for s in CORPUS_SCENARIOS if s.header.category == "combat"][:2]
    pinned.write_text("# fixed for the sweep\n" + "\n".join(chosen) + "\n\n")
    stats, out = _build(tmp_path / "a", CORPUS, validation_list=pinned)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["splits"]["validation"]) == set(chosen)
    assert stats.scenarios["validation"] == 2

    pinned.write_text("combat/no-such-scene.md\n")
    with pytest.raises(DmforgeError, match=r"held-out.txt, line 1: `combat/no-such-scene.md` is not a scenario"):
        _build(tmp_path / "b", CORPUS, validation_list=pinned)
