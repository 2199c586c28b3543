"""Attacks on everything but the parser: lost data, tracebacks, concurrent runs, kills and signals."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import CORPUS, ROOT
from dmforge import cli
from dmforge.errors import DmforgeError
from dmforge.files import MARKER, claim_folder, read_json, staged_dir
from dmforge.interrupts import Terminated, deferred, handle_sigterm
from dmforge.locks import LOCK_NAME, clean_after, folder_lock


def dmforge(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dmforge", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def _scenarios(tmp_path: Path) -> Path:
    root = tmp_path / "scenarios"
    (root / "combat").mkdir(parents=True)
    for source in sorted((CORPUS / "combat").glob("*.md"))[:3]:
        (root / "combat" / source.name).write_bytes(source.read_bytes())
    return root


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# 1. Nothing the user wrote is ever deleted.


def test_build_refuses_a_folder_of_the_users_notes_and_keeps_every_file(tmp_path: Path):
    scenarios, notes = _scenarios(tmp_path), tmp_path / "notes"
    notes.mkdir()
    (notes / "campaign.txt").write_text("session 12: the party owes the guild 300 gp")
    result = dmforge("data", "build", "--scenarios", str(scenarios), "--out", str(notes))
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(notes) in result.stderr and MARKER in result.stderr and "Traceback" not in result.stderr
    assert _snapshot(notes) == {"campaign.txt": b"session 12: the party owes the guild 300 gp"}


@pytest.mark.parametrize("where", ["the scenarios folder", "inside it", "its parent"])
def test_build_refuses_an_output_folder_that_holds_or_lies_in_the_scenarios(tmp_path: Path, where: str):
    scenarios = _scenarios(tmp_path)
    before = _snapshot(tmp_path)
    out = {"the scenarios folder": scenarios, "inside it": scenarios / "combat" / "out", "its parent": tmp_path}[where]
    result = dmforge("data", "build", "--scenarios", str(scenarios), "--out", str(out))
    assert result.returncode == 2 and "scenarios" in result.stderr and "Traceback" not in result.stderr
    assert _snapshot(tmp_path) == before, "not one file of the scenarios was touched"


def test_a_folder_dmforge_made_is_replaced_and_an_empty_one_is_taken(tmp_path: Path):
    scenarios, out = _scenarios(tmp_path), tmp_path / "empty"
    out.mkdir()
    assert dmforge("data", "build", "--scenarios", str(scenarios), "--out", str(out)).returncode == 0
    assert (out / MARKER).is_file() and (out / "train.jsonl").is_file()
    (out / "stale.txt").write_text("from an older build")
    assert dmforge("data", "build", "--scenarios", str(scenarios), "--out", str(out)).returncode == 0
    assert not (out / "stale.txt").exists(), "a folder dmforge made is replaced whole"


def test_run_folders_must_be_new_empty_or_dmforge_s(tmp_path: Path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(DmforgeError, match="is a file"):
        claim_folder(tmp_path / "a-file")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(DmforgeError, match="did not write"):
        claim_folder(tmp_path / "photos")
    legacy = tmp_path / "old-run"
    legacy.mkdir()
    (legacy / "identity.json").write_text("{}")
    assert (claim_folder(legacy, legacy_sign="identity.json") / MARKER).is_file(), "runs made before the marker"
    assert (claim_folder(tmp_path / "new" / "run") / MARKER).is_file()


def test_staged_folders_use_their_own_temporary_names(tmp_path: Path):
    dest = tmp_path / "dataset"
    with staged_dir(dest) as first, staged_dir(dest) as second:
        assert first != second, "two writers of one folder must not share a staging folder"
        (first / "a").write_text("first")
        (second / "b").write_text("second")
    assert (dest / "a").read_text() == "first" and not (dest / "b").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"], "no staging or old folder is left"


# 4. No traceback anywhere.


def test_a_path_with_rich_markup_is_printed_as_text(tmp_path: Path):
    weird = tmp_path / "[/x]" / "[bold]scenarios"
    result = dmforge("data", "check", str(weird))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "[/x]/[bold]scenarios" in result.stderr.replace("\n", "")


def test_a_corrupt_identity_is_skipped_when_looking_for_a_run_and_named_when_resuming(tmp_path: Path):
    from dmforge.config import load_config
    from dmforge.pipeline import pick_run_dir
    from dmforge.training.finetune import _check_resumable

    runs = tmp_path / "runs"
    (runs / "smollm2-135m").mkdir(parents=True)
    (runs / "smollm2-135m" / "identity.json").write_text('{"config": {"data": ')
    config = load_config(None, {"train": {"runs_root": runs}})
    assert pick_run_dir(config, "corpus").name.startswith("smollm2-135m-"), "a damaged run is not reused"
    with pytest.raises(DmforgeError, match=r"identity\.json is not valid JSON \(line 1"):
        _check_resumable(runs / "smollm2-135m", {"config": {}, "corpus": "corpus"})
    with pytest.raises(DmforgeError, match="does not hold a JSON object"):
        (tmp_path / "list.json").write_text("[1]")
        read_json(tmp_path / "list.json", "Fix it.")


HOSTILE = [
    ("data", "check", "{tmp}/missing/[/x]"),
    ("data", "check", "{tmp}/a-file", "--config", "{tmp}/a-file"),
    ("data", "build", "--scenarios", "{tmp}/a-file"),
    ("data", "build", "--scenarios", "{tmp}/scenarios", "--out", "{tmp}/a-file"),
    ("data", "build", "--scenarios", "{tmp}/scenarios", "--validation-fraction", "7"),
    ("data", "preview", "--base", "[red]nope", "--scenarios", "{tmp}/scenarios"),
    ("finetune", "--base", "/nowhere/model.gguf", "--scenarios", "{tmp}/scenarios"),
    ("finetune", "--base", "smollm2-135m", "--scenarios", "{tmp}/scenarios", "--run-dir", "{tmp}/a-file"),
    ("export", "{tmp}/a-file"),
    ("export", "{tmp}/not-a-run"),
    ("eval", "{tmp}/not-a-run"),
    ("deploy", "{tmp}/not-a-run", "--app", "{tmp}"),
    ("pipeline", "--scenarios", "{tmp}/[/x]"),
    ("pipeline", "--scenarios", "{tmp}/scenarios", "--run-dir", "{tmp}/scenarios"),
    ("models", "list", "--config", "{tmp}/a-file"),
]


@pytest.mark.parametrize("args", HOSTILE, ids=lambda a: " ".join(a).replace("{tmp}/", ""))
def test_every_command_answers_hostile_arguments_with_one_paragraph(tmp_path: Path, args: tuple[str, ...]):
    _scenarios(tmp_path)
    (tmp_path / "a-file").write_text("not: [a config")
    result = dmforge(*(a.format(tmp=tmp_path) for a in args), cwd=tmp_path)
    assert result.returncode in (1, 2), result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.strip(), "the refusal says what went wrong"


def test_deploy_into_a_read_only_app_is_an_error_and_the_old_model_stays(tmp_path: Path, monkeypatch):
    from test_deploy import _app, _run, deploy

    app = _app(tmp_path)
    deploy(_run(tmp_path, "one", b"old model"), app)
    models = app / "assets" / "models"
    run = _run(tmp_path, "two", b"new model")
    if os.geteuid() == 0:  # root writes through permission bits: refuse writes below the app as a read-only mount would
        real_open = os.open

        def read_only(path, flags, *args, **kwargs):
            if str(path).startswith(str(app)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise PermissionError(13, "Read-only file system", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", read_only)
    for folder in (models, app / "src" / "dmforge"):
        folder.chmod(0o555)
    try:
        with pytest.raises(DmforgeError, match=r"Check the folder's permissions|permission"):
            deploy(run, app)
    finally:
        for folder in (models, app / "src" / "dmforge"):
            folder.chmod(0o755)
        monkeypatch.undo()
    assert (models / "dungeon-master.gguf").read_bytes() == b"old model"


def test_an_unexpected_failure_is_one_paragraph_with_the_traceback_kept(monkeypatch, capsys):
    def broken(**kwargs):
        raise RuntimeError("a bug [bold]deep inside[/]")

    monkeypatch.setattr(cli, "app", broken)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 70
    err = capsys.readouterr().err.replace("\n", "")
    assert "bug in dmforge" in err and "[bold]deep inside[/]" in err and "Traceback" not in err
    log = Path(err.split("The full traceback is in ")[1].split(";")[0])
    assert "RuntimeError" in log.read_text()
    log.unlink()


def test_sigterm_exits_like_ctrl_c_with_its_own_code(monkeypatch, capsys):
    def terminated(**kwargs):
        raise Terminated()

    monkeypatch.setattr(cli, "app", terminated)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 143 and "Terminated" in capsys.readouterr().err


# 5. Concurrency and interruption.

_PYTHON = [sys.executable, "-c"]


def _child(code: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*_PYTHON, textwrap.dedent(code)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


def test_a_second_process_is_refused_with_the_holders_pid_and_a_killed_holder_is_taken_over(tmp_path: Path):
    run = tmp_path / "run"
    holder = _child(
        f"""
        import time
        from pathlib import Path
        from dmforge.locks import folder_lock
        with folder_lock(Path({str(run)!r}), "The run folder"):
            (Path({str(run)!r}) / ".adapter.safetensors.123-abcd.partial").write_text("half")
            print("locked", flush=True)
            time.sleep(60)
        """
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = pytest.raises(DmforgeError, match=rf"in use by another dmforge process \(pid {holder.pid}\b")
        with refused as info, folder_lock(run, "The run folder"):
            pass
        assert info.value.exit_code == 75
        holder.kill()  # kill -9: no cleanup of any kind runs
        holder.wait(10)
    finally:
        holder.kill()
    stale = []
    with folder_lock(run, "The run folder", on_stale=lambda h: (stale.append(h.pid), clean_after(run)(h))):
        assert stale == [holder.pid], "the dead holder is detected"
        assert not list(run.glob("*.partial")), "what it left half-written is removed"
        with folder_lock(run, "The run folder"):  # the same process may nest its own lock
            pass
    assert not (run / LOCK_NAME).exists(), "a released lock leaves no file behind"


def test_sigterm_is_ctrl_c_and_a_held_signal_waits_for_the_block(tmp_path: Path):
    handle_sigterm()
    try:
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finished = []
        with pytest.raises(KeyboardInterrupt), deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            finished.append("the block ran to its end")
        assert finished == ["the block ran to its end"]
        with pytest.raises(KeyboardInterrupt), deferred():  # a second signal is not held
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
            pytest.fail("the second signal should have stopped the block")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_kill_9_at_random_points_of_a_deploy_leaves_a_whole_set(tmp_path: Path):
    """Killed anywhere, the app holds one whole set (model, JSON, TypeScript): the old one or the new one."""
    import random

    from dmforge.deploy import switch
    from test_deploy import MODEL, TS, VALUES, _app, _deploy_process, _run, deploy

    rng = random.Random(11)
    app = _app(tmp_path)
    runs = [_run(tmp_path, f"run-{k}", bytes([k]) * (48 << 20)) for k in range(2)]
    sets = []
    for run in runs:
        deploy(run, app)
        sets.append({p: (app / p).read_bytes() for p in (MODEL, VALUES, TS)})
    kills_mid_deploy = 0
    for attempt in range(6):
        child = _deploy_process(runs[attempt % 2], app, tmp_path / "runs")
        time.sleep(rng.uniform(0.05, 0.8))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        kills_mid_deploy += child.returncode == -signal.SIGKILL
        with switch.app_lock(app):
            switch.recover(app)  # what the next deploy does first
        now = {p: (app / p).read_bytes() for p in (MODEL, VALUES, TS)}
        assert now in sets, "the app's model and its config always belong together"
        assert not list((app / "assets").rglob(".*partial"))
    assert kills_mid_deploy, "at least one kill landed while a deploy was running"


def test_a_converter_failure_shows_its_last_lines_and_keeps_the_log(tmp_path: Path):
    from dmforge.export.convert import convert_to_gguf

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["NoSuchDragonForCausalLM"]}))
    (model / "tokenizer_config.json").write_text("{}")
    with pytest.raises(DmforgeError) as info:
        convert_to_gguf(model, tmp_path / "out" / "model-f16.gguf")
    message = str(info.value)
    assert "NoSuchDragonForCausalLM" in message and "see the log above" not in message.lower()
    log = tmp_path / "out" / "model-f16.convert.log"
    assert log.is_file() and str(log) in message
    assert not list((tmp_path / "out").glob("*.partial")) and not list((tmp_path / "out").glob(".*.partial"))


def test_a_party_padded_with_spaces_is_read_in_linear_time_and_as_before():
    import random
    import re

    from dmforge.scenarios.model import _member, parse_party

    started = time.monotonic()
    assert parse_party("Thorin" + " " * 200_000 + "Oakenshield (dwarf)")[0].description == "dwarf"
    assert time.monotonic() - started < 2, "the build reads every Party line; it must not backtrack"
    reference = re.compile(r"^(?P<name>[^()]+?)\s*(?:\((?P<desc>[^)]*)\))?\s*$")  # the old matcher, on short text
    rng = random.Random(5)
    for _ in range(20_000):
        text = "".join(rng.choice("ab (),\t") for _ in range(rng.randint(0, 10)))
        m = reference.match(text)
        assert _member(text) == ((m["name"].strip(), (m["desc"] or "").strip()) if m else None), repr(text)
