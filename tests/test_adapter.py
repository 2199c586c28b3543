"""Adapter updates: a LoRA adapter GGUF on the base's F16 GGUF, checked against the merged model, deployed.

A real adapter with non-zero weights on SmolLM2-135M (no training needed: PEFT initialises B to zero,
so B is drawn at random here), converted by llama.cpp's own converter of the app's vintage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import SMOLLM2_CHAT_FORMAT, evaluated_run, model_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapter_run(smollm2_base, tmp_path_factory):
    """A run folder with a random-B LoRA adapter, its merged model and the merged F16 GGUF."""
    from dmforge.config import TrainConfig
    from dmforge.export.convert import convert_to_gguf
    from dmforge.models.hardware import detect_hardware
    from dmforge.models.load import load_tokenizer
    from dmforge.training.lora import lora_model, merge_adapter

    root = tmp_path_factory.mktemp("adapter")
    train = TrainConfig(lora_r=8)
    model = lora_model(smollm2_base.path, train, detect_hardware("cpu", "float32", None))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.02)
    model.save_pretrained(root / "adapter")
    tokenizer = load_tokenizer(smollm2_base.path, None)
    merge_adapter(smollm2_base.path, root / "adapter", root / "merged", tokenizer)
    run = model_run(root / "merged", root / "run", base_dir=smollm2_base.path)
    (run / "adapter").mkdir(exist_ok=True)
    for item in (root / "adapter").iterdir():
        (run / "adapter" / item.name).write_bytes(item.read_bytes())
    f16 = convert_to_gguf(run / "merged", run / "gguf" / "dungeon-master-f16.gguf")
    return run, f16, tokenizer


def _prompts(tokenizer) -> list[str]:
    from dmforge.contract.chat import ChatFormat, template_messages
    from dmforge.export import verify

    fmt = ChatFormat(**SMOLLM2_CHAT_FORMAT)
    return verify.probe_prompts(tokenizer, [template_messages(verify.PROBE_CONVERSATION, fmt)])


def test_base_plus_adapter_predicts_what_the_merged_model_predicts(adapter_run, smollm2_base):
    from dmforge.export.adapter import export_adapter

    run, f16, tokenizer = adapter_run
    report = export_adapter(run, smollm2_base.path, f16, _prompts(tokenizer))
    assert report.passed and report.parity["next_token_same"], report.parity
    assert report.parity["kl"] < 1e-3 and report.parity["top1_agreement_all_positions"] > 0.98
    # An update is the adapter alone: a few MB against the 270 MB model.
    assert report.bytes < report.merged_bytes / 20 and report.base_bytes > 0.9 * report.merged_bytes
    assert len(report.sha256) == 64 and Path(report.file).is_file()


def test_a_wrongly_scaled_adapter_fails_the_parity_check(adapter_run, smollm2_base, tmp_path: Path):
    from dmforge.export.adapter import adapter_parity, convert_adapter
    from dmforge.export.convert import base_gguf

    run, f16, tokenizer = adapter_run
    wrong = tmp_path / "adapter"
    wrong.mkdir()
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    config["lora_alpha"] = config["lora_alpha"] * 8  # what a use_rslora or alpha mix-up does to the scale
    (wrong / "adapter_config.json").write_text(json.dumps(config))
    (wrong / "adapter_model.safetensors").write_bytes((run / "adapter" / "adapter_model.safetensors").read_bytes())
    gguf = convert_adapter(wrong, smollm2_base.path, tmp_path / "wrong.gguf")
    parity = adapter_parity(base_gguf(smollm2_base.path), gguf, f16, _prompts(tokenizer))
    assert not parity["passed"] and parity["kl"] > 1e-3


def test_the_evaluation_runtime_applies_the_adapter_in_every_context(adapter_run, smollm2_base):
    from dmforge.config import DecodeConfig
    from dmforge.evaluation.batch import batch_replies
    from dmforge.evaluation.runtime import Runtime
    from dmforge.export.adapter import ADAPTER_FILE
    from dmforge.export.convert import base_gguf

    run, f16, _ = adapter_run
    conversations = [
        [[{"role": "system", "content": "You are the Dungeon Master."}, {"role": "user", "content": c}]]
        for c in ("Ana: I open the crypt door.", "Bo: I haggle with the smith.")
    ]
    greedy = DecodeConfig(temperature=0.0, penalty_repeat=1.0, n_predict=24, grammar="off")
    merged = batch_replies(Runtime(f16, 512), conversations, greedy, None)
    with_adapter = batch_replies(
        Runtime(base_gguf(smollm2_base.path), 512, run / "gguf" / ADAPTER_FILE), conversations, greedy, None
    )
    plain = batch_replies(Runtime(base_gguf(smollm2_base.path), 512), conversations, greedy, None)
    # F16 rounding differs (the LoRA product added at run time, not into the weights), so a near-tie can
    # tip late in a reply; the replies agree far longer than the base's own does with the merged model.
    agree = [_common_prefix(a[0].text, m[0].text) for a, m in zip(with_adapter, merged, strict=True)]
    base_agree = [_common_prefix(p[0].text, m[0].text) for p, m in zip(plain, merged, strict=True)]
    assert all(n >= 40 for n in agree), (agree, with_adapter, merged)
    assert sum(agree) > sum(base_agree), (agree, base_agree, plain)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_adapter_mode_deploys_the_base_once_and_the_version_as_an_adapter(adapter_run, smollm2_base, tmp_path: Path):
    from dmforge.config import DmforgeConfig
    from dmforge.deploy.app import deploy
    from dmforge.export.adapter import export_adapter
    from dmforge.registry.runs import ExportReport, write_export
    from dmforge.tools.registry import load_registry

    run, f16, tokenizer = adapter_run
    from dmforge.models.resolve import sha256_file

    adapter = export_adapter(run, smollm2_base.path, f16, _prompts(tokenizer))
    write_export(
        run,
        ExportReport(
            passed=True,
            files={"F16": str(f16)},
            sha256={"F16": sha256_file(f16)},
            checks=[],
            chat_format=SMOLLM2_CHAT_FORMAT,
            max_seq_len=1024,
            requested=[],
            max_size_gb=2.0,
            adapter=adapter,
        ),
    )
    scores = {"call_decision_accuracy": 0.6}
    evaluated_run(run, {"F16": scores, "base + adapter": scores}, "F16")
    (run / "identity.json").write_text(json.dumps({"config": {}, "corpus": "c"}))
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text("{}")
    config = DmforgeConfig(train={"runs_root": tmp_path / "runs"}, deploy={"mode": "adapter"})
    result = deploy(run, app, config, load_registry())
    models = app / "assets" / "models"
    assert sorted(p.name for p in models.iterdir()) == [
        "dungeon-master-adapter.gguf",
        "dungeon-master-base.gguf",
        "dungeon-master.json",
    ]
    values = result.values
    assert values["modelPath"] == "assets/models/dungeon-master-base.gguf"
    assert values["loraList"] == [{"path": "assets/models/dungeon-master-adapter.gguf", "scaled": 1.0}]
    assert values["loraSha256"] == adapter.sha256 and values["loraBytes"] == adapter.bytes
    assert "lora_list: dungeonMasterModel.loraList" in result.config_ts.read_text()
    # Back to the merged model: the base and the adapter leave the bundle with the switch.
    merged = deploy(run, app, DmforgeConfig(train={"runs_root": tmp_path / "runs"}), load_registry(), "F16")
    assert sorted(p.name for p in models.iterdir()) == ["dungeon-master.gguf", "dungeon-master.json"]
    assert "loraList" not in merged.values
