"""Load a resolved base for training or inference, with its chat template guaranteed present."""

from __future__ import annotations

from pathlib import Path

import torch

from dmforge.errors import DmforgeError
from dmforge.models.templates import SUPPLIED_TEMPLATES


def load_tokenizer(path: Path, template: str | None = None):
    """The base's tokenizer; `template` (a supplied name or Jinja text) replaces or fills its chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if template:
        tokenizer.chat_template = SUPPLIED_TEMPLATES.get(template, template)
    if not tokenizer.chat_template:
        raise DmforgeError(
            f"The model in {path} has no chat template, so dmforge cannot know how the app will format "
            "a conversation. Set `model.chat_template` to `chatml` or `gemma` (or to a Jinja template) in your config."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: Path, dtype: torch.dtype, device: str = "cpu", quantize_4bit: bool = False):
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": dtype, "trust_remote_code": False, "use_safetensors": True}
    if quantize_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
        kwargs["device_map"] = {"": 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise DmforgeError(f"Could not load the model in {path}: {exc}") from exc
    if not quantize_4bit:
        model.to(device)
    return model
