"""The system message: composed from a scenario's header the same way in training, evaluation, the playtest
and the app (`dungeonMasterSystemMessage` in dmTools.ts ports this function).

The template and the default DM prompt are options (`data.system_template`, `data.system_prompt`), so they
live in the config schema; how a scenario's header fills them is the contract, and lives here.
"""

from __future__ import annotations

from typing import Any

from dmforge.config import DataConfig


def compose_system_prompt(config: DataConfig, header: Any, system: str | None) -> str:
    """The system message for a scenario: what training sees and what the app must send."""
    values = {
        "system": (system or config.system_prompt).strip(),
        "title": header.title,
        "world": header.world,
        "location": header.location,
        "party": header.party,
        "category": header.category,
        "tags": ", ".join(header.tags),
        "level": "" if header.level is None else str(header.level),
    }
    return config.system_template.format(**values).strip()
