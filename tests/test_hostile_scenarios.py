"""Hostile input: any scenario file, or folder of them, is checked in bounded time and memory.

The file checks are hang detectors, not benchmarks: each runs in a child process that is killed if it
hangs, and passes if it took under BOUND_S seconds. dmforge does each 1 MB file in about a second or
less; the bound is ten times that so that a busy CI machine cannot fail them.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import random
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import VALID, codes, parse_text
from dmforge.evaluation.playtest import execute
from dmforge.scenarios import check_paths
from dmforge.scenarios.check import MAX_DIAGNOSTICS_PER_FILE, MAX_DIAGNOSTICS_PER_RUN
from dmforge.scenarios.diagnostics import MAX_MESSAGE, RULES, Severity
from dmforge.scenarios.model import Scenario
from dmforge.scenarios.parser import (
    MAX_BRACKETS_PER_TURN,
    MAX_SECTIONS,
    _header_line,
    _section_name,
    _title,
)
from dmforge.tools.registry import load_registry
from dmforge.tools.syntax import ToolCall

BOUND_S = 10.0  # per file; a hang shows up as minutes
KILL_S = 60.0  # a child still running then has hung
MB = 1024 * 1024
HEADER = "Role: Dungeon Master\nWorld: Greyhawk\nLocation: Hommlet\nParty: Ana (human rogue 2)\n\n"
TURNS = "## User\nHi\n\n## DM\nHello.\n\n"


def _fill(prefix: str, unit: str, suffix: str, size: int) -> str:
    """`prefix`, then `unit` repeated, then `suffix`: about `size` characters."""
    return prefix + unit * max(1, (size - len(prefix) - len(suffix)) // len(unit)) + suffix


# --- running a check that may hang ------------------------------------------------------------


def _child(paths: list[Path], results) -> None:
    try:
        start = time.perf_counter()
        report = check_paths(paths, max_bytes=2 * MB)
        elapsed = time.perf_counter() - start
        results.put(("ok", elapsed, report.to_json()))
    except BaseException as exc:  # report it: the parent would otherwise wait for the kill
        results.put(("raised", 0.0, f"{type(exc).__name__}: {exc}"))


def timed_check(paths: list[Path]) -> tuple[float, dict]:
    """check_paths in a child process: its wall-clock seconds and its JSON report; fails on a hang."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_child, args=(paths, results))
    child.start()
    try:
        status, elapsed, report = results.get(timeout=KILL_S)
    except queue.Empty:
        pytest.fail(f"checking {[p.name for p in paths]} still ran after {KILL_S:.0f} s: it hangs")
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join()
    assert status == "ok", report
    return elapsed, report


def _codes(report: dict) -> set[str]:
    return {d["code"] for d in report["diagnostics"]}


def _message(report: dict, code: str) -> str:
    return next(d["message"] for d in report["diagnostics"] if d["code"] == code)


# --- hostile files, ~1 MB and a few KB ----------------------------------------------------------

