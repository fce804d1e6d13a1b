"""The stages of P2PFL's learning workflow, one small class each.

StartLearning -> VoteTrainSet -> Train | WaitAggregatedModels -> GossipModel -> RoundFinished
-> VoteTrainSet (next round) | Cooldown (epoch end: checkpoint upload) -> StartLearning.
Every wait is bounded; a stage that times out re-reads the broadcast state and moves on.
"""

from __future__ import annotations

import asyncio
import copy
import logging

import msgspec
import torch

from node import weights
from node.aggregators import Update, aggregate, update_norm
from node.compression import (
    CodecSpec,
    UpdateEncoder,
    apply_update,
    decode_update,
    raw_bytes,
    trainable_names,
)
from node.data import Dataset, Shard, load_dataset, load_node_data, node_index_for
from node.datafetch import fetch_served_data
from node.gossip import GossipService, ReceivedModel
from node.models import build_model
from node.training import evaluate, train_local
from node.workflow import NodeContext, Stage
from transport import messages as m
from transport.spec import LearningSpec
from transport.state import ClientStatus, RoundOutcome, RoundView, RunSnapshot, RunState
from transport.tensors import model_hash

log = logging.getLogger(__name__)

WAIT_SLICE = 30.0  # the longest single wait; idle phases are waited for slice by slice
ACTIVE_ROUND = (RunState.ROUND_TRAIN, RunState.ROUND_WITNESS)


def round_view(snap: RunSnapshot, round: int) -> RoundView | None:
    for view in (snap.current, snap.previous):
        if view is not None and view.round == round:
            return view
    return None


def live_trainers(ctx: NodeContext, round: int) -> set[str]:
    snap = ctx.snapshot
    view = round_view(snap, round)
    if view is None:
        return set()
    live = {c.id for c in snap.clients if c.status is ClientStatus.ACTIVE}
    return {t for t in view.train_set if t in live}


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


def codec_of(ctx: NodeContext) -> CodecSpec:
    learning = ctx.spec.learning
    return CodecSpec(name=learning.compression, topk_fraction=learning.topk_fraction)


def phase_remaining(ctx: NodeContext, default: float = WAIT_SLICE) -> float:
    latest = ctx.link.latest
    deadline = None if latest is None else latest.local_deadline()
    if deadline is None:
        return default
    return max(0.0, deadline - asyncio.get_running_loop().time())


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


