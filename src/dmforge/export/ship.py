"""Which exported file ships: one rule, decided in one place, used by evaluation, deploy and the summary.

The rule: the smallest file whose intent match on the held-out turns (did the DM ask for the right
roll, under the app's own decoding) is within `export.max_intent_drop` of the F16 file's. F16 is
the reference and ships only when nothing smaller keeps the model's behaviour. Small bases are why
it is measured rather than assumed: SmolLM2's 576-wide matrices cannot take K-quant blocks, so its
"Q4_K_M" is mostly a fallback mix, while a 1024-wide Qwen3 quantizes cleanly.

`export.ship` (or `--quant`) can name a type instead; then that file ships, whatever it measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dmforge.errors import DmforgeError
from dmforge.registry.runs import EvalReport, ExportReport


@dataclass(frozen=True)
class ShipChoice:
    quant: str
    path: Path
    reason: str


def by_size(files: dict[str, str]) -> list[str]:
    """The exported types, smallest file first (the order the rule tries them in)."""
    return sorted(files, key=lambda q: Path(files[q]).stat().st_size if Path(files[q]).is_file() else 0)


def passes(intent: float | None, reference: float | None, max_drop: float) -> bool:
    """A candidate keeps the model's behaviour: its intent match is within `max_drop` of the reference's."""
    if reference is None:  # nothing to lose: no held-out turn called a tool
        return True
    return intent is not None and intent >= reference - max_drop - 1e-9


def measured_choice(files: dict[str, str], intents: dict[str, float | None], max_drop: float) -> tuple[str, str]:
    """The smallest type whose measured intent match passes against F16's; (type, reason)."""
    reference = intents.get("F16")
    for quant in by_size(files):
        if quant in intents and passes(intents[quant], reference, max_drop):
            shown = "–" if intents[quant] is None else f"{intents[quant]:.3f}"
            ref = "–" if reference is None else f"{reference:.3f}"
            return quant, (f"the smallest file whose intent match ({shown}) is within {max_drop:.2f} of F16's ({ref})")
    raise DmforgeError("No exported file was evaluated, so none can be chosen to ship. Run `dmforge eval` first.")


ADAPTER_COLUMN = "base + adapter"  # the evaluation column of `deploy.mode: adapter` (export/adapter.py)


def shipped_column(evaluation: EvalReport | None, config) -> str | None:
    """The evaluation column that measured what the app will run: the shipped file's, or base + adapter."""
    if evaluation is None:
        return None
    if config.deploy.mode == "adapter" and ADAPTER_COLUMN in evaluation.models:
        return ADAPTER_COLUMN
    return evaluation.ship.quant


def forced_quant(config, override: str | None = None) -> str | None:
    """The type the user named (--quant, `deploy.quant`, `export.ship`), or None for the measured choice."""
    named = override or config.deploy.quant or (None if config.export.ship == "measured" else config.export.ship)
    return named.upper() if named else None


def shipped(export: ExportReport, evaluation: EvalReport | None, override: str | None = None) -> ShipChoice:
    """The file that ships, from the export report and (for the measured rule) the evaluation report.

    Evaluation records its choice with this rule; deploy, the playtest and the summary read it back
    through this same function, so they can never disagree on which file it is.
    """
    files = export.files
    if override:
        quant = override.upper()
        if quant not in files:
            raise DmforgeError(
                f"The run has no {quant} GGUF (it has {', '.join(by_size(files))}). Export it with "
                f"`dmforge export RUN --quant {quant}`, or choose one of those.",
                exit_code=2,
            )
        return ShipChoice(quant, Path(files[quant]), f"{quant} was asked for")
    choice = evaluation.ship if evaluation else None
    if choice and choice.quant in files:
        return ShipChoice(choice.quant, Path(files[choice.quant]), choice.reason)
    raise DmforgeError(
        "Which file ships is decided by measurement (`dmforge eval` scores every exported file), and this run "
        "has not been evaluated yet. Run `dmforge eval RUN`, or name the file with --quant (for example Q8_0).",
        exit_code=2,
    )
