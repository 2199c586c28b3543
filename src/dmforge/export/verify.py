"""Verification of an exported GGUF against the model it came from, in llama.cpp of the app's vintage.

Each check returns its figures and, when it fails, the reason in words a game developer can act on.
The checks are the failures users of other tools meet at run time: a file the runtime cannot load,
an architecture the app does not ship, a lost rope setting, a missing or different chat template,
turns that never stop, and a conversion that quietly changed the model's predictions.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dmforge.models.catalog import CACTUS_ARCHITECTURES

KL_LIMIT = 1e-3  # HF fp32 vs GGUF F16, mean over positions
PROBE_CONVERSATION = [
    {"role": "system", "content": "You are the Dungeon Master of a D&D 5e game.\n\nWorld: Greyhawk\nLocation: Hommlet"},
    {"role": "user", "content": "Ana: I search the ruined moathouse for traps."},
    {
        "role": "assistant",
        "content": "Dust and old bones cover the floor. Make an Investigation check.\n[roll: investigation, dc=12]",
    },
    {"role": "tool", "content": "[roll: investigation, dc=12] => 15, success"},
    {"role": "assistant", "content": "Fifteen beats it: a tripwire glints across the doorway. What do you do?"},
    {"role": "user", "content": "Ana: I step over it carefully."},
]


@dataclass
class Check:
    name: str
    passed: bool
    figures: dict = field(default_factory=dict)
    reason: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def gguf_metadata(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    wanted = {}
    for key, value in reader.fields.items():
        if key.startswith(
            ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")
        ):
            continue
        try:
            wanted[key] = value.contents()
        except Exception:
            continue
    return wanted


def load_llama(path: Path, n_ctx: int = 1024):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=None)


def check_loads(path: Path) -> tuple[Check, object | None]:
    try:
        llm = load_llama(path)
    except Exception as exc:
        return Check(
            "loads_in_llama_cpp", False, reason=f"llama.cpp (app vintage) could not load the file: {exc}"
        ), None
    return Check("loads_in_llama_cpp", True, {"n_vocab": llm.n_vocab(), "n_ctx_train": llm._model.n_ctx_train()}), llm


def check_architecture(meta: dict) -> Check:
    arch = meta.get("general.architecture", "?")
    ok = arch in CACTUS_ARCHITECTURES
    return Check(
        "architecture_supported",
        ok,
        {"architecture": arch},
        "" if ok else f"`{arch}` is not an architecture cactus-react-native 0.2.x can run; pick another base.",
    )


def check_rope(meta: dict, config: dict) -> Check:
    arch = meta.get("general.architecture", "?")
    want = config.get("rope_theta", (config.get("rope_parameters") or {}).get("rope_theta"))
    have = meta.get(f"{arch}.rope.freq_base")
    if want is None:
        return Check("rope_base", True, {"expected": None, "gguf": have})
    ok = have is not None and math.isclose(float(have), float(want), rel_tol=1e-6)
    reason = (
        ""
        if ok
        else (
            f"the GGUF's rope base is {have if have is not None else 'missing (llama.cpp would use 10000)'}, "
            f"the model needs {want}: positions would be encoded wrongly"
        )
    )
    return Check("rope_base", ok, {"expected": want, "gguf": have}, reason)


def check_template(meta: dict, template: str) -> Check:
    embedded = meta.get("tokenizer.chat_template")
    ok = embedded == template
    reason = (
        ""
        if ok
        else (
            "the GGUF carries no chat template: the app would format turns with a generic one"
            if not embedded
            else "the GGUF's chat template differs from the one used in training"
        )
    )
    return Check("chat_template_embedded", ok, {"length": len(embedded or "")}, reason)


def render_embedded(meta: dict, llm, messages: list[dict], generation_prompt: bool) -> str:
    """Render with the GGUF's own template and special tokens, as llama.cpp's Jinja chat path does."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = meta.get("tokenizer.chat_template") or ""
    bos = llm._model.token_get_text(llm.token_bos()) if llm.token_bos() != -1 else ""
    eos = llm._model.token_get_text(llm.token_eos()) if llm.token_eos() != -1 else ""
    env = ImmutableSandboxedEnvironment(trim_blocks=False, lstrip_blocks=False)
    return env.from_string(template).render(
        messages=messages, bos_token=bos, eos_token=eos, add_generation_prompt=generation_prompt
    )


def check_rendering(meta: dict, llm, tokenizer, messages: list[dict]) -> Check:
    try:
        gguf_text = render_embedded(meta, llm, messages, True)
    except Exception as exc:
        return Check("template_renders_training_text", False, reason=f"the embedded template does not render: {exc}")
    hf_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    hf_ids = tokenizer(hf_text, add_special_tokens=False)["input_ids"]
    gguf_ids = llm.tokenize(gguf_text.encode(), add_bos=False, special=True)
    same_text, same_ids = gguf_text == hf_text, list(gguf_ids) == list(hf_ids)
    reason = (
        ""
        if same_text and same_ids
        else (
            "the embedded template renders different text than training"
            if not same_text
            else "llama.cpp tokenizes the prompt differently than training (pre-tokenizer mismatch)"
        )
    )
    return Check(
        "template_renders_training_text",
        same_text and same_ids,
        {"tokens": len(hf_ids), "same_text": same_text, "same_tokens": same_ids},
        reason,
    )


