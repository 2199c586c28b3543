"""`train.method: full`: the top layers' own weights train in float32, and merge back into one plain model."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from conftest import TINY_DECODER, tiny_llama
from dmforge.config import TrainConfig, load_config
from dmforge.contract.chat import IGNORE, Sample
from dmforge.errors import DmforgeError
from dmforge.models.hardware import Hardware
from dmforge.training.batches import collate
from dmforge.training.checkpoint import write_trainable_state
from dmforge.training.frozen import frozen_cache
from dmforge.training.lora import merge_trained_layers, trainable_model
from dmforge.training.loss import dm_turn_loss

BF16_CPU = Hardware("cpu", torch.bfloat16, 2, "CPU", 8 << 30)


@pytest.fixture
def base(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "base"
    tiny_llama().save_pretrained(path)
    return path


def _full(layers: int = 2) -> TrainConfig:
    return TrainConfig(method="full", learning_rate=1e-4, lora_layers=layers)


def _batch():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, TINY_DECODER["vocab_size"], (30,), generator=gen).tolist()
    sample = Sample("c", ids, [IGNORE] * 6 + ids[6:])
    return [sample], collate([sample], pad_id=0)


def test_only_the_top_layers_train_and_they_keep_float32_master_weights(base):
    model = trainable_model(base, _full(2), BF16_CPU)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained and all(name.startswith(("model.layers.2.", "model.layers.3.")) for name in trained)
    assert {name.split(".")[2] for name in trained} == {"2", "3"}
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if name in trained else torch.bfloat16), name
    assert frozen_cache(model, enabled=True).first == 2  # the frozen layers below still run once per sample


def test_a_step_moves_the_trained_layers_only_and_merges_into_a_plain_model(base, tmp_path):
    model = trainable_model(base, _full(2), BF16_CPU)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    samples, batch = _batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    cache = frozen_cache(model, enabled=True)
    hidden = cache.last_hidden(samples, batch["input_ids"], batch["attention_mask"])
    loss, _ = dm_turn_loss(
        model, batch["input_ids"], batch["attention_mask"], batch["labels"], batch["weights"], hidden
    )
    loss.backward()
    optimizer.step()
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert moved == {name for name, p in model.named_parameters() if p.requires_grad}

    trained = tmp_path / "trained-layers.safetensors"
    write_trainable_state(trained, model)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    merge_trained_layers(base, trained, tmp_path / "merged", tokenizer)
    merged = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "merged").named_parameters())
    plain = dict(AutoModelForCausalLM.from_pretrained(base).named_parameters())
    for name, p in model.named_parameters():
        expected = p.detach() if p.requires_grad else plain[name].detach()
        torch.testing.assert_close(merged[name].detach(), expected.float(), rtol=0, atol=0, msg=name)


def test_trained_layers_from_another_base_are_refused(base, tmp_path):
    stray = tmp_path / "stray.safetensors"
    save_file({"model.layers.9.mlp.up_proj.weight": torch.zeros(2, 2)}, stray)
    with pytest.raises(DmforgeError, match="another base"):
        merge_trained_layers(base, stray, tmp_path / "merged", None)


def test_the_config_refuses_a_lora_rate_and_an_adapter_deploy_for_full_tuning():
    with pytest.raises(DmforgeError, match="would wreck them"):
        load_config(None, {"train": {"method": "full"}})  # LoRA's default rate
    with pytest.raises(DmforgeError, match="trains none"):
        load_config(None, {"train": {"method": "full", "learning_rate": 1e-4}, "deploy": {"mode": "adapter"}})
    with pytest.raises(DmforgeError, match="4-bit"):
        trainable_model(None, _full().model_copy(update={"qlora": True}), BF16_CPU)
