"""The frozen layers' cache: training on kept hidden states is the same forward and backward pass as without."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from conftest import TINY_DECODER, tiny_llama
from dmforge.contract.chat import IGNORE, Sample
from dmforge.training.batches import collate
from dmforge.training.frozen import _PassThrough, frozen_cache, lowest_trained_layer
from dmforge.training.lora import layer_linear_names
from dmforge.training.loss import dm_turn_loss


def _gemma3():
    # A sliding window shorter than the samples, and both layer types among the frozen and the adapted
    # layers: the cache must keep each layer's own mask and rotary embedding.
    config = Gemma3TextConfig(
        **TINY_DECODER,
        max_position_embeddings=64,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    )
    return Gemma3ForCausalLM(config)


def _adapted(model, layers: list[int]):
    torch.manual_seed(0)
    targets = layer_linear_names(model)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=targets, layers_to_transform=layers, init_lora_weights=False)
    return get_peft_model(model.float(), lora)


def _samples() -> list[Sample]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for n in (23, 17):
        ids = torch.randint(0, TINY_DECODER["vocab_size"], (n,), generator=gen).tolist()
        labels = [IGNORE] * 5 + ids[5:]
        out.append(Sample("c", ids, labels))
    return out


def _loss_and_grads(model, samples, cache=None):
    model.zero_grad(set_to_none=True)
    batch = collate(samples, pad_id=0)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    decoded = cache.last_hidden(samples, ids, mask) if cache is not None else None
    loss, _ = dm_turn_loss(model, ids, mask, batch["labels"], batch["weights"], decoded)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss), grads


@pytest.mark.parametrize("build", [tiny_llama, _gemma3], ids=["llama", "gemma3"])
def test_training_on_kept_states_matches_the_plain_pass(build):
    torch.manual_seed(0)
    model = _adapted(build(), [2, 3])
    samples = _samples()
    plain_loss, plain_grads = _loss_and_grads(model, samples)

    cache = frozen_cache(model, enabled=True)
    assert cache is not None and cache.first == 2
    filling_loss, filling_grads = _loss_and_grads(model, samples, cache)  # computes and keeps the lower layers
    assert len(cache.kept) == 2 and [len(t) for t in cache.kept.values()] == [23, 17]
    reused_loss, reused_grads = _loss_and_grads(model, samples, cache)  # runs only layers 2 and 3

    for loss, grads in ((filling_loss, filling_grads), (reused_loss, reused_grads)):
        assert loss == pytest.approx(plain_loss, rel=1e-6)
        assert grads.keys() == plain_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    # The lower layers are the model's own again after each pass.
    layers = model.get_base_model().get_decoder().layers
    assert not any(isinstance(layer, _PassThrough) for layer in layers)


def test_a_single_sample_reused_from_a_padded_batch_matches():
    """A state kept from a padded batch serves the sample alone, and the other way round."""
    torch.manual_seed(0)
    model = _adapted(tiny_llama(), [3])
    samples = _samples()
    cache = frozen_cache(model, enabled=True)
    _loss_and_grads(model, samples, cache)
    alone, _ = _loss_and_grads(model, samples[1:])
    reused, _ = _loss_and_grads(model, samples[1:], cache)
    assert reused == pytest.approx(alone, rel=1e-5)


def test_nothing_is_cached_when_the_lowest_layer_or_the_embeddings_train():
    model = _adapted(tiny_llama(), [0, 1, 2, 3])
    assert lowest_trained_layer(model) is None and frozen_cache(model, enabled=True) is None
    top = _adapted(tiny_llama(), [2, 3])
    assert frozen_cache(top, enabled=False) is None
    top.get_base_model().get_input_embeddings().weight.requires_grad_(True)
    assert lowest_trained_layer(top) is None
