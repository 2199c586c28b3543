"""The app contract, moved into one package, renders exactly what it rendered before the move.

Frozen copies of three corpus scenarios (tests/fixtures/contract) are rendered the way training and the
evaluation render them: the system message, the chat template's text and tokens, the loss masks and
their prompt spans, the call spans, the context windows at two sizes, and the evaluation's prompts.
The digests were taken from the code before `dmforge.contract` existed; a change to any of these is a
change to what the app must send, and has to be made on purpose (rerun this file to print new digests).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from dmforge.config import DataConfig
from dmforge.dataset import to_conversation
from dmforge.scenarios import check_paths

FIXTURES = Path(__file__).parent / "fixtures" / "contract"
DIGESTS = {
    2048: "aabb2df3bc0e810008d6d99c243b018b84a7f8a2bece43eb27034d8879ab14c1",
    512: "52c2b63f672ea8af2739ae799861c8e800cd92c66a3a7b7e90eedf268d7a8ffa",
}


def rendered(tokenizer, max_seq_len: int) -> str:
    from dmforge.contract.chat import build_samples, detect_chat_format
    from dmforge.evaluation.turns import eval_turns

    conversations = [to_conversation(s, DataConfig()) for s in check_paths([FIXTURES]).scenarios]
    fmt = detect_chat_format(tokenizer, "auto", "Tool results:\n")
    samples = build_samples(tokenizer, fmt, conversations, max_seq_len, 96)
    turns = eval_turns(conversations, fmt, tokenizer, max_seq_len, 96)
    payload = {
        "system": [c["messages"][0]["content"] for c in conversations],
        "format": [fmt.tool_role, fmt.end_of_turn, fmt.prefix_stable, fmt.framing, fmt.reply_header],
        "samples": [
            [
                s.input_ids,
                s.labels,
                s.dm_spans,
                s.prompt_lengths,
                [list(vars(c).values()) for c in s.calls],
                s.quiet_turns,
                s.windowed,
            ]
            for s in samples
        ],
        "turns": [[t.conversation, t.index, t.prompt, t.gold, t.tool_results] for t in turns],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("max_seq_len", sorted(DIGESTS))
def test_the_contract_renders_what_it_rendered_before(smollm2_tokenizer, max_seq_len):
    assert rendered(smollm2_tokenizer, max_seq_len) == DIGESTS[max_seq_len]


if __name__ == "__main__":
    from dmforge.models import resolve_base
    from dmforge.models.load import load_tokenizer

    tokenizer = load_tokenizer(resolve_base("smollm2-135m").path)
    print({n: rendered(tokenizer, n) for n in sorted(DIGESTS)})


def test_evaluation_export_and_deploy_do_not_depend_on_training():
    """They read the app contract from dmforge.contract; training is one of its users, not its owner."""
    import ast

    package = Path(__file__).resolve().parents[1] / "src" / "dmforge"
    offenders = []
    for room in ("evaluation", "export", "deploy"):
        for path in sorted((package / room).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
                offenders += [f"{path.relative_to(package)}: {n}" for n in names if n.startswith("dmforge.training")]
    assert not offenders, offenders
