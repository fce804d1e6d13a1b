"""RoundFinished: witness, vote for the next round, aggregate the accepted set, report it;
resync the global model after a missed round."""

from __future__ import annotations

import asyncio
import logging

import torch

from node import weights
from node.aggregators import Update, aggregate, update_norm
from node.compression import apply_update
from node.server_optimizers import global_hash, global_state, load_global
from node.stages import cooldown, vote
from node.stages.console import ACTIVE_ROUND, WAIT_SLICE, round_view, send
from node.training import evaluate
from node.workflow import NodeContext, RoundStage, Stage
from transport import messages as m
from transport.state import RoundOutcome, RoundView, RunSnapshot, RunState
from transport.tensors import model_hash

log = logging.getLogger(__name__)


class RoundFinishedStage(RoundStage):
    """Witness, vote for the next round, aggregate exactly the accepted set, report it."""

    name = "RoundFinished"

    async def run(self, ctx: NodeContext) -> Stage | None:
        r = self.round
        ctx.set_stage("done", r)
        snap = ctx.snapshot
        view = round_view(snap, r)
        work = ctx.round_work(r)
        if view is not None and ctx.node_id in view.witnesses and not work.witnessed:
            held = ctx.gossip.inbox.get(r, {})
            attestations = {t: held[t].hash for t in view.train_set if t in held}
            work.witnessed = True
            await send(
                ctx,
                m.Witness(node_id=ctx.node_id, round=r, attestations=attestations),
                f"witness for round {r}",
            )
        if next_round_follows(ctx.snapshot):
            await vote.vote_for(ctx, r + 1)
        snap = await ctx.link.wait_for(
            lambda s: (
                s.state is RunState.FINISHED
                or (v := round_view(s, r)) is None
                or v.outcome is not RoundOutcome.OPEN
            ),
            WAIT_SLICE,
        )
        if snap is None:
            return self
        view = round_view(snap, r)
        if view is not None and view.outcome is RoundOutcome.ACCEPTED and not work.aggregated:
            await aggregate_round(ctx, r, view)
        snap = ctx.snapshot
        if snap.state is RunState.FINISHED:
            return None
        if snap.state in ACTIVE_ROUND and ctx.is_member(snap):
            return vote.VoteTrainSetStage(r + 1)
        return cooldown.CooldownStage()


def next_round_follows(snap: RunSnapshot) -> bool:
    """Whether a round can follow this one in the same epoch (so a vote for it can count)."""
    return (
        snap.state in ACTIVE_ROUND
        and not snap.pending_pause
        and snap.epoch_rounds < snap.rounds_per_epoch
        and snap.accepted_rounds + 1 < snap.total_rounds
    )


