"""A node that missed an accepted round resyncs the server optimiser's state with the weights.

``aggregate_round`` against a fake link and gossip (no sockets), as in test_attacks.py: the
checkpoint of round 2 carries the weights and the optimiser's m and v; the stale node must
step round 3's aggregate from exactly those, so it reports the hash every other node reports.
"""

from __future__ import annotations

import asyncio

import msgspec
import torch

from node import weights
from node.server_optimizers import PREFIX, global_state, make_server_optimizer
from node.stages import aggregate_round, prepare_codec
from tests.factories import round_view
from tests.node.test_attacks import _context, _Holding, _Replies
from transport import messages as m
from transport.state import ResultRef, RoundOutcome, RoundView
from transport.tensors import model_hash


def test_a_stale_node_takes_the_optimizer_state_from_the_checkpoint_with_the_weights() -> None:
    ctx = _context()
    learning = msgspec.structs.replace(ctx.spec.learning, server_optimizer="adam")
    ctx.spec = msgspec.structs.replace(ctx.spec, learning=learning)
    ctx.link, ctx.gossip = _Replies(), _Holding()  # type: ignore[assignment]
    prepare_codec(ctx)
    assert ctx.model is not None and ctx.encoder is not None
    ctx.server_optimizer = make_server_optimizer(learning, ctx.model)
    stale = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    trained = {k: v + 0.01 if v.is_floating_point() else v for k, v in stale.items()}
    payloads = ctx.encoder.encode(trained, stale)
    update = ctx.gossip.decode_payloads(payloads)
    digest = model_hash(payloads)

    def view(r: int) -> RoundView:
        return round_view(
            round=r, seed=0, train_set=("node-1",), witnesses=("node-2",),
            outcome=RoundOutcome.ACCEPTED, accepted={"node-1": ResultRef(digest, 10)},
        )  # fmt: skip

    # round 2's checkpoint: other weights, and an optimiser state other than the initial one
    checkpoint = {k: v + 1.0 if v.is_floating_point() else v for k, v in stale.items()}
    reference = make_server_optimizer(learning, ctx.model)
    assert reference is not None
    reference.load(
        {k: torch.full_like(t, 0.002 if ".m." in k else 4e-4) for k, t in reference.state().items()}
    )
    tensors = weights.to_payloads(global_state(checkpoint, reference))
    assert any(t.name.startswith(PREFIX) for t in tensors)

    async def scenario() -> None:
        await aggregate_round(ctx, 2, view(2))  # node-1's update never reached us
        assert ctx.stale_since == 2
        ctx.gossip.inbox[3] = {"node-1": _received(digest, update, payloads)}
        ctx.link.reply = m.ModelReply(round=2, hash=model_hash(tensors), tensors=tensors)  # type: ignore[attr-defined]
        await aggregate_round(ctx, 3, view(3))
        await ctx.reports_sent()
        assert ctx.stale_since is None and ctx.round_work(3).aggregated

    asyncio.run(scenario())
    expected = reference.step(checkpoint, update)  # what every up-to-date node computed
    assert ctx.model is not None and ctx.server_optimizer is not None
    for key, value in ctx.model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert ctx.global_hash == weights.model_hash_of(global_state(expected, reference))
    reported = [s for s in ctx.link.sent if isinstance(s, m.Aggregate)]  # type: ignore[attr-defined]
    assert reported[-1].hash == ctx.global_hash


def _received(digest: str, update: dict, payloads: tuple) -> object:  # type: ignore[type-arg]
    from node.gossip import ReceivedModel

    return ReceivedModel("node-1", digest, 10, update, payloads)