# name: (the file's text for a size, the codes the report must list, whether a 4 KB variant is run too).
# A 4 KB variant is run where it already broke the old code; quadratic cases need the megabyte.
HOSTILE = {
    # `## x` + 800 spaces + `y` took 270 s: the section regex's three `\s*` split the spaces every way.
    "spaces inside a section heading": (
        lambda n: HEADER + TURNS + _fill("## x", " ", "y\n", n),
        {"section-unknown"},
        True,
    ),
    "spaces in a title": (lambda n: _fill("# x", " ", "y\n", n) + HEADER + TURNS, set(), True),
    # `**` + 2,000 spaces took 16 s in the header-line regex's `**` alternatives.
    "spaces after **": (lambda n: _fill("**", " ", "x\n", n) + HEADER + TURNS, {"header-stray-text"}, True),
    "spaces after a bulleted **": (
        lambda n: _fill("- **a", " ", "x\n", n) + HEADER + TURNS,
        {"header-stray-text"},
        False,
    ),
    "a header line of 1 MB": (
        lambda n: HEADER + _fill("**World", " ", "Eberron\n", n) + TURNS,
        {"header-stray-text"},
        False,
    ),
    "a header key of 1 MB": (
        lambda n: HEADER + _fill("**", "k", ":** v\n", n) + TURNS,
        {"header-unknown-key"},
        True,
    ),
    "a line of [": (lambda n: HEADER + "## User\nHi\n\n## DM\n" + _fill("", "[", "\n", n), {"call-too-many"}, True),
    "a flood of [x:": (
        lambda n: HEADER + "## User\nHi\n\n## DM\n" + _fill("", "[x:", "\n", n),
        {"call-too-many"},
        True,
    ),
    "alternating []": (
        lambda n: HEADER + "## User\nHi\n\n## DM\n" + _fill("", "[]", "\n", n),
        {"call-too-many"},
        True,
    ),
    "stray lines": (
        lambda n: HEADER + _fill("", "x\n", "", n) + TURNS,
        {"header-stray-text", "diagnostics-truncated"},
        True,
    ),
    "many sections": (lambda n: HEADER + TURNS + _fill("", "## DM\nx\n", "", n), {"turn-repeated"}, True),
    "many unknown sections": (lambda n: HEADER + TURNS + _fill("", "## x\n", "", n), {"section-unknown"}, True),
    "a long TOOLCALL section": (
        lambda n: (
            HEADER + "## User\nHi\n\n## DM\n[initiative]\n\n## TOOLCALL\n" + _fill("", "x\n", "", n) + "## DM\nok\n"
        ),
        {"toolcall-bad-line", "diagnostics-truncated"},
        True,
    ),
    "a call with many arguments": (
        lambda n: HEADER + "## User\nHi\n\n## DM\n" + _fill("[roll: ", "a, ", "a]\n", n),
        {"tool-bad-arguments"},
        True,
    ),
    "a call with many keywords": (
        lambda n: HEADER + "## User\nHi\n\n## DM\n[roll: stealth" + "".join(f", k{i}=1" for i in range(n // 8)) + "]\n",
        {"tool-bad-arguments"},
        True,
    ),
    "a 1 MB dice expression": (
        lambda n: HEADER + "## User\nHi\n\n## DM\n" + _fill("[damage: ", "1d6+", "1]\n", n),
        {"tool-bad-arguments"},
        True,
    ),
    "front matter of 1 MB": (
        lambda n: "---\n" + _fill("Notes: ", "x", "\n", n) + "---\n" + HEADER + TURNS,
        {"front-matter-too-large"},
        False,
    ),
}
CASES = [(name, MB) for name in HOSTILE] + [(name, 4 * 1024) for name, (_, _, kb) in HOSTILE.items() if kb]


@pytest.mark.parametrize(("name", "size"), CASES, ids=[f"{name}-{size // 1024}KB" for name, size in CASES])
def test_hostile_file_is_checked_in_bounded_time(tmp_path: Path, name: str, size: int):
    make, expected, _ = HOSTILE[name]
    text = make(size - 200)
    path = tmp_path / "combat" / "hostile.md"
    path.parent.mkdir()
    path.write_text(text)
    elapsed, report = timed_check([path])
    assert elapsed < BOUND_S, f"{name}: {elapsed:.1f} s for {len(text.encode()) / MB:.2f} MB"
    assert expected <= _codes(report), (name, _codes(report))
    assert "internal-error" not in _codes(report)
    # Every problem is counted, even those not listed; what is listed stays small and readable.
    assert len(report["diagnostics"]) <= MAX_DIAGNOSTICS_PER_FILE + 1
    assert all(len(d["message"]) <= MAX_MESSAGE and len(d["hint"]) <= MAX_MESSAGE for d in report["diagnostics"])
    assert len(json.dumps(report)) < 100_000


def test_hostile_counts_stay_exact_past_the_cap(tmp_path: Path):
    lines = 20_000
    path = tmp_path / "stray.md"
    path.write_text(HEADER + "x\n" * lines + TURNS)
    _, report = timed_check([path])
    assert report["warnings"] == lines and report["errors"] == 0
    assert report["diagnostics_not_listed"] == {"header-stray-text": lines - MAX_DIAGNOSTICS_PER_FILE}
    summary = _message(report, "diagnostics-truncated")
    assert f"{lines - MAX_DIAGNOSTICS_PER_FILE:,} header-stray-text" in summary


def test_too_many_brackets_says_how_many_and_the_limit(tmp_path: Path):
    path = tmp_path / "brackets.md"
    path.write_text(HEADER + "## User\nHi\n\n## DM\n" + "[Sighs] " * 5000 + "\n")
    _, report = timed_check([path])
    message = _message(report, "call-too-many")
    assert "5,000" in message and str(MAX_BRACKETS_PER_TURN) in message
    # Only the first brackets are examined: one warning each, no more.
    assert report["warnings"] == MAX_BRACKETS_PER_TURN


def test_too_many_sections_is_listed_and_the_rest_not_checked(tmp_path: Path):
    path = tmp_path / "sections.md"
    path.write_text(HEADER + TURNS + "## x\n" * (MAX_SECTIONS * 3))
    _, report = timed_check([path])
    assert "section-too-many" in _codes(report)  # said first, so the cap on diagnostics never hides it
    assert report["errors"] == MAX_SECTIONS - 2 + 1  # the unknown sections that were checked, and the cap


def test_an_error_past_the_per_file_cap_is_still_an_error(tmp_path: Path):
    # Sixty warnings first, then one error: the error is listed, and the file is not used.
    path = tmp_path / "late-error.md"
    path.write_text(HEADER + "x\n" * 60 + "## User\nHi\n\n## DM\n[fly: away]\n")
    _, report = timed_check([path])
    assert report["errors"] == 1 and report["warnings"] == 60 and report["scenarios"] == 0
    assert "tool-unknown" in _codes(report)
    assert len(report["diagnostics"]) == MAX_DIAGNOSTICS_PER_FILE + 1  # the summary says 11 were not listed
    assert report["diagnostics_not_listed"] == {"header-stray-text": 11}


# --- YAML front matter ------------------------------------------------------------------------

BILLION_LAUGHS = (
    "---\nRole: Dungeon Master\n"
    + 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))
    + "World: *i\n---\n"
    + HEADER
    + TURNS
)


