"""LoRA on a bf16 CPU base: the adapters compute in bf16, their float32 weights take the gradients."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

import dmforge.training.loss as loss_module
from conftest import TINY_DECODER, tiny_llama
from dmforge.contract.chat import IGNORE, Sample
from dmforge.training.batches import collate
from dmforge.training.frozen import frozen_cache
from dmforge.training.lora import compute_in_base_dtype, layer_linear_names
from dmforge.training.loss import dm_turn_loss


def _adapted(dtype: torch.dtype):
    torch.manual_seed(0)
    model = tiny_llama().to(dtype)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=layer_linear_names(model), layers_to_transform=[2, 3])
    adapted = get_peft_model(model, lora)  # PEFT keeps the adapters in float32 under a bf16 base
    for name, p in adapted.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero: give the adapters something to say
            torch.nn.init.normal_(p, std=0.05)
    return adapted


def _batch():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, TINY_DECODER["vocab_size"], (30,), generator=gen).tolist()
    sample = Sample("c", ids, [IGNORE] * 6 + ids[6:])
    return [sample], collate([sample], pad_id=0)


def _adapter_input_dtypes(model, run) -> set[torch.dtype]:
    seen: set[torch.dtype] = set()
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: seen.add(args[0].dtype))
        for name, m in model.named_modules()
        if name.endswith("lora_A.default")
    ]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_adapters_compute_in_bf16_and_their_float32_weights_take_the_gradients(monkeypatch):
    model = _adapted(torch.bfloat16)
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    _, batch = _batch()

    def loss():
        value, _ = dm_turn_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"], batch["weights"])
        return value

    # PEFT's own path lifts every adapted layer's input to float32; dmforge's keeps it in bf16.
    monkeypatch.setattr(loss_module, "compute_in_base_dtype", lambda _m: torch.autocast("cpu", enabled=False))
    assert _adapter_input_dtypes(model, loss) == {torch.float32}
    model.zero_grad()
    loss().backward()
    reference = {id(p): p.grad.clone() for p in trained}
    monkeypatch.undo()
    assert _adapter_input_dtypes(model, loss) == {torch.bfloat16}

    model.zero_grad()
    value = loss()
    value.backward()
    for p in trained:  # bf16 arithmetic: each gradient within a few percent of the float32 one, as a whole
        assert p.grad.dtype == torch.float32
        assert float((p.grad - reference[id(p)]).norm() / reference[id(p)].norm()) < 0.03


def test_an_optimizer_step_is_seen_by_the_next_forward():
    """Each forward casts the weights afresh: a cached bf16 copy would hide the step the optimizer just took."""
    model = _adapted(torch.bfloat16)
    samples, batch = _batch()
    cache = frozen_cache(model, enabled=True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def loss() -> torch.Tensor:
        hidden = cache.last_hidden(samples, batch["input_ids"], batch["attention_mask"])
        value, _ = dm_turn_loss(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"], batch["weights"], hidden
        )
        return value

    with compute_in_base_dtype(model):  # a caller may hold the context across steps
        before = loss()
        before.backward()
        optimizer.step()
        held = float(loss())
    fresh = float(loss())
    assert held == pytest.approx(fresh, rel=1e-6)
    assert held < float(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32-base", "bf16-adapters"])
def test_a_base_that_matches_its_adapters_is_left_alone(dtype):
    model = _adapted(torch.float32) if dtype == torch.float32 else _adapted(torch.bfloat16).to(torch.bfloat16)
    with compute_in_base_dtype(model):
        assert not torch.is_autocast_enabled("cpu")
