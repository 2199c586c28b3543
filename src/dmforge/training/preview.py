"""`dmforge data preview`: what the model will actually be trained on, with the trained spans lit up."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from dmforge.config import DmforgeConfig
from dmforge.dataset.conversation import to_conversation
from dmforge.errors import DmforgeError
from dmforge.models.load import load_tokenizer
from dmforge.models.resolve import resolve_base
from dmforge.scenarios import check_paths
from dmforge.tools.registry import Registry
from dmforge.training.chat import IGNORE, build_samples, detect_chat_format


def preview(config: DmforgeConfig, registry: Registry, console: Console, count: int) -> None:
    report = check_paths([config.data.scenarios], registry, config.data.max_file_bytes)
    if report.errors:
        raise DmforgeError(f"The scenarios have {report.errors} error(s); run `dmforge data check` first.")
    with console.status(f"loading the tokenizer of {escape(config.model.base)}…"):
        tokenizer = load_tokenizer(resolve_base(config.model.base).path, config.model.chat_template)
    fmt = detect_chat_format(tokenizer, config.model.tool_results, config.model.tool_result_prefix)
    conversations = [to_conversation(s, config.data) for s in report.scenarios[:count]]
    samples = build_samples(tokenizer, fmt, conversations, config.train.max_seq_len)
    for sample in samples[:count]:
        text = Text()
        run: list[int] = []
        trained = None
        for token, label in zip(sample.input_ids, sample.labels, strict=True):
            is_trained = label != IGNORE
            if trained is not None and is_trained != trained:
                text.append(tokenizer.decode(run), style="bold black on green" if trained else "dim")
                run = []
            run.append(token)
            trained = is_trained
        if run:
            text.append(tokenizer.decode(run), style="bold black on green" if trained else "dim")
        title = (
            f"{sample.conversation}: {len(sample.input_ids)} tokens, {sample.trained_tokens} trained "
            f"(highlighted), {len(sample.dm_spans)} DM turns"
        )
        console.print(Panel(text, title=title, title_align="left"))
    console.print(
        f"Template: tool results in the {'tool' if fmt.tool_role else 'user'} role, turns end with "
        f"{fmt.end_of_turn!r}. Highlighted text is what the model learns to write; the rest is context."
    )
