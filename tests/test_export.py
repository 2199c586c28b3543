"""GGUF export with llama.cpp of the app's vintage: every check passes, and each known trap is caught."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from conftest import model_run
from dmforge.export.convert import converter_ready_config, stage_for_converter
from dmforge.export.converter import extract_converter
from dmforge.files import MARKER

# --- fast: the fixes themselves ------------------------------------------------------------------


def test_rope_settings_are_put_where_the_old_converter_reads_them():
    v5 = {"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}, "hidden_size": 576}
    assert converter_ready_config(v5)["rope_theta"] == 100000.0
    scaled = {"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 32.0}}
    fixed = converter_ready_config(scaled)
    assert fixed["rope_theta"] == 5e5 and fixed["rope_scaling"] == {"rope_type": "llama3", "factor": 32.0}
    assert converter_ready_config({"rope_theta": 10.0}) == {"rope_theta": 10.0}


def test_the_chat_template_is_staged_where_the_old_converter_reads_it(tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"rope_parameters": {"rope_theta": 1e5}}))
    (model / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    (model / "chat_template.jinja").write_text("{{ messages }}")
    (model / "model.safetensors").write_bytes(b"weights")
    stage = tmp_path / "stage"
    stage.mkdir()
    stage_for_converter(model, stage)
    assert json.loads((stage / "tokenizer_config.json").read_text())["chat_template"] == "{{ messages }}"
    assert (stage / "model.safetensors").is_symlink()
    assert json.loads((model / "tokenizer_config.json").read_text()) == {"eos_token": "<|im_end|>"}, "source untouched"


def test_the_converter_is_extracted_from_the_sdist_only(tmp_path: Path):
    root = tmp_path / "llama_cpp_python-0.3.9"
    for name in (
        "vendor/llama.cpp/convert_hf_to_gguf.py",
        "vendor/llama.cpp/gguf-py/gguf/__init__.py",
        "vendor/llama.cpp/src/llama.cpp",
        "llama_cpp/llama.py",
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("# " + name)
    sdist = tmp_path / "sdist.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        archive.add(root, arcname=root.name)
    target = tmp_path / "converter"
    extract_converter(sdist, target)
    files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file() and p.name != MARKER)
    assert files == ["convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]


# --- slow: real conversions and llama.cpp -------------------------------------------------------


@pytest.fixture(scope="module")
def exported(smollm2_base, tmp_path_factory):
    from dmforge.export.run import export_run

    run = model_run(smollm2_base.path, tmp_path_factory.mktemp("export") / "run")
    return run, export_run(run, [])


@pytest.mark.slow
def test_export_passes_every_check_and_compares_quantizations(exported):
    run, result = exported
    report = json.loads((run / "gguf" / "export.json").read_text())
    assert report["passed"] and result.passed
    names = {(c["quant"], c["name"]) for c in report["checks"]}
    for check in (
        "loads_in_llama_cpp",
        "architecture_supported",
        "rope_base",
        "chat_template_embedded",
        "template_renders_training_text",
        "stop_token_ends_turn",
        "size_within_budget",
    ):
        assert ("F16", check) in names and ("Q4_K_M", check) in names
    f16 = next(c for c in report["checks"] if c["name"] == "matches_trained_model")
    assert f16["figures"]["kl"] < 1e-3 and f16["figures"]["next_token_same"]
    assert f16["figures"]["top1_agreement_all_positions"] > 0.99
    rows = {r["quant"]: r for r in report["quantizations"]}
    # Always F16, Q8_0 and Q4_K_M; and the types SmolLM2's 576-wide rows take cleanly (32-wide blocks).
    assert report["types"] == ["F16", "Q8_0", "Q5_0", "Q4_K_M", "Q4_0"] == list(rows)
    assert rows["Q4_0"]["bytes"] < rows["Q4_K_M"]["bytes"] < rows["Q8_0"]["bytes"] < rows["F16"]["bytes"]
    assert rows["Q8_0"]["kl_vs_f16"] < rows["Q4_K_M"]["kl_vs_f16"]
    assert 0 <= rows["Q4_K_M"]["greedy_agreement"] <= 1
    assert (
        rows["Q4_K_M"]["fallback_share"] > 0.5 and rows["Q8_0"]["fallback_share"] == rows["Q4_0"]["fallback_share"] == 0
    )
    assert any(w.startswith("Q4_K_M does not fit this model") for w in report["warnings"]), (
        "576-wide SmolLM2 falls back"
    )
    assert report["sample_reply"]["reply"].strip()


@pytest.mark.slow
def test_the_gguf_generates_a_dm_reply_with_its_embedded_template(exported):
    from llama_cpp import Llama

    _, result = exported
    llm = Llama(model_path=str(result.files["Q8_0"]), n_ctx=512, verbose=False)
    reply = llm.create_chat_completion(
        messages=[
            {"role": "system", "content": "You are the Dungeon Master."},
            {"role": "user", "content": "I open the tavern door."},
        ],
        max_tokens=32,
        temperature=0.0,
    )
    assert reply["choices"][0]["message"]["content"].strip()
    assert llm.metadata["tokenizer.chat_template"].startswith("{% for message in messages %}")


def _verify_file(gguf: Path, model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dmforge.export import verify

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    meta = verify.gguf_metadata(gguf)
    _, llm = verify.check_loads(gguf)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompts = verify.probe_prompts(tokenizer, [verify.PROBE_CONVERSATION])
    return {
        "rope": verify.check_rope(meta, verify.model_config(model_dir)),
        "template": verify.check_template(meta, tokenizer.chat_template),
        "stop": verify.check_stop(llm, tokenizer, "<|im_end|>"),
        "logits": verify.check_logits(llm, model, tokenizer, prompts),
    }


@pytest.mark.slow
def test_the_converter_as_shipped_loses_rope_and_template_and_verification_says_so(smollm2_base, tmp_path: Path):
    from dmforge.export.convert import convert_to_gguf

    raw = convert_to_gguf(smollm2_base.path, tmp_path / "raw.gguf", fix_traps=False)
    checks = _verify_file(raw, smollm2_base.path)
    assert not checks["rope"].passed and "10000" in checks["rope"].reason
    assert not checks["template"].passed and "no chat template" in checks["template"].reason


@pytest.mark.slow
def test_a_wrong_rope_base_fails_verification(smollm2_base, tmp_path: Path):
    from dmforge.export.convert import convert_to_gguf

    model = tmp_path / "model"
    shutil.copytree(smollm2_base.path, model)
    config = json.loads((model / "config.json").read_text())
    config["rope_parameters"]["rope_theta"] = 10000.0  # the model was trained with 100000
    (model / "config.json").write_text(json.dumps(config))
    gguf = convert_to_gguf(model, tmp_path / "wrong-rope.gguf")
    checks = _verify_file(gguf, smollm2_base.path)
    assert not checks["rope"].passed
    assert not checks["logits"].passed, "the predictions change, and the KL check sees it"


@pytest.mark.slow
def test_a_wrong_eos_fails_verification(smollm2_base, tmp_path: Path):
    from dmforge.export.convert import convert_to_gguf

    model = tmp_path / "model"
    shutil.copytree(smollm2_base.path, model)
    config = json.loads((model / "config.json").read_text())
    config["eos_token_id"] = 0
    (model / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer_config["eos_token"] = "<|endoftext|>"
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    gguf = convert_to_gguf(model, tmp_path / "wrong-eos.gguf")
    check = _verify_file(gguf, smollm2_base.path)["stop"]
    assert not check.passed and "<|im_end|>" in check.reason
