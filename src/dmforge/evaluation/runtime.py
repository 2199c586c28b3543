"""The app's runtime in miniature: a GGUF in llama.cpp, prompted and sampled the way Cactus 0.2.x does.

- The prompt is the GGUF's own chat template rendered over the messages (Cactus: `jinja: true`).
- The sampler is llama.cpp's common one (`AppSampler`): the chain in its order (repetition
  penalties, DRY, top-k, top-p, min-p, temperature, a seeded draw), and a grammar, full or lazy,
  that checks the chosen token and forces a resample only when it rejects it. Temperature 0 keeps
  only the most likely token, after the penalties.
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
from dmforge.contract.chat import IGNORE, Sample
from dmforge.errors import DmforgeError
from dmforge.evaluation.metrics import loops
from dmforge.models.hardware import physical_cores
from dmforge.tools.grammar import LAZY_TRIGGER_PATTERN

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

    def __init__(self, path: Path, n_ctx: int, adapter: Path | None = None):
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
                lora_path=str(adapter) if adapter else None,  # applied at scale 1, as Cactus's lora_list does
            )
        except Exception as exc:
            raise DmforgeError(
                f"llama.cpp could not load {path}: {exc}. Export it again with `dmforge export`."
            ) from exc
        self.path, self.n_ctx, self.adapter = path, n_ctx, adapter
        self.meta = gguf_metadata(path)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._scorer = None
        self._call_tokens: np.ndarray | None = None  # built on first use: a pass over the vocabulary

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
    def sampler(self, decode: DecodeConfig, grammar: str | None, prompt: list[int]) -> AppSampler:
        """The app's sampler for one reply, its repetition windows already holding the prompt's tokens."""
        sampler = AppSampler(self, decode, grammar)
        sampler.accept_prompt(prompt)
        return sampler

    def reply(
        self, messages: list[dict], decode: DecodeConfig, grammar: str | None = None, stop_loops: bool = True
    ) -> Reply:
        """The app's reply to `messages` (system first), at most `decode.n_predict` tokens."""
        import llama_cpp as lc

        ids = self.prompt_ids(messages)
        self._load(ids)
        sampler = self.sampler(decode, grammar, ids)
        try:
            out: list[int] = []
            stop: Literal["end", "length", "loop"] = "length"
            limit = min(decode.n_predict, self.n_ctx - len(ids) - 1)
            while len(out) < limit:
                token = sampler.sample(self.llm._ctx.ctx, -1)
                if lc.llama_vocab_is_eog(self.vocab, token):
                    stop = "end"
                    break
                out.append(token)
                if stop_loops and len(out) % 4 == 0 and loops(self._text(out)):
                    stop = "loop"
                    break
                self.llm.eval([token])
        finally:
            sampler.free()
        return Reply(self._text(out).strip(), len(out), stop)

    def opening_margin(self, messages: list[dict], decode: DecodeConfig) -> float:
        """How far the reply's first token leans to a call: the best `[` token's logit minus the best other's.

        Read after the repetition penalties and DRY, which is what greedy decoding compares (top-k, top-p and
        min-p keep the best token, and the grammar allows both a call and narration at the start), so the
        reply opens with a call exactly when the margin is positive. A bias `b` on every `[` token (the
        app's `logit_bias`) would make it call when the margin exceeds `-b`.
        """
        ids = self.prompt_ids(messages)
        self._load(ids)
        sampler = self.sampler(decode, None, ids)
        try:
            logits = sampler.penalized_logits(self.llm._ctx.ctx, -1)
        finally:
            sampler.free()
        calls = self._opens_call()
        return float(logits[calls].max() - logits[~calls].max())

    def _opens_call(self) -> np.ndarray:
        """Which tokens start a call at the start of a reply: those whose text, leading spaces aside, starts `[`."""
        if self._call_tokens is None:
            import llama_cpp as lc

            pieces = (self.llm.detokenize([i]) for i in range(lc.llama_vocab_n_tokens(self.vocab)))
            self._call_tokens = np.array([p.lstrip().startswith(b"[") for p in pieces])
        return self._call_tokens

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
                lora_path=str(self.adapter) if self.adapter else None,
            )
        scorer = self._scorer
        scorer.reset()
        scorer.eval(sample.input_ids)
        targets = np.array(sample.labels[1:])
        mask = targets != IGNORE
        # Only the trained rows are widened to float64: the whole matrix would be 400 KB per token.
        chosen = np.asarray(scorer.scores[: len(sample.input_ids) - 1])[mask].astype(np.float64)
        top = chosen.max(axis=1)
        log_z = top + np.log(np.exp(chosen - top[:, None]).sum(axis=1))
        return float(np.sum(log_z - chosen[np.arange(len(chosen)), targets[mask]])), int(mask.sum())


