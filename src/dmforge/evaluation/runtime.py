"""The app's runtime in miniature: a GGUF in llama.cpp, prompted and sampled the way Cactus 0.2.x does.

- The prompt is the GGUF's own chat template rendered over the messages (Cactus: `jinja: true`).
- The sampler chain is llama.cpp's common one, in its order: repetition penalties, DRY, top-k,
  typical, top-p, min-p, temperature, then a seeded draw; a grammar, full or lazy, is applied
  first. Temperature 0 keeps only the most likely token, after the penalties.
- As in Cactus (which keeps llama.rn's loop), the prompt's tokens enter the repetition windows,
  so a penalty also weighs on text that is already in the context, call syntax included.
- A reply ends at an end-of-generation token or at `n_predict`. For evaluation only, it is also
  cut as soon as it loops (`metrics.loops`): it scores as a loop either way, and a looping small
  model would otherwise spend the whole budget on it.

The low-level llama.cpp sampler API is used because llama-cpp-python's high-level completion
takes no DRY settings, cannot put prompt tokens into the penalty window and has no lazy grammar.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from dmforge.config import DecodeConfig
from dmforge.errors import DmforgeError
from dmforge.evaluation.metrics import loops
from dmforge.tools.grammar import LAZY_TRIGGER_PATTERN
from dmforge.training.chat import IGNORE, Sample


def physical_cores() -> int:
    """Threads for llama.cpp: the physical cores (hyper-threads slow its matrix products down)."""
    import os

    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


# Greedy decoding with nothing else: what the model itself prefers, for comparison with the app's settings.
GREEDY = DecodeConfig(temperature=0.0, penalty_repeat=1.0, dry_multiplier=0.0, grammar="off")


@dataclass
class Reply:
    text: str
    tokens: int
    stop: Literal["end", "length", "loop"]

    @property
    def hit_limit(self) -> bool:
        return self.stop in ("length", "loop")


class Runtime:
    """One GGUF loaded in llama.cpp of the app's vintage, with the app's prompting and sampling."""

    def __init__(self, path: Path, n_ctx: int):
        import llama_cpp
        from llama_cpp import Llama

        from dmforge.export.verify import gguf_metadata

        threads = physical_cores()  # llama-cpp-python's default is half the logical cores: one, on a 2-core laptop
        try:
            self.llm = Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                logits_all=False,
                verbose=False,
                n_threads=threads,
                n_threads_batch=threads,
            )
        except Exception as exc:
            raise DmforgeError(
                f"llama.cpp could not load {path}: {exc}. Export it again with `dmforge export`."
            ) from exc
        self.path, self.n_ctx = path, n_ctx
        self.meta = gguf_metadata(path)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._scorer = None

    # --- prompts ---------------------------------------------------------------------------------------
    def count(self, text: str) -> int:
        """Tokens of a message's content, as the app's runtime counts them."""
        return len(self.llm.tokenize(text.encode(), add_bos=False, special=True))

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        from dmforge.export.verify import render_embedded

        text = render_embedded(self.meta, self.llm, messages, True)
        return list(self.llm.tokenize(text.encode(), add_bos=False, special=True))

    def _load(self, ids: list[int]) -> None:
        """Evaluate `ids`, reusing the longest prefix already in the KV cache (as Cactus does across turns)."""
        llm = self.llm
        if len(ids) >= self.n_ctx:
            raise DmforgeError(f"A prompt of {len(ids)} tokens does not fit the context of {self.n_ctx}.")
        cached = llm._input_ids[: llm.n_tokens].tolist()
        keep = 0
        for a, b in zip(cached, ids[:-1], strict=False):  # at least one token is evaluated, for fresh logits
            if a != b:
                break
            keep += 1
        llm.n_tokens = keep
        llm._ctx.kv_cache_seq_rm(-1, keep, -1)
        llm.eval(ids[keep:])

    # --- sampling --------------------------------------------------------------------------------------
    def _chain(self, decode: DecodeConfig, grammar: str | None):
        import llama_cpp as lc

        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        history = []  # samplers that take the prompt's tokens, as Cactus feeds them
        if grammar and decode.grammar != "off":
            if decode.grammar == "lazy":
                patterns = (ctypes.c_char_p * 1)(LAZY_TRIGGER_PATTERN.encode())
                sampler = lc.llama_sampler_init_grammar_lazy_patterns(
                    self.vocab, grammar.encode(), b"root", patterns, 1, None, 0
                )
            else:
                sampler = lc.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
            if not sampler:
                raise DmforgeError("llama.cpp rejected the tool-call grammar; regenerate it from the registry.")
            lc.llama_sampler_chain_add(chain, sampler)
        lc.llama_sampler_chain_add(
            chain,
            lc.llama_sampler_init_penalties(
                decode.penalty_last_n, decode.penalty_repeat, decode.penalty_freq, decode.penalty_present
            ),
        )
        history.append(lc.llama_sampler_chain_n(chain) - 1)
        if decode.dry_multiplier > 0:
            breakers = [b.encode() for b in decode.dry_sequence_breakers]
            array = (ctypes.c_char_p * len(breakers))(*breakers)
            lc.llama_sampler_chain_add(
                chain,
                lc.llama_sampler_init_dry(
                    self.vocab,
                    self.llm._model.n_ctx_train(),
                    decode.dry_multiplier,
                    decode.dry_base,
                    decode.dry_allowed_length,
                    decode.dry_penalty_last_n,
                    array,
                    len(breakers),
                ),
            )
            history.append(lc.llama_sampler_chain_n(chain) - 1)
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(decode.top_k))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(decode.top_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(decode.min_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp_ext(decode.temperature, 0.0, 1.0))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(decode.seed))
        return chain, history

    def reply(
        self, messages: list[dict], decode: DecodeConfig, grammar: str | None = None, stop_loops: bool = True
    ) -> Reply:
        """The app's reply to `messages` (system first), at most `decode.n_predict` tokens."""
        import llama_cpp as lc

        ids = self.prompt_ids(messages)
        self._load(ids)
        chain, history = self._chain(decode, grammar)
        try:
            for index in history:
                sampler = lc.llama_sampler_chain_get(chain, index)
                for token in ids:
                    lc.llama_sampler_accept(sampler, token)
            out: list[int] = []
            stop: Literal["end", "length", "loop"] = "length"
            limit = min(decode.n_predict, self.n_ctx - len(ids) - 1)
            while len(out) < limit:
                token = lc.llama_sampler_sample(chain, self.llm._ctx.ctx, -1)
                if lc.llama_vocab_is_eog(self.vocab, token):
                    stop = "end"
                    break
                out.append(token)
                if stop_loops and len(out) % 4 == 0 and loops(self._text(out)):
                    stop = "loop"
                    break
                self.llm.eval([token])
        finally:
            lc.llama_sampler_free(chain)
        return Reply(self._text(out).strip(), len(out), stop)

    def _text(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens, special=False).decode("utf-8", errors="ignore")

    # --- scoring ---------------------------------------------------------------------------------------
    def nll(self, sample: Sample) -> tuple[float, int]:
        """Summed negative log-likelihood of a sample's trained tokens, and how many there are."""
        if self._scorer is None:  # a second context that keeps every position's logits
            from llama_cpp import Llama

            threads = physical_cores()
            self._scorer = Llama(
                model_path=str(self.path),
                n_ctx=self.n_ctx,
                logits_all=True,
                verbose=False,
                n_threads=threads,
                n_threads_batch=threads,
            )
        scorer = self._scorer
        scorer.reset()
        scorer.eval(sample.input_ids)
        logits = np.array(scorer.scores[: len(sample.input_ids) - 1], dtype=np.float64)
        targets = np.array(sample.labels[1:])
        mask = targets != IGNORE
        chosen = logits[mask]
        top = chosen.max(axis=1)
        log_z = top + np.log(np.exp(chosen - top[:, None]).sum(axis=1))
        return float(np.sum(log_z - chosen[np.arange(len(chosen)), targets[mask]])), int(mask.sum())


def perplexity(runtime: Runtime, samples: list[Sample]) -> float | None:
    total, count = 0.0, 0
    for sample in samples:
        nll, n = runtime.nll(sample)
        total, count = total + nll, count + n
    return math.exp(total / count) if count else None


def grammar_accepts(runtime: Runtime, grammar: str, text: str) -> bool:
    """Whether llama.cpp's own grammar engine lets `text` be generated and then end, token by token."""
    import llama_cpp as lc

    sampler = lc.llama_sampler_init_grammar(runtime.vocab, grammar.encode(), b"root")
    if not sampler:
        raise ValueError("llama.cpp could not parse the grammar")
    try:
        tokens = list(runtime.llm.tokenize(text.encode(), add_bos=False, special=False))
        eos = lc.llama_vocab_eos(runtime.vocab)
        for token in [*tokens, eos]:
            data = (lc.llama_token_data * 1)(lc.llama_token_data(token, 0.0, 0.0))
            array = lc.llama_token_data_array(data, 1, -1, False)
            lc.llama_sampler_apply(sampler, ctypes.byref(array))
            if math.isinf(data[0].logit):
                return False
            if token != eos:
                lc.llama_sampler_accept(sampler, token)
        return True
    finally:
        lc.llama_sampler_free(sampler)