async def aggregate_round(ctx: NodeContext, r: int, view: RoundView) -> None:
    assert ctx.model is not None and ctx.dataset is not None
    work = ctx.round_work(r)
    accepted = dict(view.accepted)

    def have_all() -> bool:
        held = ctx.gossip.inbox.get(r, {})
        return all(t in held and held[t].hash == ref.hash for t, ref in accepted.items())

    if not have_all():  # fetch what is missing from any holder at once
        await ctx.gossip.wait_for_models(r, lambda: set(accepted), 5.0, fetch_after=0.0)
    if not have_all():
        log.error("round %d: missing accepted models %s; cannot aggregate", r, sorted(accepted))
        ctx.stale_since = ctx.stale_since or r
        return
    if ctx.stale_since is not None and not await resync_global(ctx, r):
        return
    held = ctx.gossip.inbox[r]
    # The committed sample count is authoritative; a result accepted without a commit (its
    # trainer's commit was lost) is weighted by the count its model push announced.
    updates = [
        Update(t, accepted[t].samples or held[t].samples, held[t].state) for t in sorted(accepted)
    ]
    learning = ctx.spec.learning
    ctx.set_stage("aggregating", r)
    base = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    delta = await asyncio.to_thread(
        aggregate,
        learning.aggregator,
        updates,
        trim_fraction=learning.trim_fraction,
        byzantine_f=learning.byzantine_f,
    )
    state = step_global(ctx, base, delta)
    weights.load_into(ctx.model, state)
    digest = global_hash(ctx.model, ctx.server_optimizer)
    result = await asyncio.to_thread(evaluate, ctx.model, ctx.dataset.x_test, ctx.dataset.y_test)
    ctx.global_hash, ctx.global_round = digest, r
    work.aggregated = True
    ctx.set_stage("done", r)
    stats = ctx.gossip.stats
    up, down = stats.of_round(r)
    extra: dict[str, float] = {
        "bytes_sent": float(stats.bytes_sent),
        "bytes_received": float(stats.bytes_received),
        "round_bytes_up": float(up),
        "round_bytes_down": float(down),
        "duplicates": float(stats.duplicates),
        "fetches": float(stats.fetches),
    }
    if ctx.privacy is not None:  # every node reports what it has spent, trainer or not
        extra["epsilon"] = ctx.privacy.epsilon
    if work.trained_state is not None:
        extra["update_norm"] = update_norm(work.trained_state, state)
        for key in ("train_time", "update_bytes", "compression_ratio"):
            extra[key] = work.metrics.get(key, 0.0)
    ctx.gossip.forget_before(r)
    aggregate_report = m.Aggregate(
        node_id=ctx.node_id,
        round=r,
        hash=digest,
        metrics={"test_loss": result.loss, "accuracy": result.accuracy},
    )
    # The next round trains at once: the reports (and the round's checkpoint, if this node is
    # asked for it) travel meanwhile. ``state`` is the aggregate itself; training changes the
    # model's own tensors, never these.
    uploaded = global_state(state, ctx.server_optimizer)  # the optimiser state of this round
    ctx.report_in_background(_report_round(ctx, aggregate_report, uploaded, extra))


def step_global(
    ctx: NodeContext, base: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The new global model: ``base + delta``, or the server optimiser's step with ``delta``."""
    if ctx.server_optimizer is None:
        return apply_update(base, delta)
    return ctx.server_optimizer.step(base, delta)


async def resync_global(ctx: NodeContext, r: int) -> bool:
    """After a missed aggregation, take the console's checkpoint as the base of round ``r``.

    Updates are applied to the global model, so a node that missed one accepted round holds a
    different base from then on. The console checkpoints every accepted round; once it holds
    round ``r - 1``'s aggregate, that is the base every other node applies round ``r`` to.
    """
    assert ctx.model is not None
    try:
        reply = await ctx.link.request(
            m.ModelRequest(node_id=ctx.node_id, epoch=ctx.snapshot.epoch), timeout=30.0
        )
    except (TimeoutError, RuntimeError) as exc:
        log.warning("round %d: resync request failed: %s", r, exc)
        return False
    if not (
        isinstance(reply, m.ModelReply)
        and reply.round == r - 1
        and model_hash(reply.tensors) == reply.hash
    ):
        log.warning(
            "round %d: not aggregating: this node missed round %d and the console has no "
            "checkpoint of round %d yet",
            r,
            ctx.stale_since,
            r - 1,
        )
        return False
    load_global(ctx.model, ctx.server_optimizer, reply.tensors)  # the optimiser state too
    ctx.global_hash, ctx.global_round = reply.hash, reply.round
    log.info(
        "round %d: took round %d's checkpoint as the base (missed round %d)",
        r,
        r - 1,
        ctx.stale_since,
    )
    ctx.stale_since = None
    return True


async def _report_round(
    ctx: NodeContext, report: m.Aggregate, state: dict[str, torch.Tensor], extra: dict[str, float]
) -> None:
    r = report.round
    await send(ctx, report, f"aggregate of round {r}")
    if cooldown.asked_to_upload(ctx, ctx.snapshot) and ctx.global_hash == report.hash:
        await cooldown.upload_checkpoint(ctx, ctx.snapshot, state)
    await send(ctx, m.Metrics(node_id=ctx.node_id, round=r, metrics=extra), f"metrics of round {r}")
