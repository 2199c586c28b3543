"""End to end as a newcomer runs it: ./train.sh on the sample corpus (reusing the installed .venv).

This is the CI run of the whole pipeline: thirty real LoRA steps on SmolLM2-135M; the loss falls,
the merged model loads back in transformers and generates, the F16 and Q4_K_M GGUFs pass every
verification check, the evaluation scores base, fine-tuned and GGUF on held-out DM turns (and the
fine-tuned model beats the base), the model lands in a throwaway app, and a second run resumes
every finished stage instead of redoing it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from dmforge.pipeline import STAGES


@pytest.mark.slow
def test_train_sh_runs_nine_stages_the_model_learns_and_a_rerun_resumes(tmp_path: Path):
    run = tmp_path / "run"
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "dnd-game"}')
    command = [
        "bash",
        str(ROOT / "train.sh"),
        "--config",
        str(ROOT / "configs" / "quick.yaml"),
        "--run-dir",
        str(run),
        "--app",
        str(app),
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=3000)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for i, stage in enumerate(STAGES, 1):
        assert f"[{i}/9] {stage}" in output, stage
    assert "done already" not in output
    assert "llama_tensor_get_type" not in output, "llama.cpp's per-tensor quantizer chatter goes to a log file"
    assert "fallback quantization" in (run / "gguf" / "dungeon-master-q4_k_m.quantize.log").read_text()
    assert "modelPath       'assets/models/dungeon-master.gguf'" in output

    m = json.loads((run / "metrics.json").read_text())
    losses = [loss for _, loss in m["train_loss"]]
    assert len(losses) == 50
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8 - 0.2, "the training loss falls"
    assert m["final_val_loss"] is not None and m["val_loss"][-1][1] < m["val_loss"][0][1] + 0.05
    for name in (
        "loss.png",
        "report.html",
        "config.yaml",
        "manifest.json",
        "adapter/adapter_config.json",
        "merged/model.safetensors",
        "merged/chat_template.jinja",
        "dataset/train.jsonl",
        "logs/train.jsonl",
    ):
        assert (run / name).exists(), name

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run / "merged")
    model = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float32)
    messages = [
        {"role": "system", "content": "You are the Dungeon Master."},
        {"role": "user", "content": "Thorin: I kick the crypt door open."},
    ]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=False)
    out = model.generate(ids, max_new_tokens=24, do_sample=False)
    assert len(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).split()) >= 3

    export = json.loads((run / "gguf" / "export.json").read_text())
    assert export["passed"], [c for c in export["checks"] if not c["passed"]]
    assert {c["quant"] for c in export["checks"]} == {"F16", "Q4_K_M"}
    assert export["sample_reply"]["reply"].strip()

    from llama_cpp import Llama

    llm = Llama(model_path=str(run / "gguf" / "dungeon-master-q4_k_m.gguf"), n_ctx=1024, verbose=False)
    reply = llm.create_chat_completion(messages=messages, max_tokens=48, temperature=0.0)
    assert reply["choices"][0]["message"]["content"].strip()

    deployed = app / "assets" / "models" / "dungeon-master.gguf"
    assert deployed.read_bytes() == (run / "gguf" / "dungeon-master-q4_k_m.gguf").read_bytes()
    values = json.loads((app / "assets" / "models" / "dungeon-master.json").read_text())
    assert values["modelPath"] == "assets/models/dungeon-master.gguf" and values["n_ctx"] == 1024
    assert (app / "src" / "dmforge" / "dungeonMasterModel.ts").is_file()

    # Evaluation: three columns on the validation split, written for programs and for people.
    for name in ("report.json", "report.md", "report.html", "metrics.png", "details.jsonl", "playtest.md"):
        assert (run / "eval" / name).is_file(), name
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["source"] == "the validation split" and report["turns"] == 8
    assert list(report["models"]) == ["base", "fine-tuned", "gguf"]
    base, tuned = report["models"]["base"], report["models"]["fine-tuned"]
    for metrics in report["models"].values():
        for key in ("call_decision_accuracy", "exact_call_match", "call_validity", "in_character_rate", "perplexity"):
            assert key in metrics, key
    # What fine-tuning is for: the DM asks for the rolls the gold asks for, and the gold text is likelier.
    assert tuned["call_recall"] > base["call_recall"], (base, tuned)
    # Not call decision accuracy: the base never calls, which is right on every quiet turn; F1 weighs both.
    assert tuned["call_f1"] > base["call_f1"], (base, tuned)
    assert tuned["perplexity"] < base["perplexity"], (base, tuned)
    details = [json.loads(line) for line in (run / "eval" / "details.jsonl").read_text().splitlines()]
    assert len(details) == 3 * 8 and {"prompt", "gold", "prediction", "verdict"} <= set(details[0])

    # Running it again finds every stage done and redoes none of the work.
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    rerun = again.stdout + again.stderr
    assert again.returncode == 0, rerun
    assert rerun.count("done already") == 7, rerun
    assert json.loads((run / "metrics.json").read_text())["steps"] == 50
    assert json.loads((run / "eval" / "report.json").read_text())["models"] == report["models"]


def test_package_json_train_script_calls_train_sh():
    package = json.loads((ROOT / "package.json").read_text())
    assert package["scripts"]["train"] == "./train.sh"