def test_yaml_billion_laughs_is_refused(tmp_path: Path):
    path = tmp_path / "laughs.md"
    path.write_text(BILLION_LAUGHS)
    elapsed, report = timed_check([path])
    assert elapsed < BOUND_S
    assert "front-matter-invalid" in _codes(report)
    assert "anchors and aliases" in _message(report, "front-matter-invalid")
    assert len(json.dumps(report)) < 20_000


@pytest.mark.parametrize("depth", [100, 5_000, 30_000])
def test_deep_yaml_nesting_is_a_diagnostic_not_a_crash(tmp_path: Path, depth: int):
    path = tmp_path / "deep.md"
    path.write_text("---\nWorld: " + "[" * depth + "]" * depth + "\n---\n" + HEADER + TURNS)
    elapsed, report = timed_check([path])
    assert elapsed < BOUND_S
    assert "internal-error" not in _codes(report)
    assert "front-matter-invalid" in _codes(report) and "levels deep" in _message(report, "front-matter-invalid")


@pytest.mark.parametrize("value", ["!!int " + "1" * 5000, "2024-13-45"], ids=["5000-digit int", "bad date"])
def test_odd_yaml_values_never_crash(value: str):
    _, diags = parse_text("---\nRole: Dungeon Master\nLevel: " + value + "\n---\n" + HEADER + TURNS)
    assert "internal-error" not in codes(diags)