class StartLearningStage:
    """Warmup: build the model, load the shard, get the global model, report warmed up."""

    name = "StartLearning"

    async def run(self, ctx: NodeContext) -> Stage | None:
        ctx.set_stage("waiting for epoch")
        snap = await ctx.link.wait_for(
            lambda s: (
                s.state is RunState.FINISHED
                or (s.state in (RunState.WARMUP, *ACTIVE_ROUND) and ctx.is_member(s))
            ),
            WAIT_SLICE,
        )
        if snap is None:
            return self  # still waiting for members (or paused): wait another slice
        if snap.state is RunState.FINISHED:
            return None
        ctx.set_stage("warming up")
        await self._prepare(ctx, snap)
        target = snap.round + 1 if snap.state is RunState.WARMUP else snap.round
        if snap.state is RunState.WARMUP:
            # Vote before reporting warmed up: the last report can end Warmup at once.
            await vote_for(ctx, target)
        await send(
            ctx,
            m.WarmedUp(node_id=ctx.node_id, epoch=snap.epoch, model_hash=ctx.global_hash),
            "warmed_up",
        )
        ctx.warmed_up_in = snap.phase_started if snap.state is RunState.WARMUP else None
        # The round this node prepared for: the next one when it warmed up in Warmup, even if
        # its own warmed_up report is what just started that round.
        return VoteTrainSetStage(target)

    async def _prepare(self, ctx: NodeContext, snap: RunSnapshot) -> None:
        spec = ctx.spec
        if spec.data.serve and ctx.data_path is None:
            await fetch_served_data(ctx, snap)  # sets dataset, shard and shard_key for the epoch
        elif ctx.data_path is not None:
            if ctx.dataset is None:  # a node with its own data trains on all of it
                data_spec = msgspec.structs.replace(spec.data, source=str(ctx.data_path))
                ctx.dataset = await asyncio.to_thread(
                    load_dataset, data_spec, seed=spec.seed, base_dir=None
                )
                ctx.shard = Shard(ctx.dataset.x_train, ctx.dataset.y_train)
        else:
            members = tuple(sorted(c.id for c in snap.clients if c.status is ClientStatus.ACTIVE))
            if ctx.shard_key != members:
                index = (
                    members.index(ctx.node_id)
                    if ctx.node_id in members
                    else node_index_for(ctx.node_id, len(members))
                )
                # Only this node's shard (and the held-out split): see node.data.load_node_data.
                ctx.dataset = await asyncio.to_thread(
                    load_node_data,
                    spec.data,
                    seed=spec.seed,
                    base_dir=None,
                    node_index=index,
                    num_nodes=len(members),
                )
                ctx.shard = Shard(ctx.dataset.x_train, ctx.dataset.y_train)
                ctx.shard_key = members
        if ctx.model is None and ctx.dataset is not None:
            ds = ctx.dataset
            ctx.model = build_model(
                spec.model,
                features=ds.features,
                classes=ds.classes,
                image_shape=ds.image_shape,
                seed=spec.seed,
            )
            prepare_codec(ctx)
            # Pay torch's first-call costs now, in Warmup, not in the first round's training.
            await asyncio.to_thread(warm_up_torch, ctx.model, ds, spec.learning)
        await self._global_model(ctx, snap)

    async def _global_model(self, ctx: NodeContext, snap: RunSnapshot) -> None:
        assert ctx.model is not None
        if snap.checkpoint is not None and snap.checkpoint.hash != ctx.global_hash:
            reply = await ctx.link.request(
                m.ModelRequest(node_id=ctx.node_id, epoch=snap.epoch), timeout=60.0
            )
            if (
                isinstance(reply, m.ModelReply)
                and model_hash(reply.tensors) == reply.hash == snap.checkpoint.hash
            ):
                state = weights.from_payloads(reply.tensors, ctx.model.state_dict())
                weights.load_into(ctx.model, state)
                ctx.global_hash, ctx.global_round = reply.hash, reply.round
                ctx.stale_since = None
                log.info("loaded the checkpointed global model of round %d", reply.round)
                return
            reason = reply.reason if isinstance(reply, m.Error) else "hash did not verify"
            log.error("could not fetch the checkpointed model: %s", reason)
        if not ctx.global_hash:
            ctx.global_hash = weights.model_hash_of(ctx.model)


def prepare_codec(ctx: NodeContext) -> None:
    """The run's update codec for this node's model: its encoder, and the gossip's decoder."""
    assert ctx.model is not None
    reference = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    trainable = trainable_names(ctx.model)
    codec = codec_of(ctx)
    ctx.encoder = UpdateEncoder(codec, reference, trainable)
    ctx.gossip.reference = reference
    ctx.gossip.decoder = lambda payloads: decode_update(payloads, codec, reference, trainable)


def warm_up_torch(model: torch.nn.Module, ds: Dataset, learning: LearningSpec) -> None:
    """A tiny training run and an evaluation on a copy of the model.

    torch pays seconds on its first optimizer step (lazy imports) and first passes; paying
    them in Warmup keeps them out of the first round, where every node would pay them at once.
    """
    probe = copy.deepcopy(model)
    tiny = Shard(ds.x_train[: learning.batch_size], ds.y_train[: learning.batch_size])
    train_local(probe, tiny, learning, seed=0, round=0)
    evaluate(probe, ds.x_test[:64], ds.y_test[:64])


