"""Cooldown: the epoch's end; the checkpoint upload the console asks a node for."""

from __future__ import annotations

import asyncio

import torch

from node import weights
from node.server_optimizers import global_state
from node.stages import start
from node.stages.console import WAIT_SLICE, send
from node.workflow import NodeContext, Stage
from transport import messages as m
from transport.state import RunSnapshot, RunState
from transport.tensors import model_hash


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
        return start.StartLearningStage()


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
    """Send the global state (the last accepted round's aggregate and the server optimiser's
    state) for the checkpoint: ``state`` when given, else the model's (not training: Cooldown)."""
    assert ctx.model is not None
    if state is None:
        state = global_state(ctx.model.state_dict(), ctx.server_optimizer)
    payloads = weights.to_payloads(state)
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
