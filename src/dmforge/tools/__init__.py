"""Tool calls: the bracket syntax the DM writes and the registry of tools the app can run."""

from dmforge.tools.registry import Registry, RegistryError, check_call, load_registry, parse_dice
from dmforge.tools.syntax import (
    Bracket,
    BracketKind,
    CallSyntaxError,
    ToolCall,
    find_calls,
    parse,
    scan_brackets,
)

__all__ = [
    "Bracket",
    "BracketKind",
    "CallSyntaxError",
    "Registry",
    "RegistryError",
    "ToolCall",
    "check_call",
    "find_calls",
    "load_registry",
    "parse",
    "parse_dice",
    "scan_brackets",
]