def make_vote(ctx: NodeContext, snap: RunSnapshot) -> tuple[tuple[str, int], ...]:
    """P2PFL's vote: up to train_set_size candidates with decreasing random weights."""
    candidates = sorted(c.id for c in snap.clients if c.status is ClientStatus.ACTIVE)
    k = min(ctx.spec.learning.train_set_size, len(candidates))
    picks = ctx.rng.sample(candidates, k)
    return tuple((node, ctx.rng.randint(0, 1000) // (i + 1)) for i, node in enumerate(picks))


def next_round_follows(snap: RunSnapshot) -> bool:
    """Whether a round can follow this one in the same epoch (so a vote for it can count)."""
    return (
        snap.state in ACTIVE_ROUND
        and not snap.pending_pause
        and snap.epoch_rounds < snap.rounds_per_epoch
        and snap.accepted_rounds + 1 < snap.total_rounds
    )


async def vote_for(ctx: NodeContext, round: int) -> None:
    if round in ctx.voted:
        return
    ctx.voted.add(round)
    snap = ctx.snapshot
    await send(
        ctx,
        m.Vote(node_id=ctx.node_id, round=round, candidates=make_vote(ctx, snap)),
        f"vote for round {round}",
    )


class VoteTrainSetStage:
    """Vote for the next round's train set, then wait for the coordinator's tally."""

    name = "VoteTrainSet"

    def __init__(self, round: int) -> None:
        self.round = round

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
            return StartLearningStage()
        if snap.state not in ACTIVE_ROUND or not ctx.is_member(snap) or snap.current is None:
            return CooldownStage()
        round = snap.current.round
        if snap.state is RunState.ROUND_WITNESS:
            return RoundFinishedStage(round)  # too late to train in this one
        if ctx.node_id in snap.current.train_set:
            return TrainStage(round)
        return WaitAggregatedModelsStage(round)


class TrainStage:
    """Local epochs from the global model; evaluate; commit hash, samples and metrics."""

    name = "Train"

    def __init__(self, round: int) -> None:
        self.round = round

    async def run(self, ctx: NodeContext) -> Stage | None:
        assert ctx.model is not None and ctx.shard is not None and ctx.dataset is not None
        ctx.set_stage("training", self.round)
        work = ctx.round_work(self.round)
        model, ds = ctx.model, ctx.dataset
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        result = await asyncio.to_thread(
            train_local, model, ctx.shard, ctx.spec.learning, seed=ctx.spec.seed, round=self.round
        )
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        local_eval = await asyncio.to_thread(evaluate, model, ds.x_test, ds.y_test)
        # The model holds the global model again: if this round is not accepted, it is what the
        # next round trains from and what a checkpoint upload sends.
        weights.load_into(model, start)
        if ctx.attack is not None:  # a byzantine trainer, for robustness tests (node/attacks.py)
            trained = ctx.attack.apply(trained, start)
        assert ctx.encoder is not None
        # The update as sent; this node aggregates its own update decoded from the same bytes
        # its peers receive, so every node holds the same fp32 values.
        payloads = await asyncio.to_thread(ctx.encoder.encode, trained, start)
        update = ctx.gossip.decode_payloads(payloads)
        digest = model_hash(payloads)
        work.trained_hash, work.trained_state, work.samples = digest, trained, result.samples
        sent = sum(p.nbytes for p in payloads)
        work.metrics = {
            "train_loss": result.train_loss,
            "train_time": result.train_time,
            "local_test_loss": local_eval.loss,
            "local_accuracy": local_eval.accuracy,
            "update_bytes": float(sent),
            "compression_ratio": raw_bytes(start) / max(1, sent),
        }
        route = ctx.gossip.route_for(self.round, ctx.node_id)
        work.update = ReceivedModel(ctx.node_id, digest, result.samples, update, payloads, route)
        ctx.gossip.store(self.round, work.update)
        await send(
            ctx,
            m.Commit(
                node_id=ctx.node_id,
                round=self.round,
                hash=digest,
                samples=result.samples,
                metrics=work.metrics,
            ),
            f"commit for round {self.round}",
        )
        return GossipModelStage(self.round)


class WaitAggregatedModelsStage:
    """Not in the train set: wait (bounded) for the trainers' models."""

    name = "WaitAggregatedModels"

    def __init__(self, round: int) -> None:
        self.round = round

    async def run(self, ctx: NodeContext) -> Stage | None:
        ctx.set_stage("waiting", self.round)
        await ctx.gossip.wait_for_models(
            self.round, lambda: live_trainers(ctx, self.round), _witness_budget(ctx)
        )
        return GossipModelStage(self.round)


def _witness_budget(ctx: NodeContext) -> float:
    """How long to wait for models: most of what is left of RoundTrain."""
    remaining = phase_remaining(ctx)
    return max(0.05, remaining - max(0.05, 0.05 * remaining))


class GossipModelStage:
    """Push our trained model to every live peer that lacks it; collect the others'."""

    name = "GossipModel"

    def __init__(self, round: int) -> None:
        self.round = round

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
        await ctx.gossip.wait_for_models(
            self.round, lambda: live_trainers(ctx, self.round), _witness_budget(ctx)
        )
        return RoundFinishedStage(self.round)


class RoundFinishedStage:
    """Witness, vote for the next round, aggregate exactly the accepted set, report it."""

    name = "RoundFinished"

    def __init__(self, round: int) -> None:
        self.round = round

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
            await vote_for(ctx, r + 1)
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
            return VoteTrainSetStage(r + 1)
        return CooldownStage()


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
    state = apply_update(base, delta)
    weights.load_into(ctx.model, state)
    digest = weights.model_hash_of(ctx.model)
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
    ctx.report_in_background(_report_round(ctx, aggregate_report, state, extra))


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
    state = weights.from_payloads(reply.tensors, ctx.model.state_dict())
    weights.load_into(ctx.model, state)
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
    if asked_to_upload(ctx, ctx.snapshot) and ctx.global_hash == report.hash:
        await upload_checkpoint(ctx, ctx.snapshot, state)
    await send(ctx, m.Metrics(node_id=ctx.node_id, round=r, metrics=extra), f"metrics of round {r}")


def asked_to_upload(ctx: NodeContext, snap: RunSnapshot) -> bool:
    """The console asks this node for the global model it does not hold yet."""
    return (
        snap.checkpoint_uploader == ctx.node_id
        and ctx.model is not None
        and ctx.global_round > 0
        and ctx.checkpoint_acked != ctx.global_hash
        and (snap.checkpoint is None or snap.checkpoint.hash != ctx.global_hash)
    )


async def upload_checkpoint(
    ctx: NodeContext, snap: RunSnapshot, state: dict[str, torch.Tensor] | None = None
) -> bool:
    """Send the global model (the last accepted round's aggregate) for the checkpoint:
    ``state`` when given, else the model's weights (not training: Cooldown)."""
    assert ctx.model is not None
    payloads = weights.to_payloads(ctx.model if state is None else state)
    digest = model_hash(payloads)
    if digest != ctx.global_hash:
        return False
    acked = await send(
        ctx,
        m.CheckpointUpload(
            node_id=ctx.node_id,
            epoch=snap.epoch,
            round=ctx.global_round,
            hash=digest,
            tensors=payloads,
        ),
        f"checkpoint upload of round {ctx.global_round}",
    )
    if acked:
        ctx.checkpoint_acked = digest
    return acked


class CooldownStage:
    """Epoch end: upload the global model if asked, then wait for the next epoch."""

    name = "Cooldown"

    async def run(self, ctx: NodeContext) -> Stage | None:
        ctx.set_stage("cooldown")
        await ctx.reports_sent()  # the last round's upload may be in flight already
        snap = ctx.snapshot
        if snap.state is RunState.COOLDOWN and asked_to_upload(ctx, snap):
            ctx.set_stage("checkpointing")
            await upload_checkpoint(ctx, snap)
        uploaded_or_moved = await ctx.link.wait_for(
            lambda s: s.state is not RunState.COOLDOWN or asked_to_upload(ctx, s),
            WAIT_SLICE,
        )
        snap = ctx.snapshot
        if snap.state is RunState.FINISHED:
            return None
        if snap.state is RunState.COOLDOWN:
            if uploaded_or_moved is not None and snap.checkpoint_uploader == ctx.node_id:
                await asyncio.sleep(0.05)  # asked (again): avoid a hot loop on repeated refusals
            return self
        return StartLearningStage()