def test_front_matter_over_the_size_limit_is_refused():
    _, diags = parse_text("---\n" + "Notes: " + "x" * 70_000 + "\n---\n" + HEADER + TURNS)
    assert "front-matter-too-large" in codes(diags)


# --- dice -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dice", "fragment"),
    [
        ("1001d6", "1,001 dice in one term"),
        ("99999999d6", "99,999,999 dice"),
        ("1d0", "a die of 0 sides"),
        ("1d1001", "a die of 1,001 sides"),
        ("1d6+" * 2500 + "1", "10,001 characters"),
    ],
    ids=["1001d6", "99999999d6", "1d0", "1d1001", "10KB"],
)
def test_dice_over_the_limits_are_refused_with_the_limits(tmp_path: Path, dice: str, fragment: str):
    path = tmp_path / "dice.md"
    path.write_text(HEADER + f"## User\nHi\n\n## DM\nOuch. [damage: {dice}, type=fire]\n")
    elapsed, report = timed_check([path])
    assert elapsed < BOUND_S
    message = _message(report, "tool-bad-arguments")
    assert fragment in message and "100 dice per term" in message and "2 to 1000 sides" in message


# --- many broken files ------------------------------------------------------------------------


def test_a_folder_of_300_broken_files_gives_a_bounded_report(tmp_path: Path):
    for i in range(300):
        folder = tmp_path / f"c{i % 5}"
        folder.mkdir(exist_ok=True)
        (folder / f"broken-{i}.md").write_text(f"stray {i}\n" * 200)  # no header, no sections
    elapsed, report = timed_check([tmp_path])
    assert elapsed < BOUND_S * 3
    # Every problem is counted: per file 200 stray lines, 4 missing keys and no DM turn.
    assert report["errors"] == 300 * 5 and report["warnings"] == 300 * 200
    assert len(report["diagnostics"]) <= MAX_DIAGNOSTICS_PER_RUN + 1
    # Errors are listed before warnings, so every broken file still shows an error.
    listed_errors = [d for d in report["diagnostics"] if d["severity"] == "error"]
    assert len(listed_errors) == 300 * 5
    summary = report["diagnostics"][-1]
    assert summary["code"] == "diagnostics-truncated" and "header-stray-text" in summary["message"]
    assert len(json.dumps(report)) < 1_500_000


def test_the_verdict_counts_errors_that_are_not_listed(tmp_path: Path):
    # 2,000 warnings in the first files, then a file whose only problem is an error.
    for i in range(50):
        (tmp_path / f"a{i:02}.md").write_text(VALID.replace("Tags:", "\n".join(f"x{j}" for j in range(45)) + "\nTags:"))
    (tmp_path / "z.md").write_text(VALID.replace("[roll: survival]", "[fly: up]"))
    _, report = timed_check([tmp_path])
    assert report["errors"] >= 1
    assert any(d["code"] == "tool-unknown" for d in report["diagnostics"])
    assert len(report["diagnostics"]) <= MAX_DIAGNOSTICS_PER_RUN + 1


# --- symbolic links ---------------------------------------------------------------------------

SECRET = "THE-SECRET-LINE-OF-A-FILE-OUTSIDE"


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text(SECRET + "\n" + HEADER + TURNS)
    return outside


def _scenarios(tmp_path: Path) -> Path:
    root = tmp_path / "scenarios"
    (root / "combat").mkdir(parents=True)
    (root / "combat" / "a.md").write_text(VALID)
    return root


def test_a_link_to_a_file_outside_is_refused_and_never_read(tmp_path: Path):
    outside, root = _outside(tmp_path), _scenarios(tmp_path)
    (root / "combat" / "evil.md").symlink_to(outside / "secret.md")
    report = check_paths([root])
    refused = [d for d in report.diagnostics if d.code == "path-outside-scenarios"]
    assert [Path(d.file).name for d in refused] == ["evil.md"] and refused[0].severity is Severity.ERROR
    assert SECRET not in json.dumps(report.to_json())
    assert report.errors == 1 and [s.id for s in report.scenarios] == ["combat/a.md"]
    # Named on the command line, the same link is read as given.
    named = check_paths([root / "combat" / "evil.md"])
    assert any(SECRET in d.message for d in named.diagnostics)


