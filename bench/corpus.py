"""The sample corpus as the benches read it: built into a throwaway folder, one split's conversations."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path


def corpus_conversations(config, split: str) -> list[dict]:
    """The conversations of `split` ("train" or "validation"), as `dmforge data build` writes them."""
    from dmforge.dataset import build_dataset
    from dmforge.tools.registry import load_registry

    with tempfile.TemporaryDirectory() as tmp:
        _, dataset = build_dataset(config.data, load_registry(config.data.tool_registry), out=Path(tmp) / "dataset")
        return [json.loads(line) for line in (dataset / f"{split}.jsonl").read_text().splitlines()]
