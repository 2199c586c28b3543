"""The context window: what the app sends the model once a session outgrows its context.

One rule, used wherever a prompt is built (training samples, evaluation, the playtest) and
mirrored line for line by the TypeScript that `dmforge deploy` writes into the app:

    the system message and the newest turn, then older whole turns while they fit the budget,
    where the budget is n_ctx less the tokens kept free for the reply.

A turn is never cut. A DM turn that made tool calls and the tool message that answers it are one
unit, dropped or kept together, so the model never sees a result without its call. The rule looks
only at roles and token counts, so the app can apply it with the counts its runtime gives it.
"""

from __future__ import annotations

from collections.abc import Sequence


def turn_units(roles: Sequence[str]) -> list[tuple[int, int]]:
    """`[start, end)` ranges of the messages after the system message; a tool message joins its DM turn."""
    units: list[tuple[int, int]] = []
    for i in range(1, len(roles)):
        if roles[i] == "tool" and units and roles[units[-1][1] - 1] == "assistant":
            units[-1] = (units[-1][0], i + 1)
        else:
            units.append((i, i + 1))
    return units


def window_start(roles: Sequence[str], costs: Sequence[int], budget: int) -> int:
    """Index of the oldest message the window keeps after the system message.

    `costs[i]` is what message i takes in the prompt, in tokens; `roles[0]` is the system message.
    The newest turn is always kept (without it there is nothing to answer); older turns are kept,
    newest first, while the total stays within `budget`.
    """
    if len(roles) != len(costs):
        raise ValueError("roles and costs must have one entry per message")
    used = costs[0]
    start = len(roles)
    for k, (begin, end) in enumerate(reversed(turn_units(roles))):
        cost = sum(costs[begin:end])
        if k and used + cost > budget:
            break
        used += cost
        start = begin
    return start


def context_window(messages: Sequence[dict], costs: Sequence[int], budget: int) -> list[dict]:
    """The messages the app sends: the system message, the newest turn, and older whole turns within `budget`."""
    start = window_start([m["role"] for m in messages], costs, budget)
    return [messages[0], *messages[start:]]