class AppSampler:
    """llama.cpp's common sampler, as Cactus 0.2.x (through llama.rn) samples a reply.

    The chain runs in llama.cpp's order: repetition penalties, DRY, top-k, top-p, min-p,
    temperature, then a seeded draw. The grammar is not a link of the chain: the chain picks a
    token from the whole vocabulary, the grammar checks that one token, and only when it rejects
    it is the vocabulary filtered by the grammar and the chain run again (`common_sampler_sample`
    with `grammar_first = false`). For greedy decoding that picks exactly the token a grammar-first
    chain picks, and it is much faster: checking one token against the grammar costs what checking
    each of a 49k-word vocabulary costs divided by 49k.
    """

    def __init__(self, runtime: Runtime, decode: DecodeConfig, grammar: str | None):
        import llama_cpp as lc

        self._lc, self._vocab_size = lc, lc.llama_vocab_n_tokens(runtime.vocab)
        self.grammar = None
        if grammar and decode.grammar != "off":
            if decode.grammar == "lazy":
                patterns = (ctypes.c_char_p * 1)(LAZY_TRIGGER_PATTERN.encode())
                self.grammar = lc.llama_sampler_init_grammar_lazy_patterns(
                    runtime.vocab, grammar.encode(), b"root", patterns, 1, None, 0
                )
            else:
                self.grammar = lc.llama_sampler_init_grammar(runtime.vocab, grammar.encode(), b"root")
            if not self.grammar:
                raise DmforgeError("llama.cpp rejected the tool-call grammar; regenerate it from the registry.")
        self.chain = chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        self._history = []  # samplers that take the prompt's tokens, as Cactus feeds them
        lc.llama_sampler_chain_add(
            chain,
            lc.llama_sampler_init_penalties(
                decode.penalty_last_n, decode.penalty_repeat, decode.penalty_freq, decode.penalty_present
            ),
        )
        self._history.append(lc.llama_sampler_chain_n(chain) - 1)
        if decode.dry_multiplier > 0:
            lc.llama_sampler_chain_add(chain, dry_sampler(runtime, decode))
            self._history.append(lc.llama_sampler_chain_n(chain) - 1)
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(decode.top_k))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(decode.top_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(decode.min_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp_ext(decode.temperature, 0.0, 1.0))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(decode.seed))
        # One buffer of candidates for the whole vocabulary, refilled from the logits at every step.
        self._data = (lc.llama_token_data * self._vocab_size)()
        self._view = np.ctypeslib.as_array(self._data)
        self._ids = np.arange(self._vocab_size, dtype=np.int32)
        self._one = (lc.llama_token_data * 1)()

    def accept_prompt(self, ids: list[int]) -> None:
        for index in self._history:
            sampler = self._lc.llama_sampler_chain_get(self.chain, index)
            for token in ids:
                self._lc.llama_sampler_accept(sampler, token)

    def _candidates(self, ctx, index: int):
        lc = self._lc
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, index), shape=(self._vocab_size,))
        self._view["id"], self._view["logit"], self._view["p"] = self._ids, logits, 0.0
        return lc.llama_token_data_array(self._data, self._vocab_size, -1, False)

    def penalized_logits(self, ctx, index: int) -> np.ndarray:
        """The logits at batch position `index` after the repetition penalties and DRY, indexed by token id;
        the state is left as it was (nothing is accepted)."""
        lc = self._lc
        candidates = self._candidates(ctx, index)
        for position in self._history:
            lc.llama_sampler_apply(lc.llama_sampler_chain_get(self.chain, position), ctypes.byref(candidates))
        out = np.empty(self._vocab_size, dtype=np.float32)
        out[self._view["id"]] = self._view["logit"]  # a sampler may reorder the candidates; ids put them back
        return out

    def _grammar_allows(self, token: int) -> bool:
        lc = self._lc
        self._one[0] = lc.llama_token_data(token, 1.0, 0.0)
        lc.llama_sampler_apply(self.grammar, ctypes.byref(lc.llama_token_data_array(self._one, 1, -1, False)))
        return not math.isinf(self._one[0].logit)

    def sample(self, ctx, index: int) -> int:
        """The next token from the logits at batch position `index` (-1: the last), accepted into the state."""
        lc = self._lc
        candidates = self._candidates(ctx, index)
        lc.llama_sampler_apply(self.chain, ctypes.byref(candidates))
        token = int(candidates.data[candidates.selected].id)
        if self.grammar is not None and not self._grammar_allows(token):
            candidates = self._candidates(ctx, index)
            lc.llama_sampler_apply(self.grammar, ctypes.byref(candidates))
            lc.llama_sampler_apply(self.chain, ctypes.byref(candidates))
            token = int(candidates.data[candidates.selected].id)
        if self.grammar is not None:
            lc.llama_sampler_accept(self.grammar, token)
        lc.llama_sampler_accept(self.chain, token)
        return token

    def free(self) -> None:
        if self.grammar is not None:
            self._lc.llama_sampler_free(self.grammar)
            self.grammar = None
        if self.chain is not None:
            self._lc.llama_sampler_free(self.chain)
            self.chain = None


def dry_sampler(runtime: Runtime, decode: DecodeConfig):
    """llama.cpp's DRY sampler with the decoding's settings, as llama.rn builds it for Cactus."""
    import llama_cpp as lc

    breakers = [b.encode() for b in decode.dry_sequence_breakers]
    return lc.llama_sampler_init_dry(
        runtime.vocab,
        runtime.llm._model.n_ctx_train(),
        decode.dry_multiplier,
        decode.dry_base,
        decode.dry_allowed_length,
        decode.dry_penalty_last_n,
        (ctypes.c_char_p * len(breakers))(*breakers),
        len(breakers),
    )


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
