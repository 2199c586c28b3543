"""Make the base trainable: LoRA adapters (PEFT, or Unsloth on CUDA when it is installed), or, with
`train.method: full`, the top layers' own weights; and fold what trained back into one plain model."""

from __future__ import annotations

import importlib.util
from contextlib import ExitStack, nullcontext
from pathlib import Path

import torch

from dmforge.config import TrainConfig
from dmforge.errors import DmforgeError
from dmforge.files import write_text
from dmforge.models.hardware import Hardware
from dmforge.models.load import load_model
from dmforge.models.resolve import SOURCE_RECORD


def use_unsloth(config: TrainConfig, hardware: Hardware) -> bool:
    available = hardware.device == "cuda" and importlib.util.find_spec("unsloth") is not None
    if config.unsloth == "on" and not available:
        raise DmforgeError("`train.unsloth: on` needs a CUDA GPU and the unsloth package (pip install unsloth).")
    return config.unsloth != "off" and available and config.method == "lora"


def trainable_model(base_path: Path, config: TrainConfig, hardware: Hardware):
    """The base, ready to train as `train.method` says: LoRA adapters, or the top layers' own weights."""
    if config.method == "full":
        return full_tuning_model(base_path, config, hardware)
    return lora_model(base_path, config, hardware)


def full_tuning_model(base_path: Path, config: TrainConfig, hardware: Hardware):
    """The base with its top `lora_layers` layers trainable, in float32, and everything else frozen.

    Float32 master weights because a bf16 weight cannot take a small update: its spacing is 2^-8 of its
    size, and an AdamW step at 1e-4 is smaller than that for most weights, so it would round away. On a
    bf16 CPU the frozen layers stay bf16 and the trained ones compute in bf16 under autocast
    (`compute_in_base_dtype`); on a GPU the whole model runs in float32, which at these sizes costs little.
    """
    if config.qlora:
        raise DmforgeError(
            "QLoRA trains adapters on a 4-bit base, and `train.method: full` trains the weights themselves. "
            "Set `train.qlora: false`, or `train.method: lora`."
        )
    torch.manual_seed(config.seed)
    dtype = hardware.dtype if hardware.device == "cpu" else torch.float32
    model = load_model(base_path, dtype, hardware.device)
    model.requires_grad_(False)
    layers = model.get_decoder().layers
    for layer in layers[len(layers) - config.adapted_layers(len(layers)) :]:
        layer.to(torch.float32).requires_grad_(True)
    return model


def lora_model(base_path: Path, config: TrainConfig, hardware: Hardware):
    """The base model with fresh LoRA adapters, ready to train; seeded so adapters start identical."""
    torch.manual_seed(config.seed)
    if config.qlora and (hardware.device != "cuda" or importlib.util.find_spec("bitsandbytes") is None):
        raise DmforgeError("QLoRA (`train.qlora: true`) needs a CUDA GPU and bitsandbytes. Set it to false.")
    if use_unsloth(config, hardware):
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(
            model_name=str(base_path),
            max_seq_length=config.max_seq_len,
            dtype=hardware.dtype,
            load_in_4bit=config.qlora,
        )
        return FastLanguageModel.get_peft_model(
            model,
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=_unsloth_targets(config.target_modules),
            random_state=config.seed,
            use_gradient_checkpointing="unsloth",
            layers_to_transform=_top_layers(model, config),
        )
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = load_model(base_path, hardware.dtype, hardware.device, quantize_4bit=config.qlora)
    if config.qlora:
        model = prepare_model_for_kbit_training(model)
    layers = _top_layers(model, config)
    targets = config.target_modules
    if layers is not None and targets == "all-linear":  # PEFT takes a layer subset only with a list of names
        targets = layer_linear_names(model)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _top_layers(model, config: TrainConfig) -> list[int] | None:
    """The indices of the transformer layers that get LoRA, the top ones (None: every layer)."""
    total = model.config.get_text_config().num_hidden_layers
    count = config.adapted_layers(total)
    return None if count >= total else list(range(total - count, total))


def layer_linear_names(model) -> list[str]:
    """The names of the linear layers inside the transformer layers (`q_proj`, …, `down_proj`): what
    `all-linear` means, as a list."""
    decoder = model.get_decoder()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in decoder.layers.named_modules()
            if isinstance(module, torch.nn.Linear)
        }
    )


def _unsloth_targets(targets: str | list[str]) -> list[str]:
    if targets == "all-linear":
        return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return [targets] if isinstance(targets, str) else targets


def compute_in_base_dtype(model):
    """A context in which the trained weights compute in the base's bfloat16 on a CPU; a no-op anywhere else.

    The trained weights are the LoRA adapters, or with `train.method: full` the top layers themselves.

    PEFT keeps the adapters' weights in float32, as the optimizer needs, and casts each adapted layer's
    input up to meet them: on a bf16 CPU that is a float32 copy of every [tokens, hidden] activation per
    adapted linear, matmuls that miss the bf16 units, and float32 adds and scales at full width. Under
    autocast the small adapter weights are cast down instead and the activations stay bf16. SmolLM2-135M,
    top 15 layers, 2048-token samples, 2 AMX cores: losses within 0.1 % after six steps, and the default
    run's 35 minutes held 363 steps where they held 262. Gradients still land on the float32 weights.

    The autocast's weight cache is off on purpose: within one context it would keep serving the bf16
    copy of a weight the optimizer has since moved. CUDA keeps PEFT's own path (not measured here).
    """
    model = getattr(model, "module", model)  # under DDP, the wrapped model
    first = next(model.parameters())
    trained = [p for p in model.parameters() if p.requires_grad]
    base_dtype = model.get_input_embeddings().weight.dtype
    if first.device.type != "cpu" or base_dtype != torch.bfloat16 or not trained:
        return nullcontext()
    if all(p.dtype == base_dtype for p in trained):
        return nullcontext()
    from peft.helpers import disable_input_dtype_casting

    stack = ExitStack()
    stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False))
    stack.enter_context(disable_input_dtype_casting(model))
    return stack


def merge_adapter(base_path: Path, adapter_dir: Path, out: Path, tokenizer) -> None:
    """Base + adapter → one plain model in `out`, in fp32 on the CPU so the merge loses nothing."""
    from peft import PeftModel

    base = load_model(base_path, torch.float32, "cpu")
    _save_merged(PeftModel.from_pretrained(base, adapter_dir).merge_and_unload(), base_path, out, tokenizer)


def merge_trained_layers(base_path: Path, trained: Path, out: Path, tokenizer) -> None:
    """Base with a `full` run's trained layers in place of its own → one plain model in `out`, in fp32."""
    from safetensors.torch import load_file

    model = load_model(base_path, torch.float32, "cpu")
    state = load_file(trained)
    foreign = sorted(set(state) - set(model.state_dict()))
    if foreign:
        raise DmforgeError(
            f"{trained} holds weights the base {base_path} does not have ({', '.join(foreign[:3])}): it was "
            "trained from another base. Train again with this base, or set `model.base` to the run's."
        )
    model.load_state_dict(state, strict=False)
    _save_merged(model, base_path, out, tokenizer)


def _save_merged(merged, base_path: Path, out: Path, tokenizer) -> None:
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    record = Path(base_path) / SOURCE_RECORD
    if record.is_file():  # weights that came from a GGUF: the export rebuilds some vocabularies from it
        write_text(out / SOURCE_RECORD, record.read_text())
