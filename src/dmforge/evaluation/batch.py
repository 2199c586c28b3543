"""Many replies at once: llama.cpp's multi-sequence batches, one sequence per conversation.

Scoring a validation split means hundreds of independent replies. Decoding them one at a time
reads every weight from memory once per token; decoding several sequences in one batch reads them
once per step for all of them, which on a laptop CPU is most of the cost. Each sequence carries one
conversation from turn to turn and keeps its prompt in the KV cache, so a turn costs only the tokens
that are new since the last one (the gold reply and the messages after it).

Every reply is made exactly as `Runtime.reply` makes it: the same prompt, the same sampler chain
with the same seed, the prompt's tokens in the repetition windows. Batched matrix products round
differently from single ones, so a near-tie can rarely resolve the other way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from dmforge.config import DecodeConfig
from dmforge.errors import DmforgeError
from dmforge.evaluation.metrics import loops, opening_complete
from dmforge.evaluation.runtime import AppSampler, Reply, Runtime
from dmforge.models.hardware import physical_cores
from dmforge.models.resolve import UNQUANTIZED_FILE_TYPES

CHUNK = 512  # prompt tokens per llama_decode call


@dataclass
class _Slot:
    seq: int
    conversation: int = -1
    turn: int = 0
    kv: list[int] = field(default_factory=list)  # the tokens whose keys and values this sequence holds
    chain: AppSampler | None = None
    out: list[int] = field(default_factory=list)
    limit: int = 0
    pending: int | None = None  # sampled, not yet decoded
    idle: bool = True  # between turns: its next prompt is loaded once no step's logits are pending


def parallel_for(runtime: Runtime, cap: int = 4) -> int:
    """How many sequences to decode together: up to `cap`, within about 1 GB of KV cache; one for a quantized file.

    Batching pays where a step is bound by reading the weights: F16's whole replies took 86 s with four
    sequences and 95 with one (60 held-out turns, SmolLM2-135M, 2 AVX2 cores). A quantized file's step is
    bound by its dot products, which four tokens do not share, while every token loaded into the shared
    cache attends over all the sequences' cells: Q4_K_M took 63 s with four and 50 with one, Q8_0 65 and 48.
    """
    meta = runtime.meta
    if int(meta.get("general.file_type", 1)) not in UNQUANTIZED_FILE_TYPES:
        return 1
    arch = meta.get("general.architecture", "llama")
    layers = int(meta.get(f"{arch}.block_count", 32))
    heads = int(meta.get(f"{arch}.attention.head_count_kv", meta.get(f"{arch}.attention.head_count", 8)))
    width = int(meta.get(f"{arch}.embedding_length", 2048)) // int(meta.get(f"{arch}.attention.head_count", 8))
    per_token = layers * 2 * heads * width * 2  # keys and values in F16
    return max(1, min(cap, (1 << 30) // max(1, per_token * runtime.n_ctx)))


def batch_replies(
    runtime: Runtime,
    conversations: list[list[list[dict]]],
    decode: DecodeConfig,
    grammar: str | None = None,
    parallel: int | None = None,
    on_reply: Callable[[], None] | None = None,
    opening_only: bool = False,
) -> list[list[Reply]]:
    """Replies to every prompt of every conversation; a conversation's prompts are taken in order.

    `conversations[c][t]` is the message list (system first) before the t-th scored turn of
    conversation c; each usually extends the one before, which is what the KV cache reuses. With
    `opening_only`, a reply stops (`stop="opening"`) as soon as it begins a line of narration: what it
    has by then are the calls it opens with: 6 tokens where a whole reply averaged 69 (measured).
    """
    # A screen generates about 6 tokens a reply, so batching its steps buys little, while every prompt
    # token loaded into a shared cache attends over all the sequences' cells: one sequence at a time
    # took 32 s where four took 42 (60 turns, SmolLM2-135M F16, 2 cores).
    width = parallel or (1 if opening_only else parallel_for(runtime))
    decoder = _Decoder(runtime, conversations, decode, grammar, width, on_reply, opening_only)
    try:
        decoder.run()
    finally:
        decoder.close()
    return [[r for r in conversation if r is not None] for conversation in decoder.results]


class _Decoder:
    """One llama.cpp context with a sequence per slot, stepping every slot's reply one token at a time."""

    def __init__(
        self, runtime: Runtime, conversations, decode: DecodeConfig, grammar, parallel: int, on_reply, opening_only
    ):
        import llama_cpp as lc

        self.lc, self.runtime, self.conversations = lc, runtime, conversations
        self.opening_only = opening_only
        self.decode, self.grammar, self.on_reply = decode, grammar, on_reply
        params = lc.llama_context_default_params()
        params.n_ctx = runtime.n_ctx * parallel
        params.n_batch = params.n_ubatch = CHUNK
        params.n_seq_max = parallel
        params.n_threads = params.n_threads_batch = physical_cores()
        params.defrag_thold = -1.0  # never compact: see `_submit`
        self.cells, self.parallel = params.n_ctx, parallel
        self.ctx = lc.llama_init_from_model(runtime.llm.model, params)
        if not self.ctx:
            raise DmforgeError(f"llama.cpp could not make a context of {params.n_ctx} tokens for {runtime.path.name}.")
        adapter = getattr(runtime.llm, "_lora_adapter", None)
        if adapter:  # an adapter is set per context: this one must see it as the runtime's own does
            lc.llama_set_adapter_lora(self.ctx, adapter, runtime.llm.lora_scale)
        self.batch = lc.llama_batch_init(max(CHUNK, parallel), 0, 1)
        self.results: list[list[Reply | None]] = [[None] * len(c) for c in conversations]
        self.queue = deque(i for i, c in enumerate(conversations) if c)
        self.slots = [_Slot(seq) for seq in range(parallel)]

    def run(self) -> None:
        while True:
            for slot in self.slots:
                while slot.idle and self._has_work(slot):
                    self._start(slot)
            active = [s for s in self.slots if s.pending is not None]
            if not active:
                return
            self._step(active)

    def _step(self, active: list[_Slot]) -> None:
        """Decode every active slot's pending token in one batch and sample each slot's next one.

        A fragmented cache can refuse the batch (see `_submit`); then each half goes on its own, sampled
        before the next half's decode overwrites the logits. One token always fits: every sequence
        stays under `n_ctx` cells, so at least `parallel` cells are free.
        """
        if not self._submit([(s.pending, len(s.kv), s.seq, True) for s in active]):
            half = len(active) // 2
            if not half:
                raise self._refused(1)
            self._step(active[:half])
            self._step(active[half:])
            return
        for s in active:
            s.kv.append(s.pending)
            s.pending = None
        for index, s in enumerate(active):
            self._sample(s, index)

    def close(self) -> None:
        for slot in self.slots:
            if slot.chain is not None:
                slot.chain.free()
        self.lc.llama_batch_free(self.batch)
        self.lc.llama_free(self.ctx)

    def _submit(self, entries: list[tuple[int, int, int, bool]]) -> bool:
        """Decode one batch of (token, position, sequence, wants logits); False when no cells are free for it.

        llama.cpp places a batch only in a contiguous run of free cells, and sequences of different
        lengths coming and going scatter the free ones. Its own remedy, compacting the cache (defrag),
        aborts the process in the llama.cpp of the app's vintage (a failed assertion in the graph it
        reserves afterwards), so callers split the batch instead: smaller pieces fit between the gaps.
        Every batch is at most one micro-batch, so a refused one has changed nothing.
        """
        lc, batch = self.lc, self.batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        batch.n_tokens = len(entries)
        code = lc.llama_decode(self.ctx, batch)
        if code not in (0, 1):
            raise self._refused(code, len(entries))
        return code == 0

    def _refused(self, code: int, tokens: int = 1) -> DmforgeError:
        return DmforgeError(
            f"llama.cpp could not decode a batch of {tokens} tokens in {self.runtime.path.name} "
            f"(code {code}, KV cache of {self.cells} cells for {self.parallel} sequences)."
        )

    def _sample(self, slot: _Slot, index: int) -> None:
        runtime = self.runtime
        token = slot.chain.sample(self.ctx, index)
        stop = None
        if self.lc.llama_vocab_is_eog(runtime.vocab, token):
            stop = "end"
        else:
            slot.out.append(token)
            if self.opening_only and opening_complete(runtime._text(slot.out)):
                stop = "opening"
            elif len(slot.out) % 4 == 0 and loops(runtime._text(slot.out)):
                stop = "loop"
            elif len(slot.out) >= slot.limit:
                stop = "length"
        if stop is None:
            slot.pending = token
            return
        self.results[slot.conversation][slot.turn] = Reply(runtime._text(slot.out).strip(), len(slot.out), stop)
        if self.on_reply:
            self.on_reply()
        slot.chain.free()
        slot.chain, slot.pending, slot.idle = None, None, True
        slot.turn += 1

    def _has_work(self, slot: _Slot) -> bool:
        return bool(self.queue) or (slot.conversation >= 0 and slot.turn < len(self.conversations[slot.conversation]))

    def _start(self, slot: _Slot) -> None:
        """Load the slot's next prompt (or the next conversation's first) and sample its first token.

        Called only between steps: loading a prompt overwrites the logits a step left for the others.
        """
        runtime = self.runtime
        if slot.conversation < 0 or slot.turn >= len(self.conversations[slot.conversation]):
            slot.conversation, slot.turn = self.queue.popleft(), 0
        slot.idle = False
        ids = runtime.prompt_ids(self.conversations[slot.conversation][slot.turn])
        if len(ids) >= runtime.n_ctx:
            raise DmforgeError(f"A prompt of {len(ids)} tokens does not fit the context of {runtime.n_ctx}.")
        keep = 0
        for a, b in zip(slot.kv, ids[:-1], strict=False):
            if a != b:
                break
            keep += 1
        self.lc.llama_kv_cache_seq_rm(self.ctx, slot.seq, keep, -1)
        self._load(slot.seq, ids[keep:], keep)
        slot.kv = list(ids)
        slot.chain = runtime.sampler(self.decode, self.grammar, ids)
        slot.out, slot.limit = [], min(self.decode.n_predict, runtime.n_ctx - len(ids) - 1)
        self._sample(slot, -1)

    def _load(self, seq: int, todo: list[int], start: int) -> None:
        """Decode a prompt's new tokens in chunks, halving the chunk while the cache refuses it."""
        begin, size = 0, CHUNK
        while begin < len(todo):
            piece = todo[begin : begin + size]
            last = begin + len(piece) == len(todo)
            entries = [(t, start + begin + i, seq, last and i == len(piece) - 1) for i, t in enumerate(piece)]
            if self._submit(entries):
                begin += len(piece)
            elif size > 1:
                size //= 2
            else:
                raise self._refused(1)