def test_links_to_folders_outside_are_refused_and_inside_skipped(tmp_path: Path):
    outside, root = _outside(tmp_path), _scenarios(tmp_path)
    (root / "borrowed").symlink_to(outside, target_is_directory=True)  # refused, never read
    (root / "alias").symlink_to(root / "combat", target_is_directory=True)  # skipped: read where it is
    (root / "social").mkdir()
    (root / "social" / "b.md").symlink_to(root / "combat" / "a.md")  # a linked file inside is read
    report = check_paths([root])
    (refused,) = [d for d in report.diagnostics if d.code == "path-outside-scenarios"]
    assert Path(refused.file).name == "borrowed" and "folder" in refused.message
    assert SECRET not in json.dumps(report.to_json())
    assert report.files == 2 and [s.id for s in report.scenarios] == ["combat/a.md"]
    assert sorted(codes(report.diagnostics)) == ["path-outside-scenarios", "scenario-duplicate"]
    assert report.errors == 1


def test_link_loops_end(tmp_path: Path):
    root = _scenarios(tmp_path)
    (root / "combat" / "again").symlink_to(root, target_is_directory=True)  # a folder that contains itself
    (root / "ping").symlink_to(root / "pong")
    (root / "pong").symlink_to(root / "ping")
    (root / "loop.md").symlink_to(root / "loop.md")
    report = timed_check([root])[1]
    assert report["files"] == 1 and report["scenarios"] == 1
    assert [(Path(d["file"]).name, d["code"]) for d in report["diagnostics"]] == [("loop.md", "file-unreadable")]


# --- the parser on any text -------------------------------------------------------------------

REGISTRY = load_registry()
FRAGMENTS = [
    "## ",
    "# ",
    "#",
    "[",
    "]",
    ":",
    "---",
    "---\n",
    "&a ",
    "*a",
    " ",
    "**",
    "\n",
    "- ",
    "* ",
    "roll",
    "damage",
    "initiative",
    "dc=",
    "=",
    ",",
    "=>",
    "```",
    "1d6",
    "1d0",
    "1001d6",
    "²",
    "Role: Dungeon Master\n",
    "Level: ",
    "## DM\n",
    "## User\n",
    "## TOOLCALL\n",
    "[roll: stealth",
    "[damage: ",
    "\u00a0",
    "\u2028",
    "\x0b",
]
runs = st.builds(
    lambda unit, n: unit * n, st.sampled_from([" ", "[", "#", "*", "[x:", "[]", "x", "\t"]), st.integers(0, 5000)
)
scenarioish = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8), runs),
    max_size=60,
).map("".join)


def _assert_parses(text: str) -> None:
    start = time.perf_counter()
    scenario, diags = parse_text(text)
    assert time.perf_counter() - start < BOUND_S
    assert isinstance(scenario, Scenario)
    for d in diags:
        assert d.code in RULES and d.line >= 1 and d.hint and len(d.message) <= MAX_MESSAGE
    if not any(d.severity is Severity.ERROR for d in diags):
        assert scenario.dm_turns


@settings(max_examples=300, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])
@given(scenarioish)
@example("## x" + " " * 3000 + "y\n")
@example("**" + " " * 3000 + "x\n")
@example(HEADER + "Level: ²\n" + TURNS)
@example(HEADER + "## User\nHi\n\n## DM\n[roll: stealth, dc=²]\n")
@example("---\nWorld: " + "[" * 3000 + "]" * 3000 + "\n---\n" + HEADER + TURNS)
def test_scenario_ish_text_parses_in_bounded_time(text: str):
    _assert_parses(text)


