"""Which exported file ships: one rule, decided in one place, used by evaluation, deploy and the summary.

The rule: the smallest file that keeps the F16 file's behaviour on the held-out turns, under the app's
own decoding: its intent match (did the DM ask for the right roll), call decision (did it call when it
should) and call validity each within `export.max_metric_drop` of F16's, and its mean KL divergence
from F16 on fixed prompts (measured by the export) at most `export.max_kl`. F16 is the reference and
ships only when nothing smaller keeps the model's behaviour.

All four, because one is easy to pass alone: while a model's intent match is near zero, a file that
loses a tenth of its call decisions stays "within 0.02" of it (a Q4_0 of SmolLM2-135M did, with a KL
of 0.4). Small bases are why it is measured rather than assumed: SmolLM2's 576-wide matrices cannot
take K-quant blocks, so its "Q4_K_M" is mostly a fallback mix, while a 1024-wide Qwen3 quantizes cleanly.

`export.ship` (or `--quant`) can name a type instead; then that file ships, whatever it measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dmforge.errors import DmforgeError
from dmforge.registry.runs import EvalReport, ExportReport

# The behaviour a smaller file must keep, as (metric, name in the reason).
GUARDED = (
    ("intent_match", "intent match"),
    ("call_decision_accuracy", "call decision"),
    ("call_validity", "call validity"),
)


@dataclass(frozen=True)
class ShipChoice:
    quant: str
    path: Path
    reason: str


def by_size(files: dict[str, str]) -> list[str]:
    """The exported types, smallest file first (the order the rule tries them in)."""
    return sorted(files, key=lambda q: Path(files[q]).stat().st_size if Path(files[q]).is_file() else 0)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def shortfalls(candidate: dict, reference: dict, kl: float | None, max_drop: float, max_kl: float) -> list[str]:
    """What a file loses against F16 beyond the tolerances, in words; empty when it keeps F16's behaviour.

    A metric F16 has nothing to measure on (None: no held-out turn called a tool) cannot be lost.
    """
    lost = []
    for key, name in GUARDED:
        reference_value, value = reference.get(key), candidate.get(key)
        if reference_value is None:
            continue
        if value is None or value < reference_value - max_drop - 1e-9:
            lost.append(f"{name} {_fmt(value)} against F16's {_fmt(reference_value)}")
    if kl is not None and kl > max_kl + 1e-12:
        lost.append(f"KL divergence from F16 {kl:.3f} above {max_kl:g}")
    return lost


def measured_choice(
    files: dict[str, str], metrics: dict[str, dict], kls: dict[str, float | None], max_drop: float, max_kl: float
) -> tuple[str, str]:
    """The smallest scored type that keeps F16's behaviour; (type, reason)."""
    reference = metrics.get("F16", {})
    for quant in by_size(files):
        if quant == "F16" and quant in metrics:
            return quant, "F16, the reference: no smaller file kept its call decision, intent match and validity"
        if quant in metrics and not shortfalls(metrics[quant], reference, kls.get(quant), max_drop, max_kl):
            kept = ", ".join(f"{name} {_fmt(metrics[quant].get(key))}" for key, name in GUARDED)
            return quant, (
                f"the smallest file within {max_drop:.2f} of F16 on every guarded metric ({kept}) "
                f"and within KL {max_kl:g} of it"
            )
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
