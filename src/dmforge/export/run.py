"""`dmforge export RUN`: merged model → F16 GGUF → quantizations, each verified.

The types written are F16, Q8_0 and Q4_K_M, any requested ones, and every other type the model's
widths take without fallback, so that the evaluation can choose what ships by measurement
(export/ship.py). Writes `<run>/gguf/dungeon-master-<quant>.gguf` and `<run>/gguf/export.json`
(`passed`, one entry per check with its figures, the quantization comparison and a sample DM reply
generated through llama-cpp-python with the embedded chat template, as Cactus runs it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from dmforge.contract.chat import ChatFormat, template_messages
from dmforge.errors import DmforgeError
from dmforge.export import verify
from dmforge.export.convert import convert_to_gguf
from dmforge.export.quantize import QUANT_TYPES, export_types, fallback_share, quantize
from dmforge.models.resolve import sha256_file
from dmforge.registry.runs import ExportReport, manifest_path, read_manifest, write_export

FILE_STEM = "dungeon-master"


def gguf_name(quant: str) -> str:
    return f"{FILE_STEM}-{quant.lower()}.gguf"


def _probe_conversations(run_dir: Path, fmt: ChatFormat) -> list[list[dict]]:
    """The built-in probe plus the first DM prompt of two validation conversations of this run."""
    probes = [template_messages(verify.PROBE_CONVERSATION, fmt)]
    validation = run_dir / "dataset" / "validation.jsonl"
    if validation.is_file():
        for line in validation.read_text().splitlines()[:2]:
            messages = json.loads(line)["messages"]
            first_dm = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
            probes.append(template_messages(messages[:first_dm], fmt))
    return probes


def sample_reply(llm, messages: list[dict], max_tokens: int = 96) -> str:
    """A greedy DM reply through llama-cpp-python's chat path, which renders the GGUF's embedded template."""
    result = llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0, top_k=1)
    return result["choices"][0]["message"]["content"] or ""


def export_run(
    run_dir: Path,
    quants: list[str],
    max_size_gb: float = 2.0,
    console=None,
    announce: Callable[[str, str], None] | None = None,
    adapter: bool = False,
) -> ExportReport:
    """Convert, quantize and verify. `announce(stage, detail)` marks where export and verify start."""
    from transformers import AutoTokenizer

    merged = run_dir / "merged"
    if not (merged / "config.json").is_file() or not manifest_path(run_dir).is_file():
        raise DmforgeError(
            f"{run_dir} has no merged model. Run `dmforge finetune --run-dir {run_dir}` first.", exit_code=2
        )
    unknown = [q for q in quants if q not in QUANT_TYPES]
    if unknown:
        raise DmforgeError(
            f"Unknown quantization {', '.join(unknown)}. Choose from {', '.join(QUANT_TYPES)}.", exit_code=2
        )
    manifest = read_manifest(run_dir)
    fmt = ChatFormat(**manifest.chat_format)
    tokenizer = AutoTokenizer.from_pretrained(merged)

    def say(text: str) -> None:
        if console:
            console.print(text)

    if announce:
        announce("export", "GGUF with llama.cpp's converter (F16), then every type the model takes cleanly")
    files, types = _write_files(merged, run_dir / "gguf", quants, say)
    if announce:
        announce("verify", "load each file in llama.cpp; architecture, rope, template, stop token, logits, size")
    conversations = _probe_conversations(run_dir, fmt)
    prompts = verify.probe_prompts(tokenizer, conversations)
    checks, comparison, sample = _verify_files(
        files, types, merged, tokenizer, fmt, conversations, prompts, say, int(max_size_gb * 2**30)
    )
    warnings = [
        f"{row['quant']} does not fit this model: {row['fallback_tensors']} weight matrices have widths that are not "
        f"a multiple of its block, so they fell back to other types (KL vs F16 {row.get('kl_vs_f16', 0):.3f}). "
        "The evaluation measures every file and ships the smallest that keeps the model's behaviour."
        for row in comparison
        if row["fallback_share"] > 0.25
    ]
    adapter_export = None
    if adapter and all(c["passed"] for c in checks):
        say("converting the LoRA adapter to GGUF and checking base + adapter against the merged F16 file…")
        adapter_export, check = _export_adapter(run_dir, Path(manifest.base.path), files["F16"], prompts)
        checks.append(check)
    report = ExportReport(
        passed=all(c["passed"] for c in checks),
        files={q: str(p) for q, p in files.items()},
        # What was verified, byte for byte: deploy refuses a file that no longer matches.
        sha256={q: sha256_file(p) for q, p in files.items()},
        checks=checks,
        quantizations=comparison,
        warnings=warnings,
        sample_reply=sample,
        chat_format=manifest.chat_format,
        max_seq_len=manifest.max_seq_len,
        requested=list(quants),
        types=list(types),
        max_size_gb=max_size_gb,
        adapter=adapter_export,
    )
    write_export(run_dir, report)
    return report


def _write_files(merged: Path, out: Path, quants: list[str], say) -> tuple[dict[str, Path], list[str]]:
    """The F16 GGUF from llama.cpp's converter and its quantizations: (quant → file, the types written)."""
    say("converting the merged model to GGUF (F16) with llama.cpp's converter…")
    files = {"F16": convert_to_gguf(merged, out / gguf_name("F16"))}
    types = export_types(files["F16"], quants)
    for quant in types:
        if quant != "F16":
            say(f"quantizing to {quant}…")
            files[quant] = quantize(files["F16"], out / gguf_name(quant), quant)
    return files, types


