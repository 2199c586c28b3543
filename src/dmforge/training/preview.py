"""`dmforge data preview`: what the model will actually be trained on, with the trained spans lit up.

`rendered_samples` is shared with the notebook (through dmforge.api), which highlights the same pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from dmforge.config import DmforgeConfig
from dmforge.contract.chat import IGNORE, ChatFormat, Sample, build_samples, detect_chat_format
from dmforge.dataset.conversation import to_conversation
from dmforge.errors import DmforgeError
from dmforge.models.load import load_tokenizer
from dmforge.models.resolve import resolve_base
from dmforge.scenarios import check_paths
from dmforge.tools.registry import Registry


@dataclass
class RenderedSample:
    """One training sample as the model sees it: text pieces, each trained (the DM's words) or context."""

    conversation: str
    pieces: list[tuple[str, bool]]
    tokens: int
    trained_tokens: int
    dm_turns: int


def _pieces(tokenizer, sample: Sample) -> list[tuple[str, bool]]:
    """The sample's text cut where training switches on or off, each piece decoded as one run of tokens."""
    pieces: list[tuple[str, bool]] = []
    run: list[int] = []
    trained = None
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        if trained is not None and (label != IGNORE) != trained:
            pieces.append((tokenizer.decode(run), trained))
            run = []
        run.append(token)
        trained = label != IGNORE
    if run:
        pieces.append((tokenizer.decode(run), bool(trained)))
    return pieces


def rendered_samples(config: DmforgeConfig, registry: Registry, count: int) -> tuple[list[RenderedSample], ChatFormat]:
    """The first `count` training samples through the base's chat template, and the chat format found."""
    report = check_paths([config.data.scenarios], registry, config.data.max_file_bytes)
    if report.errors:
        raise DmforgeError(f"The scenarios have {report.errors} error(s); run `dmforge data check` first.")
    tokenizer = load_tokenizer(resolve_base(config.model.base).path, config.model.chat_template)
    fmt = detect_chat_format(tokenizer, config.model.tool_results, config.model.tool_result_prefix)
    conversations = [to_conversation(s, config.data) for s in report.scenarios[:count]]
    samples = build_samples(tokenizer, fmt, conversations, config.train.max_seq_len)[:count]
    rendered = [
        RenderedSample(s.conversation, _pieces(tokenizer, s), len(s.input_ids), s.trained_tokens, len(s.dm_spans))
        for s in samples
    ]
    return rendered, fmt


def preview(config: DmforgeConfig, registry: Registry, console: Console, count: int) -> None:
    with console.status(f"loading the tokenizer of {escape(config.model.base)}…"):
        samples, fmt = rendered_samples(config, registry, count)
    for sample in samples:
        text = Text()
        for piece, trained in sample.pieces:
            text.append(piece, style="bold black on green" if trained else "dim")
        title = (
            f"{sample.conversation}: {sample.tokens} tokens, {sample.trained_tokens} trained "
            f"(highlighted), {sample.dm_turns} DM turns"
        )
        console.print(Panel(text, title=title, title_align="left"))
    console.print(
        f"Template: tool results in the {'tool' if fmt.tool_role else 'user'} role, turns end with "
        f"{fmt.end_of_turn!r}. Highlighted text is what the model learns to write; the rest is context."
    )
