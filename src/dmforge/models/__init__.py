"""Base models: the catalog of presets, resolving `--base`, hardware, and loading."""

from dmforge.models.catalog import CACTUS_ARCHITECTURES, Preset, load_catalog
from dmforge.models.resolve import ResolvedBase, cache_root, resolve_base

__all__ = ["CACTUS_ARCHITECTURES", "Preset", "ResolvedBase", "cache_root", "load_catalog", "resolve_base"]
