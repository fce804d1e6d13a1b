"""WaitAggregatedModels: a node outside the train set waits for the trainers' models (the
wait GossipModel ends with too)."""

from __future__ import annotations

from node.stages import gossip
from node.stages.console import phase_remaining, round_view
from node.workflow import NodeContext, RoundStage, Stage
from transport.state import ClientStatus


class WaitAggregatedModelsStage(RoundStage):
    """Not in the train set: wait (bounded) for the trainers' models."""

    name = "WaitAggregatedModels"

    async def run(self, ctx: NodeContext) -> Stage | None:
        ctx.set_stage("waiting", self.round)
        await wait_for_trainers(ctx, self.round)
        return gossip.GossipModelStage(self.round)


async def wait_for_trainers(ctx: NodeContext, round: int) -> bool:
    """Wait (for most of what is left of RoundTrain) until the round's live trainers' models
    are in the gossip inbox; a trainer that drops stops being waited for."""
    return await ctx.gossip.wait_for_models(
        round, lambda: live_trainers(ctx, round), witness_budget(ctx)
    )


def live_trainers(ctx: NodeContext, round: int) -> set[str]:
    snap = ctx.snapshot
    view = round_view(snap, round)
    if view is None:
        return set()
    live = {c.id for c in snap.clients if c.status is ClientStatus.ACTIVE}
    return {t for t in view.train_set if t in live}


def witness_budget(ctx: NodeContext) -> float:
    """How long to wait for models: most of what is left of RoundTrain."""
    remaining = phase_remaining(ctx)
    return max(0.05, remaining - max(0.05, 0.05 * remaining))
