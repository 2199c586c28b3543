"""The model catalog: named base-model presets, read from `catalog.yaml`."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

# Architectures the app's runtime (cactus-react-native 0.2.x, llama.cpp of May 2025) loads.
CACTUS_ARCHITECTURES = frozenset({"llama", "qwen2", "qwen3", "gemma3", "gemma3_text", "phi3"})


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    description: str
    source: Literal["pypi", "hub"]
    architecture: str
    parameters: str
    license: str
    template: str  # "embedded" or the name of a template dmforge supplies
    cactus: bool
    repo: str | None = None  # hub
    package: str | None = None  # pypi
    file: str | None = None  # pypi: the GGUF inside the package (or the name `assemble` writes)
    assemble: str | None = None  # pypi: a module whose `assemble(path)` joins a chunked GGUF
    parameters_m: float  # parameters in millions: training cost scales with them
    widths: list[int]  # hidden and feed-forward widths
    quant: str  # the type that suits the widths
    quality: str  # what is known of how well it learns the DM's job
    # Held-out intent match of its default recipe on the shipped corpus, measured in this project (through
    # llama.cpp, the file that ships); None where it was never measured. The only ground for base advice.
    measured_intent: float | None = None

    @property
    def takes_k_quants(self) -> bool:
        """K-quant blocks are 256 wide: other widths fall back to other types in most matrices."""
        return all(w % 256 == 0 for w in self.widths)

    @property
    def origin(self) -> str:
        return f"hub:{self.repo}" if self.source == "hub" else f"pypi:{self.package}"


class _Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Literal[1]
    models: dict[str, Preset]


@cache
def load_catalog() -> dict[str, Preset]:
    text = resources.files("dmforge.models").joinpath("catalog.yaml").read_text("utf-8")
    catalog = _Catalog.model_validate(yaml.safe_load(text))
    return {name: preset.model_copy(update={"name": name}) for name, preset in catalog.models.items()}
