"""What several stages read of the console's broadcast, and how they send it requests."""

from __future__ import annotations

import asyncio
import logging

from node.privacy import round_cost
from node.workflow import NodeContext
from transport import messages as m
from transport.state import RoundView, RunSnapshot, RunState

log = logging.getLogger(__name__)

WAIT_SLICE = 30.0  # the longest single wait; idle phases are waited for slice by slice
ACTIVE_ROUND = (RunState.ROUND_TRAIN, RunState.ROUND_WITNESS)


def round_view(snap: RunSnapshot, round: int) -> RoundView | None:
    for view in (snap.current, snap.previous):
        if view is not None and view.round == round:
            return view
    return None


def phase_remaining(ctx: NodeContext, default: float = WAIT_SLICE) -> float:
    latest = ctx.link.latest
    deadline = None if latest is None else latest.local_deadline()
    if deadline is None:
        return default
    return max(0.0, deadline - asyncio.get_running_loop().time())


def training_refusal(ctx: NodeContext) -> str:
    """Why this node must not train another round ("" when it may): its privacy budget."""
    if ctx.privacy is None or ctx.shard is None:
        return ""
    q, steps = round_cost(ctx.shard.samples, ctx.spec.learning)
    return "" if ctx.privacy.allows(q, steps) else ctx.privacy.refusal(q, steps)


async def send(ctx: NodeContext, msg: m.Message, what: str) -> bool:
    """Send a request; log (never raise) a rejection. Returns True when acked."""
    try:
        reply = await ctx.link.request(msg)
    except (TimeoutError, RuntimeError) as exc:
        log.warning("%s not delivered: %s", what, exc)
        return False
    if isinstance(reply, m.Error):
        log.warning("%s rejected (%s): %s", what, reply.code, reply.reason)
        return False
    return True
