"""The frozen lower layers' outputs, computed once per sample and reused in every later epoch.

With LoRA on the top N layers only (`train.lora_layers`), the layers below them never change: their
output for a sample is the same in every epoch. So the first time a sample is trained, the lower
layers run once, without gradients, and their output (the hidden state that enters the lowest
adapted layer) is kept; from then on only the top layers run, forward and backward. On SmolLM2-135M
with the top 8 of 30 layers adapted, an epoch after the first costs about a third of the first.

How the top layers are run on a kept hidden state without re-implementing any model: the lower
layers are swapped, for the length of one forward pass, for pass-through modules, and the kept
state goes in as `inputs_embeds`. Everything else the model's own forward does (the causal and
sliding-window masks, the rotary embeddings per layer type, the final norm) runs unchanged, so the
result is the same forward pass, which tests/test_frozen.py checks against the plain one.

The kept states live in memory, in the model's dtype: for the sample corpus at 2048 tokens, about
320 MB for SmolLM2-135M. A resumed run recomputes them as it meets each sample again.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from dmforge.contract.chat import Sample
from dmforge.training.lora import compute_in_base_dtype


class _PassThrough(torch.nn.Module):
    """Stands in for a frozen layer: hands its input on unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _Reached(Exception):
    """Raised by the capture hook once the lowest adapted layer's input is known: nothing above it is needed."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


def _decoder(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


def lowest_trained_layer(model) -> int | None:
    """The index of the lowest decoder layer with trainable weights, when everything below it is frozen.

    None when nothing can be cached: the embeddings train, or the lowest layer does.
    """
    decoder = _decoder(model)
    if any(p.requires_grad for p in decoder.get_input_embeddings().parameters()):
        return None
    for index, layer in enumerate(decoder.layers):
        if any(p.requires_grad for p in layer.parameters()):
            return index or None
    return None


@contextmanager
def _without_lower_layers(decoder, first: int):
    layers = decoder.layers
    kept = [layers[i] for i in range(first)]
    try:
        for i in range(first):
            layers[i] = _PassThrough()
        yield
    finally:
        for i, layer in enumerate(kept):
            layers[i] = layer


class FrozenCache:
    """The hidden states entering layer `first`, per sample, for a model whose layers below it are frozen."""

    def __init__(self, model, first: int):
        self.model = model
        self.first = first
        self.kept: dict[int, torch.Tensor] = {}  # id(sample) → [tokens, hidden]

    def _lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        decoder = _decoder(self.model)

        def capture(module, args, kwargs):
            raise _Reached(args[0] if args else kwargs["hidden_states"])

        handle = decoder.layers[self.first].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            with torch.no_grad():
                decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _Reached as reached:
            return reached.hidden
        finally:
            handle.remove()
        raise RuntimeError("the decoder never reached its lowest trained layer")

    def entering(self, samples: list[Sample], input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """The padded batch of hidden states entering layer `first`, computing those not kept yet."""
        missing = [row for row, s in enumerate(samples) if id(s) not in self.kept]
        if missing:
            rows = torch.tensor(missing, device=input_ids.device)
            mask = None if attention_mask is None else attention_mask[rows]
            hidden = self._lower(input_ids[rows], mask)
            for row, state in zip(missing, hidden, strict=True):
                self.kept[id(samples[row])] = state[: len(samples[row].input_ids)].detach().to("cpu").clone()
        states = [self.kept[id(s)] for s in samples]
        out = states[0].new_zeros((len(samples), input_ids.shape[1], states[0].shape[-1]))
        for row, state in enumerate(states):
            out[row, : len(state)] = state
        return out.to(input_ids.device)

    def last_hidden(self, samples: list[Sample], input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """The decoder's output (after the final norm), running only the layers from `first` up."""
        entering = self.entering(samples, input_ids, attention_mask)
        decoder = _decoder(self.model)
        with _without_lower_layers(decoder, self.first), compute_in_base_dtype(self.model):
            return decoder(inputs_embeds=entering, attention_mask=attention_mask, use_cache=False).last_hidden_state

    @property
    def bytes_per_token(self) -> float:
        """What one token's kept state takes in memory (0 before anything is kept)."""
        tokens = sum(len(t) for t in self.kept.values())
        return sum(t.numel() * t.element_size() for t in self.kept.values()) / max(1, tokens)


def frozen_cache(model, enabled: bool) -> FrozenCache | None:
    """A cache for this model when it is enabled and the model has frozen lower layers to cache."""
    if not enabled:
        return None
    first = lowest_trained_layer(model)
    return FrozenCache(model, first) if first else None
