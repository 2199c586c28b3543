"""`dmforge tools add`: write proposed entries into the project's registry, keeping the user's YAML.

The registry is a file people edit by hand, with comments that explain its rules, so it is edited as a
document (ruamel.yaml's round trip) rather than re-dumped: comments, key order and layout survive, and
a new entry is written in the same compact style as the built-in ones. The result is validated
before it replaces the file, so a bad proposal never leaves a registry that no command can load.
"""

from __future__ import annotations

import io
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError as RoundTripError

from dmforge.errors import DmforgeError
from dmforge.files import write_text
from dmforge.tools.infer import Proposal
from dmforge.tools.registry import Registry, load_registry

PROJECT_REGISTRY = Path("tools.yaml")  # where the copy of the built-in registry goes, beside dmforge.yaml


def _round_trip() -> YAML:
    document = YAML(typ="rt")
    document.preserve_quotes = True
    document.width = 120
    document.indent(mapping=2, sequence=4, offset=2)  # the built-in file's layout: `    positional:\n      - ...`
    return document


def _flow(items: list | dict) -> CommentedSeq | CommentedMap:
    node = CommentedSeq(items) if isinstance(items, list) else CommentedMap(items)
    node.fa.set_flow_style()
    return node


def _entry(proposal: Proposal) -> CommentedMap:
    spec = proposal.spec
    entry = CommentedMap(summary=spec.summary)
    if spec.positional:
        slots = CommentedSeq()
        for slot in spec.positional:
            fields = {"name": slot.name, "kinds": _flow(list(slot.kinds))}
            if not slot.required:
                fields["required"] = False
            slots.append(_flow(fields))
        entry["positional"] = slots
    if spec.flags:
        entry["flags"] = _flow(list(spec.flags))
    if spec.keywords:
        entry["keywords"] = CommentedMap(
            {key: _flow(kw.model_dump(exclude_defaults=True) | {"kind": kw.kind}) for key, kw in spec.keywords.items()}
        )
    return entry


def registry_text(path: Path) -> str:
    """The registry file's text; the built-in registry's when `path` does not exist yet (it is copied)."""
    if path.exists():
        try:
            return path.read_text("utf-8")
        except OSError as exc:
            raise DmforgeError(f"Cannot read the tool registry {path}: {exc.strerror}.", exit_code=2) from exc
    return resources.files("dmforge.tools").joinpath("registry.yaml").read_text("utf-8")


def add_entries(path: Path, proposals: list[Proposal]) -> list[str]:
    """Write `proposals` into the registry at `path` (made from the built-in one if missing); the names added."""
    document = _round_trip()
    try:
        data = document.load(registry_text(path))
    except RoundTripError as exc:
        raise DmforgeError(f"The tool registry {path} is not valid YAML: {exc}. Fix it, then run again.") from exc
    if not isinstance(data, CommentedMap) or not isinstance(data.get("tools"), dict):
        raise DmforgeError(f"The tool registry {path} has no `tools:` mapping. Fix it, or delete it to start again.")
    added = []
    for proposal in proposals:
        if proposal.name in data["tools"]:
            continue
        for name, words in proposal.vocabularies.items():
            data["vocabularies"].setdefault(name, _flow(words))
        data["tools"][proposal.name] = _entry(proposal)
        # A blank line before each entry, as between the built-in ones.
        data["tools"].yaml_set_comment_before_after_key(proposal.name, before="\n", indent=2)
        added.append(proposal.name)
    out = io.StringIO()
    document.dump(data, out)
    text = out.getvalue().replace("\n# \n", "\n\n")
    try:
        Registry.model_validate(yaml.safe_load(text))
    except (ValidationError, yaml.YAMLError) as exc:  # inference made an entry the registry refuses: a dmforge bug
        raise DmforgeError(
            f"The extended registry would be invalid ({exc}); {path} was not changed. Add the entry by hand."
        ) from exc
    write_text(path, text)
    load_registry.cache_clear()  # the file changed under the cached copy
    return added


def point_config_at(config_path: Path, registry_path: Path) -> bool:
    """Set `data.tool_registry` in the YAML config (created if missing); False when it already was set."""
    document = _round_trip()
    if config_path.suffix == ".toml":
        raise DmforgeError(
            f'{config_path} is TOML, which dmforge does not edit. Add `tool_registry = "{registry_path}"` under '
            "`[data]` yourself.",
            exit_code=2,
        )
    try:
        data = document.load(config_path.read_text("utf-8")) if config_path.exists() else None
    except (OSError, RoundTripError) as exc:
        raise DmforgeError(f"Cannot read the config {config_path} ({exc}); it was not changed.", exit_code=2) from exc
    data = data if isinstance(data, CommentedMap) else CommentedMap()
    section = data.setdefault("data", CommentedMap())
    if section.get("tool_registry") == str(registry_path):
        return False
    section["tool_registry"] = str(registry_path)
    out = io.StringIO()
    document.dump(data, out)
    write_text(config_path, out.getvalue())
    return True
