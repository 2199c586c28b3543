"""The sample corpus is itself a deliverable: clean, big enough, and covering every tool."""

from __future__ import annotations

from conftest import CORPUS
from dmforge.scenarios import check_paths


def test_sample_corpus_is_clean_and_large_enough(registry):
    report = check_paths([CORPUS])
    assert report.errors == 0 and report.warnings == 0, [d.render() for d in report.diagnostics]
    assert len(report.scenarios) >= 450
    assert report.dm_turns >= 4000
    calls = report.calls_by_tool()
    assert set(calls) == set(registry.tools) and min(calls.values()) >= 100, f"every tool at least 100 calls: {calls}"
    assert set(report.scenarios_by_category()) >= {"combat", "roleplay", "exploration", "social", "puzzle"}


def test_sample_corpus_passes_its_audit(registry):
    """Every skill, save and tool above its floor, every action answered by one rule, no scene written twice."""
    from dmforge.config import AuditConfig
    from dmforge.dataset.audit import audit

    config = AuditConfig(rulebook=CORPUS.parents[1] / "docs" / "dm-rules.md")
    report = audit(check_paths([CORPUS]).scenarios, registry, config)
    assert not report.below_floor(), report.below_floor()
    assert not report.conflicts, [(c["verb"], c["places"][:2]) for c in report.conflicts]
    assert not report.duplicates, report.duplicates[:3]
    assert report.passed and report.to_json()["quiet_share"] >= 0.25


def test_sample_corpus_teaches_when_not_to_call():
    report = check_paths([CORPUS])
    dm_turns = [t for s in report.scenarios for t in s.dm_turns]
    quiet = sum(not t.calls for t in dm_turns)
    assert 0.3 <= quiet / len(dm_turns) <= 0.7
    # Multi-step exchanges: DM turns that continue after a result and make another call.
    chained = sum(
        1
        for s in report.scenarios
        for prev, turn in zip(s.turns, s.turns[1:], strict=False)
        if prev.kind.value == "toolcall" and turn.calls
    )
    assert chained >= 30


def test_validation_split_holds_every_tool_often_enough_to_measure(registry):
    """Per-tool figures mean something only with several held-out calls of each tool."""
    from collections import Counter

    from dmforge.config import DataConfig
    from dmforge.dataset import split_scenarios

    config = DataConfig()
    _, validation = split_scenarios(check_paths([CORPUS]).scenarios, config.validation_fraction, config.seed)
    calls = Counter(c.name for s in validation for c in s.calls)
    assert set(calls) == set(registry.tools) and min(calls.values()) >= 5, calls
    assert sum(len(s.dm_turns) for s in validation) >= 400
