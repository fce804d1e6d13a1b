"""The byzantine trainer of the robustness tests, and what a trainer leaves in its model.

``TrainStage`` runs here against a fake link and gossip (no sockets): a trainer must send its
trained (or, with ``--attack``, corrupted) weights while its own model goes back to the global
model, and a node that follows a console which went back in rounds forgets the later rounds.
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
from node.data import load_dataset, shard
from node.gossip import ReceivedModel
from node.models import build_model
from node.stages import TrainStage, prepare_codec
from node.workflow import NodeContext
from transport import messages as m
from transport.spec import DataSpec, LearningSpec, ModelSpec, RunSpec

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