@settings(max_examples=200, deadline=timedelta(seconds=5))
@given(st.text(max_size=2000))
@example("Level: ²\n## DM\nx")
@example("## DM\n[roll: perception, dc=٣]\n[heal: ², target=x]")
def test_any_text_parses(text: str):
    _assert_parses(text)


# --- the line matchers accept exactly what the regular expressions they replace did -------------

_OLD_HEADER_LINE = re.compile(
    r"^\s*(?:[-*+]\s+)?"
    r"(?:\*\*\s*(?P<k1>[^*:]+?)\s*:\s*\*\*|\*\*\s*(?P<k2>[^*:]+?)\s*\*\*\s*:"
    r"|(?P<k3>[A-Za-z][\w-]*(?:[ \t]+[\w-]+){0,2})\s*:)"
    r"(?P<value>.*)$"
)
_OLD_SECTION = re.compile(r"^##(?!#)\s*(?P<name>.*?)\s*:?\s*#*\s*$")
_OLD_TITLE = re.compile(r"^#(?!#)\s*(?P<title>.+?)\s*#*\s*$")
# Short lines from the characters that matter, including whitespace that is not a space.
line_chars = st.sampled_from([*"#*:-+ \t\u00a0\u2028\x0b\x1cabWZ_é²1-", "**", "##", ": ", " **"])
short_lines = st.lists(line_chars, max_size=12).map("".join)


@settings(max_examples=1000, deadline=None)  # a correctness check; the timing tests are above
@given(short_lines)
@example("**   :** x")
@example("* **World:** Eberron")
@example("## DM: ##")
@example("# ##")
def test_line_matchers_accept_what_the_old_expressions_did(line: str):
    old = _OLD_SECTION.match(line)
    assert _section_name(line) == (old["name"] if old else None)
    old = _OLD_TITLE.match(line.strip())
    assert _title(line.strip()) == (old["title"] if old else None)
    old = _OLD_HEADER_LINE.match(line)
    assert _header_line(line) == ((old["k1"] or old["k2"] or old["k3"], old["value"]) if old else None)


# --- the playtest runs whatever the model writes ----------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        ToolCall("damage", ("1d0",)),
        ToolCall("damage", ("1001d6",)),
        ToolCall("roll", ("stealth",), (("dc", "²"),)),
        ToolCall("heal", ("²",), (("target", "Bo"),)),
        ToolCall("heal", ("9" * 5000,), (("target", "Bo"),)),
        ToolCall("roll", ("1d6e<7",)),  # explodes on every roll: d20 stops it after 1,000 dice
        ToolCall("damage", ("1d6/0",)),
    ],
    ids=["1d0", "1001d6", "dc=superscript-2", "heal superscript-2", "heal 5000 digits", "explodes", "division by 0"],
)
def test_execute_never_raises(call: ToolCall):
    start = time.perf_counter()
    outcome = execute(call, REGISTRY, random.Random(1))
    assert isinstance(outcome, str) and time.perf_counter() - start < BOUND_S
    if call.name != "heal" or "²" in call.positional[0]:
        assert outcome.startswith("error: ")


@settings(max_examples=300, deadline=timedelta(seconds=5))
@given(
    st.sampled_from(["roll", "damage", "heal", "attack", "condition", "initiative"]),
    st.lists(
        st.sampled_from(["1d0", "1d6", "2d20kh1", "1d6e<7", "stealth", "²", "-5", "1d6/0", "x" * 100]), max_size=3
    ),
    st.lists(st.tuples(st.sampled_from(["dc", "target", "type"]), st.sampled_from(["abc", "5", "²", "fire", "99"]))),
)
def test_execute_never_raises_on_any_call(name, positional, keywords):
    call = ToolCall(name, tuple(positional), tuple(dict(keywords).items()))
    assert isinstance(execute(call, REGISTRY, random.Random(0)), str)
