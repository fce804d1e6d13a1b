"""VoteTrainSet: vote for a round's train set, then follow the tally into the round."""

from __future__ import annotations

from node.stages import cooldown, finished, start, train, wait
from node.stages.console import ACTIVE_ROUND, WAIT_SLICE, send, training_refusal
from node.workflow import NodeContext, RoundStage, Stage
from transport import messages as m
from transport.state import ClientStatus, RunSnapshot, RunState


class VoteTrainSetStage(RoundStage):
    """Vote for the next round's train set, then wait for the coordinator's tally."""

    name = "VoteTrainSet"

    async def run(self, ctx: NodeContext) -> Stage | None:
        ctx.set_stage("voting", self.round)
        if ctx.snapshot.state in (RunState.WARMUP, *ACTIVE_ROUND):
            await vote_for(ctx, self.round)
        target = self.round
        snap = await ctx.link.wait_for(
            lambda s: (
                s.state not in (RunState.WARMUP, *ACTIVE_ROUND)
                or not ctx.is_member(s)
                or (s.current is not None and s.current.round >= target)
                or (s.state is RunState.WARMUP and s.phase_started != ctx.warmed_up_in)
            ),
            WAIT_SLICE,
        )
        if snap is None:
            return self
        if snap.state is RunState.FINISHED:
            return None
        if snap.state is RunState.WARMUP and snap.phase_started != ctx.warmed_up_in:
            # Not the Warmup we reported for: a console restarted (--resume) that took us
            # straight into its Warmup, or a Warmup begun again. Warm up for this one.
            return start.StartLearningStage()
        if snap.state not in ACTIVE_ROUND or not ctx.is_member(snap) or snap.current is None:
            return cooldown.CooldownStage()
        round = snap.current.round
        if snap.state is RunState.ROUND_WITNESS:
            return finished.RoundFinishedStage(round)  # too late to train in this one
        if ctx.node_id in snap.current.train_set:
            return train.TrainStage(round)
        return wait.WaitAggregatedModelsStage(round)


def make_vote(ctx: NodeContext, snap: RunSnapshot) -> tuple[tuple[str, int], ...]:
    """P2PFL's vote: up to train_set_size candidates with decreasing random weights."""
    candidates = sorted(c.id for c in snap.clients if c.status is ClientStatus.ACTIVE)
    k = min(ctx.spec.learning.train_set_size, len(candidates))
    picks = ctx.rng.sample(candidates, k)
    return tuple((node, ctx.rng.randint(0, 1000) // (i + 1)) for i, node in enumerate(picks))


async def vote_for(ctx: NodeContext, round: int) -> None:
    if round in ctx.voted:
        return
    ctx.voted.add(round)
    snap = ctx.snapshot
    declines = training_refusal(ctx)  # its privacy budget is spent: never elected again
    vote = m.Vote(
        node_id=ctx.node_id, round=round, candidates=make_vote(ctx, snap), declines=declines
    )
    await send(ctx, vote, f"vote for round {round}")
