"""Replies and perplexity from the three models compared: base, fine-tuned (transformers) and GGUF (llama.cpp).

Decoding is greedy so that a report can be reproduced. The GGUF column goes through
llama-cpp-python's chat path, which renders the template embedded in the file, as Cactus does
with `jinja: true`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dmforge.training.chat import IGNORE, ChatFormat, Sample

MAX_NEW_TOKENS = 160


def reply_budget(gold_tokens: int) -> int:
    """Tokens a model may write for one scored turn: twice the gold reply's length plus 32, at most 160.

    A longer reply is already wrong on length, and small models under greedy decoding often loop
    until the limit; the cap keeps evaluation minutes, not tens of minutes, without cutting a reply
    that is the gold's length (the gold's tool calls included).
    """
    return min(MAX_NEW_TOKENS, 2 * gold_tokens + 32)


@dataclass
class EvalTurn:
    conversation: str
    index: int  # the DM turn's message index
    prompt: list[dict]  # messages as the app sends them (role and content)
    gold: str
    tool_results: str | None
    party: list[str]
    location: str


class HFModel:
    def __init__(self, path: Path, tokenizer, fmt: ChatFormat):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.tokenizer, self.fmt = tokenizer, fmt
        self.end_id = tokenizer.convert_tokens_to_ids(fmt.end_of_turn)

    def reply(self, messages: list[dict], max_tokens: int = MAX_NEW_TOKENS) -> str:
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = self.model.generate(
                ids, max_new_tokens=max_tokens, do_sample=False, eos_token_id=self.end_id, pad_token_id=self.end_id
            )
        return self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()

    def nll(self, sample: Sample) -> tuple[float, int]:
        ids = torch.tensor([sample.input_ids])
        with torch.no_grad():
            logits = self.model(ids).logits[0, :-1].float()
        targets = torch.tensor(sample.labels[1:])
        mask = targets != IGNORE
        loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum")
        return float(loss), int(mask.sum())


class GGUFModel:
    def __init__(self, path: Path, n_ctx: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False)

    def reply(self, messages: list[dict], max_tokens: int = MAX_NEW_TOKENS) -> str:
        out = self.llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0, top_k=1)
        return (out["choices"][0]["message"]["content"] or "").strip()

    def nll(self, sample: Sample) -> tuple[float, int]:
        self.llm.reset()
        self.llm.eval(sample.input_ids)
        logits = np.array(self.llm.scores[: len(sample.input_ids) - 1], dtype=np.float64)
        targets = np.array(sample.labels[1:])
        mask = targets != IGNORE
        chosen = logits[mask]
        log_z = chosen.max(axis=1) + np.log(np.exp(chosen - chosen.max(axis=1, keepdims=True)).sum(axis=1))
        nll = float(np.sum(log_z - chosen[np.arange(len(chosen)), targets[mask]]))
        return nll, int(mask.sum())


def perplexity(model, samples: list[Sample]) -> float | None:
    total, count = 0.0, 0
    for sample in samples:
        nll, n = model.nll(sample)
        total, count = total + nll, count + n
    return math.exp(total / count) if count else None
