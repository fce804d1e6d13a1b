"""P2PFL's learning workflow, driven by the coordinator's broadcasts.

``LearningWorkflow`` runs one stage at a time; each stage is a small class with one
``async run(ctx)`` that returns the next stage, or None when the run is over. The context
is an explicit dataclass: the node's links, its model and data, and what it did this round.
Torch work (training, aggregation, evaluation) runs in a worker thread so the node keeps
heartbeating and serving gossip while it computes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from node.attacks import Attack
from node.compression import UpdateEncoder
from node.data import Dataset, Shard
from node.gossip import GossipService, ReceivedModel
from node.link import ConsoleLink
from node.privacy import PrivacyBudget
from node.relay import plan_routes
from node.server_optimizers import ServerOptimizer
from transport.spec import RunSpec
from transport.state import ClientStatus, RunSnapshot

log = logging.getLogger(__name__)


@dataclass
class RoundWork:
    """What this node did in one round."""

    round: int
    trained_hash: str | None = None
    trained_state: dict[str, torch.Tensor] | None = None
    update: ReceivedModel | None = None  # this node's encoded update, as its peers get it
    samples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    witnessed: bool = False
    aggregated: bool = False


@dataclass
class NodeContext:
    node_id: str
    spec: RunSpec
    link: ConsoleLink
    gossip: GossipService
    data_path: Path | None = None  # --data: this node's own data instead of the run's source
    attack: Attack | None = None  # --attack: robustness testing only (node/attacks.py)
    model: torch.nn.Module | None = None
    dataset: Dataset | None = None
    shard: Shard | None = None
    shard_key: tuple[str, ...] = ()  # the epoch membership the shard was cut for
    global_hash: str = ""
    global_round: int = 0  # the round whose aggregate the model holds (0: initial weights)
    voted: set[int] = field(default_factory=set)
    work: dict[int, RoundWork] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    history: list[str] = field(default_factory=list)
    last_round: int = 0  # the console's round number in the last snapshot followed
    warmed_up_in: float | None = None  # phase_started of the Warmup we last reported for
    checkpoint_acked: str = ""  # hash of the last global model the console acked as checkpoint
    encoder: UpdateEncoder | None = None  # encodes this node's updates (keeps top-k's residual)
    server_optimizer: ServerOptimizer | None = None  # [learning] server_optimizer; None: "none"
    round_members: dict[int, tuple[str, ...]] = field(default_factory=dict)  # at round start
    round_uploader: dict[int, str | None] = field(default_factory=dict)  # checkpoint, at start
    relay_plans: dict[int, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    stale_since: int | None = None  # an accepted round this node could not aggregate
    reports: asyncio.Task[None] | None = None  # a round's reports still on their way, in order
    finished: bool = False
    device_name: str | None = None  # --device: overrides [learning] device for this node
    device: torch.device | None = None  # where this node trains, resolved at its first warmup
    privacy: PrivacyBudget | None = None  # [privacy] dp: what this node has spent so far

    @property
    def snapshot(self) -> RunSnapshot:
        return self.link.snapshot

    def round_work(self, round: int) -> RoundWork:
        work = self.work.get(round)
        if work is None:
            work = self.work[round] = RoundWork(round)
            for old in [r for r in self.work if r < round - 2]:
                del self.work[old]
        return work

    def follow_rounds(self, snap: RunSnapshot) -> None:
        """A ``ConsoleLink.on_snapshot`` callback: notice a console that numbers rounds again.

        Within one console the round number never goes back. It does when the console was
        restarted with ``--resume``: it numbers its rounds again from its checkpoint, so a
        vote, a witness report, a model received or pushed under the previous console must not
        stand for the new round of the same number (it would never be sent again, and the round
        would fail without a quorum or wait out its timeouts).
        """
        if snap.round < self.last_round:
            log.info("the console went back to round %d: forgetting later rounds", snap.round)
            self.forget_rounds_after(snap.round)
        self.last_round = snap.round
        current = snap.current
        if current is not None and current.round not in self.round_members:
            # Who the round's updates go to, as the round started: relay routes are drawn
            # from it, the same on every node that saw the same broadcast.
            self.round_members[current.round] = tuple(c.id for c in snap.epoch_clients)
            self.round_uploader[current.round] = snap.checkpoint_uploader
            for old in [r for r in self.round_members if r < current.round - 4]:
                del self.round_members[old]
                self.round_uploader.pop(old, None)
                self.relay_plans.pop(old, None)

    def route_of(self, round: int, trainer: str) -> tuple[str, ...]:
        """``trainer``'s relay route in ``round``, planned with the round's other trainers so
        relaying spreads over the uplinks; the checkpoint uploader starts loaded with its
        upload (a whole model, in updates)."""
        plans = self.relay_plans.get(round)
        if plans is None or trainer not in plans:
            view = next(
                (
                    v
                    for v in (self.snapshot.current, self.snapshot.previous)
                    if v and v.round == round
                ),
                None,
            )
            trainers = set(view.train_set) if view is not None else set()
            load: dict[str, float] = {}
            uploader = self.round_uploader.get(round)
            if uploader and self.encoder is not None:
                load[uploader] = raw_model_bytes(self) / max(1, self.encoder.payload_bytes)
            plans = plan_routes(
                round,
                trainers | {trainer},
                self.members_of(round),
                self.spec.seed,
                self.spec.learning.gossip_fanout,
                load,
            )
            if view is not None:  # a plan without the round's train set is not kept
                self.relay_plans[round] = plans
        return plans[trainer]

    def members_of(self, round: int) -> tuple[str, ...]:
        """The members round ``round`` started with (the live ones now if it was not seen)."""
        members = self.round_members.get(round)
        if members is None:
            return tuple(c.id for c in self.snapshot.epoch_clients)
        return members

    def forget_rounds_after(self, round: int) -> None:
        """Drop what this node did and received for the rounds after ``round``."""
        self.voted = {r for r in self.voted if r <= round}
        for r in [r for r in self.round_members if r > round]:
            del self.round_members[r]
            self.round_uploader.pop(r, None)
            self.relay_plans.pop(r, None)
        for r in [r for r in self.work if r > round]:
            del self.work[r]
        for r in [r for r in self.gossip.inbox if r > round]:
            del self.gossip.inbox[r]
        for key in [k for k in self.gossip.acked if k[0] > round]:
            del self.gossip.acked[key]

    def is_member(self, snap: RunSnapshot | None = None) -> bool:
        snap = snap or self.snapshot
        me = snap.client(self.node_id)
        return me is not None and me.status is ClientStatus.ACTIVE

    def report_in_background(self, report: Coroutine[Any, Any, None]) -> None:
        """Send a round's reports while the next round trains; reports keep their order."""
        previous = self.reports if self.reports is not None and not self.reports.done() else None

        async def after_previous() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            await report

        self.reports = asyncio.create_task(after_previous())

    async def reports_sent(self) -> None:
        """Wait for the reports in flight (each request is bounded by the link's timeout)."""
        if self.reports is not None:
            done = self.reports
            await asyncio.gather(done, return_exceptions=True)
            if self.reports is done:
                self.reports = None

    def set_stage(self, stage: str, round: int | None = None) -> None:
        self.link.stage = stage
        if round is not None:
            self.link.round = round