def check_stop(llm, tokenizer, end_of_turn: str) -> Check:
    """The token that closes a DM turn must be the GGUF's end-of-sequence (or end-of-turn) token.

    Newer llama.cpp also stops on tokens whose text looks like an end marker, but the app's runtime and
    its `stop` handling rely on the declared ids, so the declaration is what is checked.
    """
    want = tokenizer.convert_tokens_to_ids(end_of_turn)
    gguf_ids = list(llm.tokenize(end_of_turn.encode(), add_bos=False, special=True))
    eos = llm.token_eos()
    eot = llm.metadata.get("tokenizer.ggml.eot_token_id")
    declared = want in (eos, int(eot) if eot is not None else None)
    ok = gguf_ids == [want] and declared and is_end_of_generation(llm, want)
    reason = (
        ""
        if ok
        else (
            f"{end_of_turn!r} (id {want}), the token that ends a DM turn, is not the GGUF's end-of-sequence token "
            f"(id {eos}): the app's replies would not stop at the end of the turn"
        )
    )
    return Check(
        "stop_token_ends_turn", ok, {"end_of_turn": end_of_turn, "token_id": want, "eos_id": eos, "eot_id": eot}, reason
    )


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def mean_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    p, q = _softmax(p_logits.astype(np.float64)), _softmax(q_logits.astype(np.float64))
    return float(np.mean(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30)), axis=-1)))


def gguf_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def probe_prompts(tokenizer, conversations: list[list[dict]]) -> list[str]:
    return [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]


TIE = 1e-2  # logits closer than this are a tie at F16 precision; either token is the model's choice


def check_logits(llm, model, tokenizer, prompts: list[str]) -> Check:
    """Same tokens, the same next token after each prompt, and KL < 1e-3 over every position.

    Agreement of the argmax over all prompt positions is reported too; it may dip below 100 % where
    two tokens tie to within F16 rounding, which is why the pass rule uses the next token, with ties.
    """
    kls, positions, same_tokens, next_ok = [], [], True, True
    for prompt in prompts:
        hf_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = list(llm.tokenize(prompt.encode(), add_bos=False, special=True))
        same_tokens &= ids == hf_ids
        a, b = hf_logits(model, hf_ids), gguf_logits(llm, hf_ids)
        kls.append(mean_kl(a, b))
        positions.append(float(np.mean(a.argmax(-1) == b.argmax(-1))))
        last_hf, last_gguf = a[-1], b[-1]
        next_ok &= bool(last_hf.argmax() == last_gguf.argmax() or last_hf[last_gguf.argmax()] >= last_hf.max() - TIE)
    kl, agree = float(np.mean(kls)), float(np.mean(positions))
    ok = same_tokens and next_ok and kl < KL_LIMIT
    reason = (
        ""
        if ok
        else (
            "llama.cpp tokenizes the probe prompts differently"
            if not same_tokens
            else "the GGUF's predictions are not finite numbers: the trained weights overflow F16, which happens "
            "when training diverges (a validation loss far above the base's). Lower train.learning_rate and train "
            "again"
            if not np.isfinite(kl)
            else f"the GGUF's predictions differ from the trained model (KL {kl:.2e}, next token "
            f"{'same' if next_ok else 'different'})"
        )
    )
    return Check(
        "matches_trained_model",
        ok,
        {
            "kl": kl,
            "kl_limit": KL_LIMIT,
            "next_token_same": next_ok,
            "top1_agreement_all_positions": agree,
            "same_tokenization": same_tokens,
            "prompts": len(prompts),
        },
        reason,
    )


def is_end_of_generation(llm, token: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), token))


def greedy(llm, ids: list[int], n: int) -> list[int]:
    """Up to `n` greedy tokens after `ids`, stopping at an end-of-generation token."""
    out: list[int] = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        if is_end_of_generation(llm, token):
            break
        out.append(int(token))
        if len(out) >= n:
            break
    return out


def quant_quality(quant_llm, f16_llm, tokenizer, prompts: list[str], n: int = 32) -> dict:
    """KL of a quantized file against the F16 one, and how many greedy tokens agree."""
    kls, agree = [], []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        kls.append(mean_kl(gguf_logits(f16_llm, ids), gguf_logits(quant_llm, ids)))
        a, b = greedy(f16_llm, ids, n), greedy(quant_llm, ids, n)
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        agree.append(same / max(1, min(len(a), len(b))))
    return {"kl_vs_f16": float(np.mean(kls)), "greedy_agreement": float(np.mean(agree)), "tokens": n}


def check_size(path: Path, budget_bytes: int) -> Check:
    size = path.stat().st_size
    ok = size <= budget_bytes
    return Check(
        "size_within_budget",
        ok,
        {"bytes": size, "budget_bytes": budget_bytes},
        ""
        if ok
        else f"{size / 2**30:.2f} GB is over the {budget_bytes / 2**30:.2f} GB budget; "
        "use a smaller quantization or base",
    )


def model_config(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text())
