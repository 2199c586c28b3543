"""One column of the evaluation: one GGUF file, decoded one way, scored on every held-out turn.

A column is a model file (the base's own F16 GGUF, the fine-tuned F16 export or one of its
quantizations) and a decoding (the app's settings, with or without the tool-call grammar, or plain
greedy). Its result is kept in a JSON file keyed by exactly what went into it (turns, prompts'
context, decoding, grammar), and read back instead of recomputed while that key holds and the
file is not newer than the result.

An `opening_only` column (a "screen") generates each reply only up to its first line of narration and
scores the calls it opens with: for a model that writes its calls first, the call decision, intent,
exact match and validity of the whole reply, in about a third of a column's time (the prompts are still
read). It has no loop rate or narration; `opening_metrics` gives a whole column's figures on the same
terms, to compare with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from dmforge.config import DecodeConfig
from dmforge.contract.chat import Sample
from dmforge.evaluation.batch import batch_replies
from dmforge.evaluation.metrics import TurnVerdict, aggregate, opening_calls, score_turn
from dmforge.evaluation.runtime import Runtime, perplexity
from dmforge.evaluation.turns import EvalTurn, by_conversation
from dmforge.files import newer_than, read_json_or_none, write_json
from dmforge.models.resolve import sha256_file
from dmforge.tools.registry import Registry

# Raised whenever the metrics computed from a column's replies change, so a cached column is scored again.
SCORING_VERSION = 2
PERPLEXITY_TOKENS = 8000  # tokens of held-out conversations the perplexity is measured on


@dataclass
class Column:
    name: str  # "base", "F16", "Q8_0", "Q8_0 greedy", ...
    model: str  # "base" or the quantization
    path: Path
    decode: DecodeConfig
    grammar: str | None  # the tool-call grammar, when the decoding uses it
    adapter: Path | None = None  # a LoRA adapter GGUF applied on top of `path` (adapter updates)
    opening_only: bool = False  # a screen: only the calls each reply opens with

    @property
    def label(self) -> str:
        """How the column decodes, in words, for the reports."""
        d = self.decode
        if d.temperature == 0 and d.penalty_repeat == 1.0 and d.dry_multiplier == 0 and not self.uses_grammar:
            return "greedy"
        parts = ["greedy" if d.temperature == 0 else f"temperature {d.temperature:g}"]
        if d.penalty_repeat != 1.0:
            parts.append(f"repeat penalty {d.penalty_repeat:g} over {d.penalty_last_n}")
        if d.dry_multiplier:
            parts.append(f"DRY {d.dry_multiplier:g}")
        parts.append(f"{d.grammar} grammar" if self.uses_grammar else "no grammar")
        if self.uses_grammar and d.max_calls is not None:
            parts.append(f"at most {d.max_calls} calls")
        if self.opening_only:
            parts.append("the calls each reply opens with")
        return ", ".join(parts)

    @property
    def uses_grammar(self) -> bool:
        return bool(self.grammar) and self.decode.grammar != "off"

    def key(self, turns: list[EvalTurn], source: str, n_ctx: int) -> dict:
        grammar = hashlib.sha256(self.grammar.encode()).hexdigest()[:16] if self.uses_grammar else None
        return {
            "scoring": SCORING_VERSION,
            "source": source,
            "n_ctx": n_ctx,
            "turns": [[t.conversation, t.index] for t in turns],
            "decode": self.decode.model_dump(),
            "grammar": grammar,
            "file": self.path.name,
            # The adapter's bytes, not its name: a re-exported adapter keeps its name and must be scored again.
            "adapter": sha256_file(self.adapter)[:16] if self.adapter else None,
            "opening_only": self.opening_only,
        }


def perplexity_samples(samples: list[Sample]) -> list[Sample]:
    """The first held-out samples up to PERPLEXITY_TOKENS: the same ones for every model."""
    chosen, total = [], 0
    for sample in samples:
        if chosen and total + len(sample.input_ids) > PERPLEXITY_TOKENS:
            break
        chosen.append(sample)
        total += len(sample.input_ids)
    return chosen


def cached(path: Path, key: dict, source_file: Path) -> dict | None:
    if not newer_than(path, source_file):
        return None
    column = read_json_or_none(path)  # a torn cache is scored again
    return column if column is not None and column.get("key") == key else None


def _verdict(turn: EvalTurn, text: str, registry: Registry, hit_limit: bool) -> TurnVerdict:
    return score_turn(
        text,
        turn.gold,
        registry,
        tool_results=turn.tool_results,
        party=turn.party,
        location=turn.location,
        hit_limit=hit_limit,
    )


def score_column(
    column: Column,
    turns: list[EvalTurn],
    registry: Registry,
    n_ctx: int,
    samples: list[Sample],
    on_reply=None,
) -> dict:
    """Generate every turn's reply with the column's file and decoding, score it, and measure perplexity."""
    runtime = Runtime(column.path, n_ctx, column.adapter)
    groups = by_conversation(turns)
    prompts = [[t.prompt for t in group] for group in groups]
    replies = batch_replies(
        runtime, prompts, column.decode, column.grammar, on_reply=on_reply, opening_only=column.opening_only
    )
    verdicts, details, categories = [], [], []
    for group, answers in zip(groups, replies, strict=True):
        for turn, reply in zip(group, answers, strict=True):
            text = opening_calls(reply.text) if column.opening_only else reply.text
            verdict = _verdict(turn, text, registry, reply.hit_limit)
            verdicts.append(verdict)
            categories.append(turn.category)
            details.append(
                {
                    "column": column.name,
                    "conversation": turn.conversation,
                    "turn": turn.index,
                    "gold": turn.gold,
                    "prediction": text,
                    "tokens": reply.tokens,
                    "stop": reply.stop,
                    "verdict": verdict.to_json(),
                }
            )
    metrics = aggregate(verdicts, categories)
    if column.opening_only:  # narration was never generated: these would describe a cut reply
        for key in (
            "loop_rate",
            "continuation_consistency",
            "in_character_rate",
            "mention_recall",
            "median_length_ratio",
        ):
            metrics[key] = None
    # A screen still reads the gold text's likelihood when asked (the base's and F16's, the plainest
    # proof that training moved the model): it is the file's, not the cut replies'.
    metrics["perplexity"] = perplexity(runtime, samples) if samples else None
    metrics["mean_reply_tokens"] = sum(d["tokens"] for d in details) / max(1, len(details))
    return {"metrics": metrics, "details": details, "decoding": column.label, "file": str(column.path)}


def opening_metrics(result: dict, turns: list[EvalTurn], registry: Registry) -> tuple[dict, bool]:
    """A whole column's call metrics on the calls its replies open with, and whether that cut lost nothing.

    The cut is faithful when no reply has a call, or any other bracket, after its first line of narration:
    then a screen's figures and this column's figures measure the same thing.
    """
    by_key = {(t.conversation, t.index): t for t in turns}
    verdicts, categories, faithful = [], [], True
    for detail in result["details"]:
        turn = by_key[(detail["conversation"], detail["turn"])]
        verdict = _verdict(turn, opening_calls(detail["prediction"]), registry, False)
        whole = detail["verdict"]
        faithful &= verdict.predicted_calls == whole["predicted_calls"] and verdict.brackets == whole["brackets"]
        verdicts.append(verdict)
        categories.append(turn.category)
    return aggregate(verdicts, categories), faithful


def save_column(path: Path, key: dict, result: dict) -> dict:
    result = {"key": key, **result}
    write_json(path, result)
    return result