def raw_model_bytes(ctx: NodeContext) -> int:
    """Bytes of the whole model's weights (what a checkpoint upload sends)."""
    if ctx.model is None:
        return 0
    return sum(t.numel() * t.element_size() for t in ctx.model.state_dict().values())


class Stage(Protocol):
    name: str

    async def run(self, ctx: NodeContext) -> Stage | None: ...


class RoundStage:
    """A stage of one round (VoteTrainSet, Train, WaitAggregatedModels, GossipModel,
    RoundFinished): it is built with the round it works on."""

    name: str

    def __init__(self, round: int) -> None:
        self.round = round


class LearningWorkflow:
    """Runs stages until one returns None (the run finished, or the node was removed)."""

    def __init__(self, ctx: NodeContext, first: Stage) -> None:
        self.ctx = ctx
        self.first = first
        if ctx.link.latest is not None:
            ctx.last_round = ctx.link.latest.snapshot.round
        ctx.link.on_snapshot.append(ctx.follow_rounds)

    async def run(self) -> None:
        stage: Stage | None = self.first
        try:
            while stage is not None:
                self.ctx.history.append(stage.name)
                log.debug("stage %s", stage.name)
                stage = await stage.run(self.ctx)
            await self.ctx.reports_sent()  # the last round's aggregate and metrics still count
        finally:
            if self.ctx.reports is not None:
                self.ctx.reports.cancel()
        self.ctx.finished = True
