"""The byzantine trainer of the robustness tests, and what a trainer leaves in its model.

``TrainStage`` runs here against a fake link and gossip (no sockets): a trainer must send its
trained (or, with ``--attack``, corrupted) weights while its own model goes back to the global
model, a node that follows a console which went back in rounds forgets the later rounds, and a
node that missed an accepted round resyncs from the checkpoint before it applies more updates.
"""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from node import weights
from node.attacks import Attack, parse_attack
from node.compression import apply_update
from node.data import load_dataset, shard
from node.gossip import GossipStats, ReceivedModel
from node.models import build_model
from node.stages import TrainStage, aggregate_round, prepare_codec
from node.workflow import NodeContext
from tests.factories import round_view
from transport import messages as m
from transport.spec import DataSpec, LearningSpec, ModelSpec, RunSpec
from transport.state import ResultRef, RoundOutcome, RoundView
from transport.tensors import model_hash

torch.set_num_threads(1)


def test_parse_attack_reads_scale_and_signflip_and_refuses_the_rest() -> None:
    assert parse_attack("scale:1000") == Attack("scale", 1000.0)
    assert parse_attack("signflip") == Attack("signflip", 1.0)
    assert parse_attack("signflip:2.5") == Attack("signflip", 2.5)
    for bad in ("scale", "scale:0", "scale:-2", "scale:inf", "signflip:x", "noise:1", ""):
        with pytest.raises(ValueError, match="attack"):
            parse_attack(bad)


def test_an_attack_scales_or_flips_the_update_and_leaves_integer_tensors_alone() -> None:
    start = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    trained = {"w": torch.tensor([1.5, 1.0]), "n": torch.tensor(4)}
    scaled = Attack("scale", 10.0).apply(trained, start)
    flipped = Attack("signflip", 2.0).apply(trained, start)
    assert torch.equal(scaled["w"], torch.tensor([6.0, -8.0]))
    assert torch.equal(flipped["w"], torch.tensor([0.0, 4.0]))
    assert scaled["n"].item() == flipped["n"].item() == 4


class _FakeLink:
    def __init__(self) -> None:
        self.stage = ""
        self.round = 0
        self.sent: list[m.Message] = []
        self.on_snapshot: list[Any] = []
        self.latest = None
        self.snapshot = SimpleNamespace(epoch=0, total_rounds=2)  # Train reads total_rounds

    async def request(self, msg: m.Message, *, timeout: float | None = None) -> m.Message:
        self.sent.append(msg)
        return m.Ack(ref=msg.TYPE)


class _FakeGossip:
    def __init__(self) -> None:
        self.inbox: dict[int, dict[str, ReceivedModel]] = {}
        self.acked: dict[tuple[int, str], set[str]] = {}
        self.reference: dict[str, torch.Tensor] | None = None
        self.decoder: Any = None

    def decode_payloads(self, payloads: Any) -> dict[str, torch.Tensor]:
        return self.decoder(payloads)

    def route_for(self, round: int, trainer: str) -> tuple[str, ...]:
        return ()

    def store(self, round: int, model: ReceivedModel) -> None:
        self.inbox.setdefault(round, {})[model.trainer] = model


def _context(attack: Attack | None = None) -> NodeContext:
    data = DataSpec(source="digits", partition="iid")
    learning = LearningSpec(optimizer="adam", learning_rate=0.01, local_epochs=1)
    spec = RunSpec(run_id="t", seed=3, data=data, learning=learning)
    dataset = load_dataset(data, seed=3, base_dir=None)
    model = build_model(ModelSpec(), features=64, classes=10, image_shape=(8, 8), seed=3)
    ctx = NodeContext(
        node_id="node-0",
        spec=spec,
        link=_FakeLink(),  # type: ignore[arg-type]
        gossip=_FakeGossip(),  # type: ignore[arg-type]
        attack=attack,
        rng=random.Random(0),
    )
    ctx.model, ctx.dataset = model, dataset
    ctx.shard = shard(dataset, 0, 4, data, 3)
    ctx.global_hash = weights.model_hash_of(model)
    prepare_codec(ctx)
    return ctx