def _verify_files(files, types, merged: Path, tokenizer, fmt: ChatFormat, conversations, prompts, say, budget: int):
    """Load every file in llama.cpp and run its checks; (checks, the quantization comparison, a sample reply)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    config = verify.model_config(merged)
    checks: list[dict] = []
    comparison: list[dict] = []
    f16_llm = sample = None
    for quant in types:
        path = files[quant]
        say(f"verifying {path.name} in llama.cpp…")
        meta = verify.gguf_metadata(path)
        loaded, llm = verify.check_loads(path)
        results = [
            loaded,
            verify.check_architecture(meta),
            verify.check_rope(meta, config),
            verify.check_template(meta, tokenizer.chat_template),
            verify.check_size(path, budget),
        ]
        if llm is not None:
            results += [
                verify.check_rendering(meta, llm, tokenizer, conversations[0]),
                verify.check_stop(llm, tokenizer, fmt.end_of_turn),
            ]
            if quant == "F16":
                results.append(verify.check_logits(llm, model, tokenizer, prompts))
                f16_llm = llm
        checks += [{"file": path.name, "quant": quant, **c.to_json()} for c in results]
        other, total = fallback_share(files["F16"], quant)
        row = {
            "quant": quant,
            "file": path.name,
            "bytes": path.stat().st_size,
            "fallback_tensors": f"{other}/{total}",
            "fallback_share": other / max(total, 1),
        }
        if quant != "F16" and llm is not None and f16_llm is not None:
            row.update(verify.quant_quality(llm, f16_llm, tokenizer, prompts))
        comparison.append(row)
        if llm is not None and sample is None:
            sample = {"file": path.name, "reply": sample_reply(llm, conversations[0])}
    return checks, comparison, sample


def _export_adapter(run_dir: Path, base: Path, f16: Path, prompts):
    """The LoRA adapter as a GGUF, checked against the merged F16 file: (its record, its check row)."""
    from dmforge.export.adapter import export_adapter

    exported = export_adapter(run_dir, base, f16, prompts)
    check = {
        "file": Path(exported.file).name,
        "quant": "adapter",
        "name": "adapter_matches_merged_model",
        "passed": exported.passed,
        "figures": exported.parity,
        "reason": ""
        if exported.passed
        else f"base + adapter predicts unlike the merged model (KL {exported.parity['kl']:.2e})",
    }
    return exported, check
