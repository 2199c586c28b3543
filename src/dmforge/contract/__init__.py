"""The contract between training and the app: what the model is trained on is exactly what the app sends.

One room for everything both sides must agree on: the system message (system.py), the chat template's
rendering with its loss masks and prompt spans, the stop token and the chat format (chat.py), the context
window (window.py), and the tool-call syntax the model writes and the app's agent reads (from
tools/syntax.py, re-exported here as the contract's public face). Training, evaluation, export, the playtest
and deploy import these from here; dmTools.ts and dungeonMasterModel.ts are their TypeScript ports.
"""

from dmforge.contract.chat import ChatFormat, Sample, build_samples, detect_chat_format, template_messages
from dmforge.contract.system import compose_system_prompt
from dmforge.contract.window import context_window, turn_units, window_start
from dmforge.tools.syntax import BracketKind, ToolCall, parse, scan_brackets

__all__ = [
    "BracketKind",
    "ChatFormat",
    "Sample",
    "ToolCall",
    "build_samples",
    "compose_system_prompt",
    "context_window",
    "detect_chat_format",
    "parse",
    "scan_brackets",
    "template_messages",
    "turn_units",
    "window_start",
]
