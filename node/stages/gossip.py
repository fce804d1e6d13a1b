"""GossipModel: push this node's update and collect the others'; how the gossip service
judges pushes by what the node follows of the run."""

from __future__ import annotations

import logging

from node.gossip import GossipService
from node.stages import finished, wait
from node.stages.console import phase_remaining, round_view
from node.workflow import NodeContext, RoundStage, Stage
from transport.state import ClientStatus

log = logging.getLogger(__name__)


class GossipModelStage(RoundStage):
    """Push our trained model to every live peer that lacks it; collect the others'."""

    name = "GossipModel"

    async def run(self, ctx: NodeContext) -> Stage | None:
        ctx.set_stage("gossiping", self.round)
        work = ctx.round_work(self.round)
        if work.update is not None:
            outcome = await ctx.gossip.send_update(
                self.round, work.update, timeout=max(1.0, phase_remaining(ctx))
            )
            failed = {p: r for p, r in outcome.items() if r != "ok"}
            if failed:
                log.warning("round %d: push failed for %s", self.round, failed)
        await wait.wait_for_trainers(ctx, self.round)
        return finished.RoundFinishedStage(self.round)


def expects_push(ctx: NodeContext, round: int, trainer: str) -> str | None:
    """Why a model push for (round, trainer) is not welcome now, or None when it is."""
    latest = ctx.link.latest
    if latest is None:
        return "not following the run yet"
    snap = latest.snapshot
    member = snap.client(trainer)
    if member is None or member.status is not ClientStatus.ACTIVE:
        return f"{trainer} is not a live member of this epoch"
    view = round_view(snap, round)
    if view is not None:
        return None if trainer in view.train_set else f"{trainer} is not a trainer of round {round}"
    current = snap.current.round if snap.current is not None else snap.round
    if round == current + 1:
        return None  # the trainer saw the round start before we did
    return f"round {round} is not open (current round {current})"


def committed_hash(ctx: NodeContext, round: int, trainer: str) -> str | None:
    """The hash ``trainer`` committed for ``round``, once the broadcast carries it."""
    latest = ctx.link.latest
    view = None if latest is None else round_view(latest.snapshot, round)
    commit = None if view is None else view.commits.get(trainer)
    return None if commit is None else commit.hash


def follow_gossip(gossip: GossipService, ctx: NodeContext) -> None:
    """Let the gossip service judge pushes and route updates by what the node follows."""
    gossip.expects = lambda r, t: expects_push(ctx, r, t)
    gossip.committed = lambda r, t: committed_hash(ctx, r, t)
    gossip.fanout = ctx.spec.learning.gossip_fanout
    gossip.members = ctx.members_of
    gossip.route_of = ctx.route_of

    def is_live(peer: str) -> bool:
        member = ctx.snapshot.client(peer)
        return member is not None and member.status is ClientStatus.ACTIVE

    def endpoint_of(peer: str) -> str | None:
        member = ctx.snapshot.client(peer)
        return member.gossip_endpoint if member is not None and member.gossip_endpoint else None

    gossip.is_live = is_live
    gossip.endpoint_of = endpoint_of
