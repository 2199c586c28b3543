"""Reading and validating Markdown scenarios (the format is in shared/spec/scenario-format.md)."""

from dmforge.scenarios.check import CheckReport, ScenarioFile, check_paths, collect_files
from dmforge.scenarios.diagnostics import RULES, Diagnostic, Severity
from dmforge.scenarios.model import Header, PartyMember, Scenario, ToolResult, Turn, TurnKind
from dmforge.scenarios.parser import parse_scenario

__all__ = [
    "RULES",
    "CheckReport",
    "Diagnostic",
    "Header",
    "PartyMember",
    "Scenario",
    "ScenarioFile",
    "Severity",
    "ToolResult",
    "Turn",
    "TurnKind",
    "check_paths",
    "collect_files",
    "parse_scenario",
]
