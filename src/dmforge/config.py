"""The one validated config schema: every option dmforge has, its default and its meaning.

A run reads a YAML or TOML file into `DmforgeConfig`, applies command-line overrides on top,
and saves the resolved result next to its outputs. Unknown keys are errors with a suggestion,
never silently ignored.
"""

from __future__ import annotations

import difflib
import string
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dmforge.errors import DmforgeError
from dmforge.scenarios.reader import DEFAULT_MAX_FILE_BYTES

DEFAULT_DM_PROMPT = (
    "You are the Dungeon Master of a Dungeons & Dragons 5e game. Narrate vividly in a few sentences, "
    "voice the world's characters, and hand the turn back to the players. When the rules call for dice, "
    "write a tool call in square brackets, such as [roll: perception] or [attack: longsword, target=goblin], "
    "and wait for its result before you narrate the outcome."
)

# What the system message is made of. The app must send exactly this text, so the placeholders are
# few, documented and validated: {system} is the scenario's SYSTEM section or `system_prompt`.
DEFAULT_SYSTEM_TEMPLATE = "{system}\n\nWorld: {world}\nLocation: {location}\nParty: {party}"
SYSTEM_TEMPLATE_FIELDS = frozenset({"system", "title", "world", "location", "party", "category", "tags", "level"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Reading scenarios and building the dataset."""

    scenarios: Path = Field(Path("data/scenarios"), description="Folder of Markdown scenarios, one per file.")
    out: Path = Field(Path("data/dataset"), description="Where `dmforge data build` writes the dataset.")
    max_file_bytes: int = Field(DEFAULT_MAX_FILE_BYTES, gt=0, description="Larger scenario files are rejected.")
    tool_registry: Path | None = Field(None, description="A tool registry YAML file; the built-in one when unset.")
    system_prompt: str = Field(DEFAULT_DM_PROMPT, min_length=1, description="Used when a scenario has no SYSTEM.")
    system_template: str = Field(
        DEFAULT_SYSTEM_TEMPLATE,
        description="How the system message is composed. Placeholders: "
        + ", ".join(f"{{{f}}}" for f in sorted(SYSTEM_TEMPLATE_FIELDS))
        + ".",
    )
    validation_fraction: float = Field(
        0.08,
        ge=0.0,
        le=0.5,
        description="Share of each category's scenarios held out for validation: on the shipped corpus 37 "
        "scenarios and 405 DM turns, enough that one turn moves a metric by a quarter of a point.",
    )
    seed: int = Field(1234, description="Seed for the split and for augmentation; same seed, same dataset.")
    validation_list: Path | None = Field(
        None,
        description="A text file of scenario ids (paths relative to the scenarios folder, one per line) to hold out "
        "instead of the seeded share of each category: keeps a held-out set fixed while the corpus grows.",
    )
    augment_copies: int = Field(
        0, ge=0, le=10, description="Extra renamed copies of each training scenario (party and places)."
    )
    arms_copies: int = Field(
        0,
        ge=0,
        le=10,
        description="Extra copies of each training scenario in which a weapon hits: each with its weapons swapped for "
        "others of their kind (a longbow for a shortbow), every hit's damage dice rewritten by the SRD table, and "
        "the party and place renamed. Off: at equal steps two copies screened decision 0.807, intent 0.379 against "
        "0.825, 0.406 without (docs/model-quality.md, round 12).",
    )
    dedupe: bool = Field(True, description="Drop conversations that are exact duplicates of another.")
    call_order: Literal["as_written", "first"] = Field(
        "first",
        description="Where a DM turn's tool calls stand in the training text: `first`, before the narration, so "
        "the model decides to call on the scene and the player's words rather than after its own prose (measured "
        "in docs/model-quality.md: call decision 0.64 against 0.47 as written), or `as_written`.",
    )

    @field_validator("system_template")
    @classmethod
    def _known_placeholders(cls, template: str) -> str:
        try:
            used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        except ValueError as exc:
            raise ValueError(f"is not a valid template ({exc}); write literal braces as {{{{ and }}}}") from exc
        unknown = used - SYSTEM_TEMPLATE_FIELDS
        if unknown:
            raise ValueError(
                f"uses unknown placeholder(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(SYSTEM_TEMPLATE_FIELDS))}"
            )
        if "system" not in used:
            raise ValueError("must contain {system}, or the DM instructions would be lost")
        return template


class AuditConfig(_Section):
    """`dmforge data audit`: the floors a corpus should reach, and the rulebook it follows."""

    skill_floor: int = Field(40, ge=0, description="Gold calls each skill should have (0: only count).")
    save_floor: int = Field(15, ge=0, description="Gold calls each saving throw should have.")
    tool_floor: int = Field(100, ge=0, description="Gold calls each tool should have.")
    ability_floor: int = Field(0, ge=0, description="Gold calls each plain ability check should have.")
    condition_floor: int = Field(0, ge=0, description="Gold calls each condition should have.")
    rulebook: Path | None = Field(
        Path("docs/dm-rules.md"),
        description="The DM rulebook whose table of verbs whose object decides the check (`| verb | checks | … |`) "
        "documents the cue conflicts that are expected.",
    )
    duplicate_similarity: float = Field(
        0.6,
        gt=0,
        le=1,
        description="Player lines or DM replies in different files whose word 3-grams overlap this much (Jaccard) "
        "are reported as near duplicates.",
    )


class ModelConfig(_Section):
    """Which base model to fine-tune and how conversations are rendered for it."""

    base: str = Field(
        "smollm2-135m",
        description="A name from `dmforge models list`, a local Hugging Face folder, a hub id or a .gguf file.",
    )
    chat_template: str | None = Field(
        None,
        description="Override the base's chat template: `chatml`, `gemma`, or Jinja text. Default: the base's "
        "own (or the catalog's, for base models without one).",
    )
    tool_results: Literal["auto", "tool_role", "user_role"] = Field(
        "auto",
        description="Where TOOLCALL results go: the template's tool role, or a user turn starting with "
        "`tool_result_prefix`. `auto` uses the tool role when the template renders one.",
    )
    tool_result_prefix: str = Field("Tool results:\n", description="Text before tool results in a user turn.")


# What `train.max_minutes: auto` gives a CPU: the budget the recipe sweep measured (docs/model-quality.md).
# 35, not 40: the whole default run must fit an hour, and the sweep's 213 steps (29 minutes on an AMX Xeon)
# already scored what 266 steps in 40 minutes did.
CPU_TRAINING_MINUTES = 35.0
# Above this, `train.method: full` refuses to start: full fine-tuning rates sit near 1e-4, LoRA's near 5e-3.
FULL_TUNING_MAX_RATE = 1e-3


class TrainConfig(_Section):
    """LoRA fine-tuning. The defaults train SmolLM2-135M on the sample corpus in minutes on a laptop CPU."""

    runs_root: Path = Field(Path("runs"), description="Where run folders are created.")
    run_dir: Path | None = Field(
        None,
        description="This run's folder. ./train.sh defaults to runs/<base> (or the run in runs/ that trained on the "
        "same scenarios and options); `dmforge finetune` to a fresh runs/<time>-<base>.",
    )
    epochs: float = Field(2.0, gt=0, description="Passes over the training set (ignored when max_steps is set).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    replay_ratio: float = Field(
        1.0,
        ge=0,
        le=20,
        description="Incremental runs (scenarios added or changed since the latest version): unchanged samples "
        "replayed per new one, so the update does not forget what the parent version learnt.",
    )
    max_minutes: float | Literal["auto"] | None = Field(
        "auto",
        description="A training-time budget: the run's steps are planned from the preflight's measured speed to "
        "fill it (`epochs` is then ignored, unless `max_steps` is set), and training stops at it in any case. "
        f"`auto`: {CPU_TRAINING_MINUTES:g} minutes on a CPU, where the full recipe would take hours (what the "
        "budget buys is measured in docs/model-quality.md), and no budget on a GPU, which trains `epochs` in "
        "minutes; null: never a budget.",
    )
    max_seq_len: int = Field(
        2048,
        ge=64,
        description="The app's context (n_ctx) and the longest training sequence, in tokens. A conversation longer "
        "than this is trained in the windows the app sends (the system message and the newest whole turns).",
    )
    batch_size: int = Field(1, ge=1, description="Sequences per micro-batch (grouped by length, so padding is rare).")
    grad_accum: int = Field(4, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(
        5e-3,
        gt=0,
        lt=1,
        description="Peak learning rate (cosine after warmup). LoRA on the top half of a sub-1B base, 4 samples a "
        "step, 213 steps: 5e-3 reached held-out intent 0.381 in llama.cpp where 3e-3 reached 0.356 and 1e-3 (at 40 "
        "minutes) 0.265 (docs/model-quality.md, rounds 4 and 5); at the default run's 363 steps 7e-3 fell behind 5e-3 "
        "(screened intent 0.402 against 0.406, decision 0.805 against 0.825; round 11). One sample a step at 2.5e-3 "
        "ended level with four at 5e-3 in equal minutes (round 9).",
    )
    warmup_steps: int = Field(5, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    method: Literal["lora", "full"] = Field(
        "lora",
        description="What trains on the top `lora_layers` layers: LoRA adapters (`lora`), or the layers' own "
        "weights (`full`: float32 master copies, computed in bf16 on a CPU; LLaMA-Factory's freeze tuning). A "
        "`full` run has no adapter apart from the base, so it deploys merged and cannot be continued by an "
        "incremental run. It needs a rate near 1e-4 (`learning_rate`). At 2e-4 and equal minutes it called worse "
        "than LoRA (held-out intent 0.358 against 0.406; docs/model-quality.md, round 10), so LoRA is the default.",
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the LoRA input; costs about 30% speed on a CPU, so off by default."
    )
    target_modules: str | list[str] = Field("all-linear", description="Modules that get LoRA adapters.")
    lora_layers: int | str | None = Field(
        "50%",
        description="Adapt only the top layers: a count (`15`) or a share of the base's layers (`50%`); null adapts "
        "all. The backward pass stops at the lowest adapted layer and the frozen ones run once per sample "
        "(`cache_frozen_layers`), so a CPU minute buys about twice the steps; at equal minutes the top half "
        "beat all layers on the held-out calls (docs/model-quality.md).",
    )
    cache_frozen_layers: bool = Field(
        True,
        description="With `lora_layers`, run the frozen layers below the adapted ones once per sample and keep their "
        "output, so every epoch after the first runs only the adapted layers (training/frozen.py). Not with "
        "NEFTune, which changes the frozen layers' input every step, nor across several processes.",
    )
    call_loss_weight: float = Field(
        3.0,
        ge=1.0,
        le=20.0,
        description="Loss weight of the tokens that decide and write a tool call (each call, and the end of a turn "
        "that makes none), against 1 for narration. Calls are a few percent of a DM's tokens.",
    )
    argument_loss_weight: float = Field(
        10.0,
        ge=1.0,
        le=50.0,
        description="Loss weight of a call's argument tokens, the skill, save, weapon or dice after the tool's name "
        "(` perception` in `[roll: perception]`): the one or two tokens that decide which roll is asked for. 10 "
        "against 3 at equal minutes raised the teacher-forced held-out intent from 0.17 to 0.21 "
        "(docs/model-quality.md).",
    )
    decision_loss_weight: float | None = Field(
        None,
        ge=1.0,
        le=50.0,
        description="Loss weight of each DM turn's first token, which (with calls written first) decides whether the "
        "turn calls at all: a `[` or the narration's first word. Unset: `call_loss_weight`. After a tool result "
        "the decision hangs on one word of the result (`hit` → `[damage]`). 20 at equal minutes: generated call "
        "decision 0.753 against 0.716, intent 0.249 against 0.265 (docs/model-quality.md, round 3).",
    )
    quiet_opening_loss_weight: float | None = Field(
        None,
        ge=1.0,
        le=50.0,
        description="Loss weight of the first token of a DM turn that answers a player's line without a call (the "
        "narration's first word, where a `[` would open a roll). Unset: the decision weight. A round-5 model "
        "asked for a roll on 37 of the 54 held-out turns after a player's line that the corpus narrates as "
        "certain, while after a tool result it misses calls instead, so only the player's side gets this weight. "
        "At 10 it traded 7 of those rolls for 12 missed ones (docs/model-quality.md, round 7), so it is unset.",
    )
    call_balance: Literal["none", "sqrt"] = Field(
        "none",
        description="`sqrt`: scale each call's argument weight by the inverse square root of how often its intent "
        "(`roll: perception`) occurs in training (mean kept), so rare skills pull as hard as frequent ones.",
    )
    loss_on: Literal["dm", "all"] = Field(
        "dm",
        description="Which tokens the loss trains: the DM's turns only (`dm`), or every token of the conversation "
        "(`all`: the players' lines and tool results too). Validation always scores the DM's turns.",
    )
    neftune_alpha: float = Field(
        0.0, ge=0.0, description="NEFTune: scale of uniform noise on the input embeddings while training (0 = off)."
    )
    select_by: Literal["calls", "loss"] = Field(
        "calls",
        description="Which adapter ships: the best held-out call score (decision, intent and exact call, "
        "teacher-forced; see training/validation.py) or the lowest validation loss.",
    )
    eval_every: int = Field(
        50,
        ge=1,
        description="Optimizer steps between validation passes (loss and the teacher-forced calls). A pass over the "
        "sample corpus's held-out turns takes about 22 s on 2 CPU cores, and a CPU budget counts it: at 25, eleven "
        "passes took 4 of a 35-minute budget's minutes, while the adapter that shipped was the last step's.",
    )
    save_every: int = Field(25, ge=1, description="Optimizer steps between checkpoints (resume points).")
    early_stopping_patience: int = Field(
        3, ge=0, description="Stop after this many evaluations without a better adapter (by `select_by`; 0 = never)."
    )
    seed: int = Field(1234)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"

    @field_validator("lora_layers")
    @classmethod
    def _layer_count_or_share(cls, value):
        if isinstance(value, str):
            share = value.strip().removesuffix("%")
            if not value.strip().endswith("%") or not share.isdigit() or not 1 <= int(share) <= 100:
                raise ValueError("must be a number of layers such as 15, a share such as `50%`, or null")
            return f"{int(share)}%"
        if value is not None and value < 1:
            raise ValueError("must be at least 1 layer, a share such as `50%`, or null")
        return value

    def adapted_layers(self, total: int) -> int:
        """How many of a base's `total` transformer layers get LoRA (the top ones)."""
        if self.lora_layers is None:
            return total
        if isinstance(self.lora_layers, str):
            return max(1, round(total * int(self.lora_layers[:-1]) / 100))
        return min(total, self.lora_layers)

    @model_validator(mode="after")
    def _full_tuning_rate(self):
        if self.method == "full" and self.learning_rate > FULL_TUNING_MAX_RATE:
            raise ValueError(
                f"`method: full` moves every weight of the trained layers, and a rate of {self.learning_rate:g} "
                f"(made for LoRA) would wreck them: set `learning_rate` to {FULL_TUNING_MAX_RATE:g} or less "
                "(1e-4 to 3e-4 is the usual range for full fine-tuning)"
            )
        return self

    @field_validator("max_minutes")
    @classmethod
    def _positive_budget(cls, value):
        if isinstance(value, float | int) and value <= 0:
            raise ValueError("must be a positive number of minutes, `auto`, or null")
        return value

    def budget_minutes(self, device: str) -> float | None:
        """The training budget on `device` (`cpu`, `cuda`, `mps`), `auto` resolved."""
        if self.max_minutes == "auto":
            return CPU_TRAINING_MINUTES if device == "cpu" else None
        return self.max_minutes

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    threads: int | None = Field(None, ge=1, description="CPU threads; default: one per physical core.")
    qlora: bool = Field(False, description="Load the base in 4-bit (CUDA with bitsandbytes only).")
    unsloth: Literal["auto", "on", "off"] = Field("auto", description="Use Unsloth on CUDA when it is installed.")
    preflight_steps: int = Field(2, ge=0, description="Timed steps before training to estimate time and memory.")
    memory_fraction: float = Field(0.9, gt=0, le=1, description="Refuse to start above this share of memory.")


class DecodeConfig(_Section):
    """How the app decodes a DM reply with Cactus. Written, every field explicit, into the app's config,
    and used by the evaluation and the playtest: Cactus 0.2.x fills omitted fields with platform defaults
    (on Android an unbounded `n_predict` and no repetition penalty), so nothing is left to them."""

    n_predict: int = Field(
        192, ge=16, description="Most tokens in one reply; the context window keeps this many free for the reply."
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 picks the most likely token (greedy).")
    top_k: int = Field(40, ge=0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    min_p: float = Field(0.05, ge=0.0, lt=1.0)
    penalty_repeat: float = Field(1.1, ge=1.0, le=2.0, description="Repetition penalty (1.0 = off).")
    penalty_last_n: int = Field(
        16,
        ge=0,
        description="Tokens the repetition penalty looks back over. Short, so that after a tool result the echoed "
        "call in the prompt is outside it and the follow-up call goes unpenalised; DRY and `max_calls` catch the "
        "longer repeats (docs/model-quality.md, Decoding).",
    )
    penalty_freq: float = Field(0.0, ge=0.0)
    penalty_present: float = Field(0.0, ge=0.0)
    dry_multiplier: float = Field(0.8, ge=0.0, description="DRY repetition sampler strength (0 = off).")
    dry_base: float = Field(1.75, ge=1.0)
    dry_allowed_length: int = Field(2, ge=1)
    dry_penalty_last_n: int = Field(-1, ge=-1)
    dry_sequence_breakers: list[str] = Field(
        ["\n", ":", "[", "]", ",", "="],
        description="Where DRY stops matching; the call syntax's characters keep repeated calls legal. Not `\"` or "
        "`*`: a loop of a quoted phrase must stay visible to DRY.",
    )
    seed: int = Field(42, description="Sampling seed; the same seed gives the same reply.")
    max_calls: int | None = Field(
        4,
        ge=1,
        description="Most tool calls in one reply: the grammar allows no `[` after this many, so a call line "
        "repeated on and on ends (with a short penalty window, a long call's first tokens leave the window before "
        "it repeats). The sample corpus never makes more than 4. Null: no bound. Needs `grammar`.",
    )
    grammar: Literal["full", "lazy", "off"] = Field(
        "full",
        description="Constrain every `[` to a well-formed call to a registered tool (a GBNF grammar made from the "
        "tool registry): `full` from the first token, `lazy` once a `[` appears, `off` not at all.",
    )


QuantName = Literal["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_0"]


class ExportConfig(_Section):
    """GGUF export, its verification, and which file ships."""

    quants: list[QuantName] = Field(
        [],
        description="Types to write besides those always made (F16, Q8_0, Q4_K_M) and every type the model's "
        "widths take without fallback.",
    )
    ship: Literal["measured"] | QuantName = Field(
        "measured",
        description="Which file ships: `measured` is the smallest whose held-out intent match, call decision and "
        "call validity are each within `max_metric_drop` of F16's and whose KL divergence from F16 is at most "
        "`max_kl` (export/ship.py); or name a type.",
    )
    max_metric_drop: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="How much intent match, call decision or call validity a smaller file may lose against F16.",
    )
    max_kl: float = Field(
        0.1,
        gt=0.0,
        description="The largest mean KL divergence from F16 (on the export's fixed prompts) a smaller file may "
        "have: SmolLM2-135M's Q8_0 measures about 0.006, its Q4_K_M 0.07, Q5_0 0.12, Q4_0 0.4.",
    )
    max_size_gb: float = Field(2.0, gt=0, description="Fail the export when a file is larger than this.")


class EvalConfig(_Section):
    """Evaluation of tool calls and narration on held-out DM turns, through llama.cpp as the app runs it."""

    max_turns: int | None = Field(
        None, ge=1, description="Held-out DM turns scored per column (taken across all stories); null for all."
    )
    diagnostics: bool = Field(
        False,
        description="Also score the diagnostic columns: every exported file (by default files are scored smallest "
        "first until one meets the shipping rule, since larger ones cannot change the choice), and the shipped file "
        "without the grammar and with plain greedy decoding. Each column costs minutes on a laptop CPU.",
    )
    screens: bool = Field(
        True,
        description="Score the base and F16, the references, on the calls each reply opens with (a screen: "
        "generation stops at the first line of narration, a third of a whole column's time), and only the file "
        "that ships on whole replies, compared with F16 cut the same way. F16 is scored whole after all when "
        "a file calls after its narration has begun (the cut would lose that call) or when F16 ships. "
        "false (or `diagnostics`): every column on whole replies.",
    )


GateMetric = Literal[
    "call_decision_accuracy", "intent_match", "exact_call_match", "call_validity", "call_f1", "loop_rate"
]


class DeployConfig(_Section):
    """Copying the model into the app."""

    app: Path | None = Field(None, description="The React Native app's root folder; no deploy when unset.")
    quant: QuantName | None = Field(
        None, description="Deploy this exported file instead of the one `export.ship` picks."
    )
    mode: Literal["merged", "adapter"] = Field(
        "merged",
        description="`merged`: the app gets one GGUF with the adapter merged in. `adapter`: the base's F16 GGUF once, "
        "and each version as a LoRA adapter GGUF of a few MB that Cactus applies at load (`lora_list`); the "
        "export checks base + adapter against the merged model and the evaluation scores it (export/adapter.py).",
    )
    gate: bool = Field(
        True,
        description="Deploy a new version only when it does not regress against the app's deployed one on the "
        "validation turns (registry/gate.py); otherwise the app keeps its model and the run ends with a report.",
    )
    gate_tolerance: float = Field(
        0.02, ge=0.0, le=1.0, description="How far a gated metric may fall below the deployed version's."
    )
    gate_metrics: list[GateMetric] = Field(
        ["call_decision_accuracy", "intent_match", "exact_call_match", "call_validity", "loop_rate"],
        description="The metrics the gate compares (the loop rate must not rise; the others must not fall).",
    )


class DmforgeConfig(_Section):
    data: DataConfig = DataConfig()
    audit: AuditConfig = AuditConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    eval: EvalConfig = EvalConfig()
    decode: DecodeConfig = DecodeConfig()
    deploy: DeployConfig = DeployConfig()

    @model_validator(mode="after")
    def _adapter_needs_lora(self):
        if self.deploy.mode == "adapter" and self.train.method == "full":
            raise ValueError(
                "`deploy.mode: adapter` ships a LoRA adapter, and `train.method: full` trains none: set "
                "`deploy.mode: merged`, or `train.method: lora`"
            )
        return self


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise DmforgeError(f"Cannot read the config file {path}: {exc.strerror}. Check the path.") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise DmforgeError(f"The config file {path} cannot be parsed: {exc}. Fix the syntax and run again.") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DmforgeError(f"The config file {path} must be a mapping of sections such as `data:`.")
    return data


def _explain(exc: ValidationError, source: str) -> DmforgeError:
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        if error["type"] == "extra_forbidden":
            section = DmforgeConfig
            for part in error["loc"][:-1]:
                section = section.model_fields[str(part)].annotation  # type: ignore[assignment]
            close = difflib.get_close_matches(str(error["loc"][-1]), list(section.model_fields), n=1)
            tip = f" Did you mean `{close[0]}`?" if close else f" Known: {', '.join(section.model_fields)}."
            lines.append(f"`{where}` is not an option.{tip}")
        else:
            message = error["msg"].removeprefix("Value error, ")  # a validator's own sentence reads alone
            lines.append(f"`{where}`: {message}." if where else f"{message}.")
    return DmforgeError(f"The config in {source} is invalid: " + " ".join(lines))


# The project's own config, read when no other file is named: `dmforge tools add` writes it, and
# `./train.sh` then trains with it without a `--config`.
PROJECT_CONFIG = Path("dmforge.yaml")


# Options an earlier dmforge wrote into configs and run folders, and what they are now (None: dropped,
# its effect now belongs to the new option). A saved run keeps loading after an upgrade.
RENAMED = {
    ("export", "max_intent_drop"): ("export", "max_metric_drop"),
    ("eval", "all_quants"): ("eval", "diagnostics"),
    ("eval", "screen_quants"): ("eval", "screens"),
    ("eval", "greedy_column"): None,
}


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    for (section, key), new in RENAMED.items():
        values = data.get(section)
        if not isinstance(values, dict) or key not in values:
            continue
        value = values.pop(key)
        if new is not None:
            data.setdefault(new[0], {}).setdefault(new[1], value)
    return data


def load_config(path: Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> DmforgeConfig:
    """The config from `path` (else ./dmforge.yaml if there is one, else the defaults) with command-line
    `overrides` applied, validated."""
    if path is None and PROJECT_CONFIG.is_file():
        path = PROJECT_CONFIG
    data = _migrate(_read_file(path)) if path else {}
    for section, values in (overrides or {}).items():
        data.setdefault(section, {})
        data[section].update({k: v for k, v in values.items() if v is not None})
    try:
        return DmforgeConfig.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, str(path) if path else "the command-line options") from exc