@pytest.mark.parametrize("attack", [None, Attack("scale", 100.0)], ids=["honest", "scaled"])
def test_a_trainer_sends_its_update_and_keeps_the_global_model(attack: Attack | None) -> None:
    ctx = _context(attack)
    assert ctx.model is not None
    start = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    asyncio.run(TrainStage(1).run(ctx))

    # the model still is the global one: a failed round or a checkpoint upload needs it
    assert weights.model_hash_of(ctx.model) == ctx.global_hash
    work = ctx.work[1]
    assert work.trained_state is not None
    commit = next(msg for msg in ctx.link.sent if isinstance(msg, m.Commit))  # type: ignore[attr-defined]
    assert commit.hash == work.trained_hash == ctx.gossip.inbox[1]["node-0"].hash
    moved = sum(float((work.trained_state[k] - start[k]).norm()) for k in start)
    assert moved > 0
    if attack is not None:  # the update sent is 100 times the one trained
        honest = _context(None)
        asyncio.run(TrainStage(1).run(honest))
        honest_state = honest.work[1].trained_state
        assert honest_state is not None
        for key, value in start.items():
            expected = value + 100.0 * (honest_state[key] - value)
            assert torch.allclose(work.trained_state[key], expected, atol=1e-3)


def test_a_node_forgets_its_later_rounds_when_the_console_goes_back_in_rounds() -> None:
    ctx = _context()
    ctx.voted = {4, 5, 6}
    for r in (4, 5):
        ctx.round_work(r).witnessed = True
        ctx.gossip.inbox[r] = {}
        ctx.gossip.acked[(r, "node-1")] = {"node-2"}
    ctx.follow_rounds(SimpleNamespace(round=5, current=None))  # type: ignore[arg-type]
    assert ctx.voted == {4, 5, 6}  # rounds only went forward: nothing forgotten
    ctx.follow_rounds(SimpleNamespace(round=3, current=None))  # type: ignore[arg-type]  # a resumed console
    assert ctx.voted == set()
    assert not ctx.work and not ctx.gossip.inbox and not ctx.gossip.acked


class _Replies(_FakeLink):
    """A link whose model requests are answered with ``reply`` (a checkpoint, or an error)."""

    def __init__(self) -> None:
        super().__init__()
        self.reply: m.Message = m.Error(ref="model_request", code="unavailable", reason="none")
        self.snapshot = SimpleNamespace(epoch=0)

    async def request(self, msg: m.Message, *, timeout: float | None = None) -> m.Message:
        self.sent.append(msg)
        return self.reply if isinstance(msg, m.ModelRequest) else m.Ack(ref=msg.TYPE)


class _Holding(_FakeGossip):
    def __init__(self) -> None:
        super().__init__()
        self.stats = GossipStats()

    async def wait_for_models(self, round: int, trainers: Any, timeout: float, **kw: Any) -> bool:
        return False

    def forget_before(self, round: int) -> None:
        pass


def test_a_node_that_missed_an_accepted_round_takes_the_checkpoint_before_aggregating() -> None:
    """Updates are applied to the global model: a node that could not aggregate round 2 must
    not apply round 3's updates to its stale weights, but to round 2's checkpoint."""
    ctx = _context()
    ctx.link, ctx.gossip = _Replies(), _Holding()  # type: ignore[assignment]
    prepare_codec(ctx)
    assert ctx.model is not None and ctx.encoder is not None
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

    async def scenario() -> None:
        await aggregate_round(ctx, 2, view(2))  # node-1's update never reached us
        assert ctx.stale_since == 2
        ctx.gossip.inbox[3] = {"node-1": ReceivedModel("node-1", digest, 10, update, payloads)}
        await aggregate_round(ctx, 3, view(3))  # no checkpoint of round 2 yet: wait
        assert ctx.stale_since == 2 and not ctx.round_work(3).aggregated
        checkpoint = {k: v + 1.0 if v.is_floating_point() else v for k, v in stale.items()}
        tensors = weights.to_payloads(checkpoint)
        ctx.link.reply = m.ModelReply(round=2, hash=model_hash(tensors), tensors=tensors)  # type: ignore[attr-defined]
        await aggregate_round(ctx, 3, view(3))
        await ctx.reports_sent()
        assert ctx.stale_since is None and ctx.round_work(3).aggregated
        expected = apply_update(checkpoint, update)
        assert ctx.model is not None
        for key, value in ctx.model.state_dict().items():
            assert torch.equal(value, expected[key]), key

    asyncio.run(scenario())
