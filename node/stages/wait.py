"""WaitAggregatedModels: a node outside the train set waits for the trainers' models."""

from __future__ import annotations

from node.stages import gossip
from node.stages.console import live_trainers, witness_budget
from node.workflow import NodeContext, Stage


class WaitAggregatedModelsStage:
    """Not in the train set: wait (bounded) for the trainers' models."""

    name = "WaitAggregatedModels"

    def __init__(self, round: int) -> None:
        self.round = round

    async def run(self, ctx: NodeContext) -> Stage | None:
        ctx.set_stage("waiting", self.round)
        await ctx.gossip.wait_for_models(
            self.round, lambda: live_trainers(ctx, self.round), witness_budget(ctx)
        )
        return gossip.GossipModelStage(self.round)
