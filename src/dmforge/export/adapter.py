"""Adapter updates: the base GGUF ships once, and each version as a LoRA adapter GGUF of a few MB.

cactus-react-native 0.2.x loads LoRA adapters beside a base model (`lora_list: [{path, scaled}]`
in `CactusLM.init`), so an app update need not carry the whole model again. This module converts a
run's PEFT adapter with llama.cpp's own `convert_lora_to_gguf.py` of the app's vintage (from the
same pinned source as the model converter, export/converter.py) and checks in llama.cpp that the
base's F16 GGUF with the adapter applied predicts what the merged F16 export predicts: the same
next token after every probe prompt, and a mean KL below `PARITY_KL` over all their positions.

The base is the base's own F16 GGUF (export/convert.base_gguf, cached per base), which the
evaluation already scores, so base + adapter differs from the merged F16 file only in where the
LoRA product is added (at run time instead of into the weights).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from dmforge.errors import DmforgeError
from dmforge.export import verify
from dmforge.export.converter import converter_dir, converter_script
from dmforge.files import partial_path, write_text
from dmforge.registry.runs import TRAINED_LAYERS, AdapterExport

ADAPTER_FILE = "dungeon-master-adapter-f16.gguf"
# Merged weights are rounded to F16 once; base + adapter adds the F16 LoRA product at run time. Measured
# on SmolLM2-135M the two differ by about 1e-5 in KL; a wrong scale or a missing layer gives 1e-1 or more.
PARITY_KL = 1e-3


def convert_adapter(adapter_dir: Path, base_dir: Path, out: Path) -> Path:
    """The PEFT adapter in `adapter_dir` as an F16 LoRA GGUF at `out`, for the base model in `base_dir`."""
    script = converter_script("convert_lora_to_gguf.py")
    partial = partial_path(out)
    command = [sys.executable, str(script), "--base", str(base_dir), "--outfile", str(partial), "--outtype", "f16"]
    env = {**os.environ, "PYTHONPATH": str(converter_dir() / "gguf-py")}
    result = subprocess.run([*command, str(adapter_dir)], capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        log_path = out.with_name(out.stem + ".convert.log")
        write_text(log_path, f"$ {' '.join(command)} {adapter_dir}\n\n{result.stdout}{result.stderr}")
        tail = [line.strip() for line in (result.stdout + result.stderr).strip().splitlines()[-4:] if line.strip()]
        raise DmforgeError(
            f"Converting the LoRA adapter {adapter_dir} to GGUF failed: {' | '.join(tail) or 'no output'}. The whole "
            f"log is in {log_path}. Deploy the merged model instead (`deploy.mode: merged`, the default)."
        )
    partial.replace(out)
    return out


def adapter_parity(base: Path, adapter: Path, merged: Path, prompts: list[str], n_ctx: int = 1024) -> dict:
    """Base + adapter against the merged F16 file in llama.cpp: mean KL, next-token and all-position agreement."""
    from llama_cpp import Llama

    with_adapter = Llama(
        model_path=str(base), lora_path=str(adapter), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=None
    )
    reference = verify.load_llama(merged, n_ctx)
    kls, top1, next_same = [], [], True
    for prompt in prompts:
        ids = list(reference.tokenize(prompt.encode(), add_bos=False, special=True))
        a, b = verify.gguf_logits(reference, ids), verify.gguf_logits(with_adapter, ids)
        kls.append(verify.mean_kl(a, b))
        top1.append(float(np.mean(a.argmax(-1) == b.argmax(-1))))
        next_same &= bool(a[-1].argmax() == b[-1].argmax() or a[-1][b[-1].argmax()] >= a[-1].max() - verify.TIE)
    kl = float(np.mean(kls))
    return {
        "kl": kl,
        "kl_limit": PARITY_KL,
        "next_token_same": next_same,
        "top1_agreement_all_positions": float(np.mean(top1)),
        "prompts": len(prompts),
        "passed": next_same and kl < PARITY_KL,
    }


def export_adapter(run_dir: Path, base_dir: Path, merged_f16: Path, prompts: list[str]) -> AdapterExport:
    """Convert the run's adapter, check it against the merged export, and describe both files for deploy."""
    from dmforge.export.convert import base_gguf

    if (run_dir / TRAINED_LAYERS).is_file():
        raise DmforgeError(
            f"{run_dir} trained its layers' own weights (`train.method: full`), so it has no LoRA adapter to export "
            "apart from the base. Export and deploy the merged model (`deploy.mode: merged`, the default), or "
            "train with `train.method: lora`."
        )
    adapter = convert_adapter(run_dir / "adapter", base_dir, run_dir / "gguf" / ADAPTER_FILE)
    base = base_gguf(base_dir)
    parity = adapter_parity(base, adapter, merged_f16, prompts)
    return AdapterExport.of(adapter, base, merged_f16.stat().st_size, parity)
