"""End to end as a newcomer runs it: ./train.sh on the sample corpus (reusing the installed .venv).

This is the CI run of the training and export issues: a few dozen real LoRA steps on SmolLM2-135M;
the loss falls, the validation loss is reported, the merged model loads back in transformers and
generates, the F16 and Q4_K_M GGUFs pass every verification check, a DM reply is generated through
llama-cpp-python with the embedded chat template, and the model lands in a throwaway app.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import ROOT


@pytest.mark.slow
def test_train_sh_quick_run_learns_and_the_merged_model_generates(tmp_path: Path):
    run = tmp_path / "run"
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "dnd-game"}')
    result = subprocess.run(
        [
            "bash",
            str(ROOT / "train.sh"),
            "--config",
            str(ROOT / "configs" / "quick.yaml"),
            "--run-dir",
            str(run),
            "--app",
            str(app),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for stage in ("1/4 check", "2/4 train", "3/4 export", "4/4 deploy", "preflight"):
        assert stage in output, stage

    m = json.loads((run / "metrics.json").read_text())
    losses = [loss for _, loss in m["train_loss"]]
    assert len(losses) == 30
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


def test_package_json_train_script_calls_train_sh():
    package = json.loads((ROOT / "package.json").read_text())
    assert package["scripts"]["train"] == "./train.sh"
