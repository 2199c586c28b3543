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
    result = subprocess.run(
        ["bash", str(ROOT / "train.sh"), "--config", str(ROOT / "configs" / "quick.yaml"), "--run-dir", str(run)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1/2 check" in output and "2/2 train" in output and "preflight" in output
    assert "stops after training" in " ".join(result.stdout.split())

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


def test_package_json_train_script_calls_train_sh():
    package = json.loads((ROOT / "package.json").read_text())
    assert package["scripts"]["train"] == "./train.sh"
