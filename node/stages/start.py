"""StartLearning: warm up for an epoch (model, data, codec, torch, the global model)."""

from __future__ import annotations

import asyncio
import copy
import logging

import msgspec
import torch

from node.compression import CodecSpec, UpdateEncoder, decode_update, trainable_names
from node.data import Dataset, Shard, load_dataset, load_node_data, node_index_for
from node.datafetch import fetch_served_data
from node.device import resolve_device
from node.models import build_model
from node.privacy import DPSGD, PrivacyBudget, PrivacyError, check_model, epsilon_spent
from node.server_optimizers import global_hash, load_global, make_server_optimizer
from node.stages import vote
from node.stages.console import ACTIVE_ROUND, WAIT_SLICE, send
from node.training import TrainingError, evaluate, train_local
from node.workflow import NodeContext, Stage
from transport import messages as m
from transport.spec import LearningSpec, PrivacySpec
from transport.state import ClientStatus, RunSnapshot, RunState
from transport.tensors import model_hash

log = logging.getLogger(__name__)


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
        await refresh_spec(ctx, snap)
        await self._prepare(ctx, snap)
        target = snap.round + 1 if snap.state is RunState.WARMUP else snap.round
        if snap.state is RunState.WARMUP:
            # Vote before reporting warmed up: the last report can end Warmup at once.
            await vote.vote_for(ctx, target)
        await send(
            ctx,
            m.WarmedUp(node_id=ctx.node_id, epoch=snap.epoch, model_hash=ctx.global_hash),
            "warmed_up",
        )
        ctx.warmed_up_in = snap.phase_started if snap.state is RunState.WARMUP else None
        # The round this node prepared for: the next one when it warmed up in Warmup, even if
        # its own warmed_up report is what just started that round.
        return vote.VoteTrainSetStage(target)

    async def _prepare(self, ctx: NodeContext, snap: RunSnapshot) -> None:
        spec = ctx.spec
        if ctx.device is None:  # a device this node lacks: DeviceError, before any work
            ctx.device = resolve_device(ctx.device_name or spec.learning.device)
            log.info("training on %s", ctx.device)
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
            ctx.server_optimizer = make_server_optimizer(spec.learning, ctx.model)
            if spec.privacy.dp:  # a model DP-SGD cannot train: PrivacyError, at warmup
                check_model(ctx.model)
                if ctx.privacy is None:
                    ctx.privacy = PrivacyBudget(spec.privacy)
            # Pay torch's first-call costs now, in Warmup, not in the first round's training.
            await asyncio.to_thread(
                warm_up_torch, ctx.model, ds, spec.learning, ctx.device, spec.privacy
            )
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
                # the weights and the server optimiser's state they were stepped with
                load_global(ctx.model, ctx.server_optimizer, reply.tensors)
                ctx.global_hash, ctx.global_round = reply.hash, reply.round
                ctx.stale_since = None
                log.info("loaded the checkpointed global model of round %d", reply.round)
                return
            reason = reply.reason if isinstance(reply, m.Error) else "hash did not verify"
            log.error("could not fetch the checkpointed model: %s", reason)
        if not ctx.global_hash:
            ctx.global_hash = global_hash(ctx.model, ctx.server_optimizer)


async def refresh_spec(ctx: NodeContext, snap: RunSnapshot) -> None:
    """The operator changed learning settings: the broadcast's ``spec_version`` is newer than
    ours. Fetch the new spec before warming up, log what changed, rebuild what depends on it."""
    if snap.spec_version == ctx.link.spec_version:
        return
    reply = await ctx.link.request(m.SpecRequest(node_id=ctx.node_id))
    if not isinstance(reply, m.SpecReply):
        why = reply.reason if isinstance(reply, m.Error) else reply.TYPE
        log.warning("could not fetch run spec v%d: %s", snap.spec_version, why)
        return
    old, new = ctx.spec.learning, reply.spec.learning
    changes = [
        f"learning.{name} {getattr(old, name)!r} -> {getattr(new, name)!r}"
        for name in new.__struct_fields__
        if getattr(old, name) != getattr(new, name)
    ]
    log.info(
        "run spec v%d -> v%d: %s",
        ctx.link.spec_version,
        reply.version,
        ", ".join(changes) or "no learning setting changed",
    )
    ctx.spec = ctx.link.spec = reply.spec
    ctx.link.spec_version = reply.version
    torch.set_num_threads(new.torch_threads)
    if ctx.model is not None and codec_of(ctx) != CodecSpec(
        name=old.compression, topk_fraction=old.topk_fraction
    ):
        prepare_codec(ctx)


def prepare_codec(ctx: NodeContext) -> None:
    """The run's update codec for this node's model: its encoder, and the gossip's decoder."""
    assert ctx.model is not None
    reference = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    trainable = trainable_names(ctx.model)
    codec = codec_of(ctx)
    ctx.encoder = UpdateEncoder(codec, reference, trainable)
    ctx.gossip.reference = reference
    ctx.gossip.decoder = lambda payloads: decode_update(payloads, codec, reference, trainable)


def warm_up_torch(
    model: torch.nn.Module,
    ds: Dataset,
    learning: LearningSpec,
    device: torch.device | None = None,
    privacy: PrivacySpec | None = None,
) -> None:
    """A tiny training run and an evaluation on a copy of the model.

    torch pays seconds on its first optimizer step (lazy imports) and first passes; paying
    them in Warmup keeps them out of the first round, where every node would pay them at once.
    With DP on, the DP-SGD step and the accountant (Opacus's import) are paid for here too.
    """
    probe = copy.deepcopy(model)
    tiny = Shard(ds.x_train[: learning.batch_size], ds.y_train[: learning.batch_size])
    dp = None
    if privacy is not None and privacy.dp:
        cpu = torch.device("cpu")
        dp = DPSGD.for_round(privacy, seed=0, node_id="warmup", round=0, device=device or cpu)
        epsilon_spent(privacy.noise_multiplier, [(0.5, 1)], privacy.delta)
    try:
        train_local(probe, tiny, learning, seed=0, round=0, device=device, dp=dp)
    except TrainingError:
        raise
    except RuntimeError as exc:  # torch.func cannot take this model's per-sample gradients
        if dp is None:
            raise
        raise PrivacyError(
            f"[privacy] dp = true: per-sample gradients (torch.func vmap) fail on this model: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    evaluate(probe, ds.x_test[:64], ds.y_test[:64])


def codec_of(ctx: NodeContext) -> CodecSpec:
    learning = ctx.spec.learning
    return CodecSpec(name=learning.compression, topk_fraction=learning.topk_fraction)
