"""The node's gossip service: the inbox of received models, waiting for them, relaying and
fetching updates along the relay routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import torch
import zmq
import zmq.asyncio

from node import relay
from node.gossip.receive import GossipRouter
from node.gossip.received import ReceivedModel
from node.gossip.send import GossipDealers
from node.gossip.stats import GossipStats
from node.security import NodeSecurity
from transport import messages as m
from transport.codec import Limits
from transport.flood import FloodGuard
from transport.retry import Backoff, pause
from transport.sockets import SocketFactory
from transport.tasks import cancel_and_wait
from transport.tensors import TensorPayload

log = logging.getLogger(__name__)

FETCH_POLL = Backoff(first=0.2, cap=0.2)  # asking holders again for an update none had yet


class GossipService(GossipRouter, GossipDealers):
    """Owns the node's gossip sockets and the per-round inbox of received models."""

    def __init__(
        self,
        *,
        node_id: str,
        run_id: str,
        context: zmq.asyncio.Context,
        bind_host: str = "127.0.0.1",
        max_model_bytes: int = 1 << 30,
        security: NodeSecurity | None = None,
    ) -> None:
        self.node_id = node_id
        self.run_id = run_id
        # CURVE: the ROUTER admits the run's live keys; each DEALER trusts its peer's key.
        self._security = security
        self._factory = SocketFactory(
            context, security=security.gossip() if security is not None else None
        )
        self._bind_host = bind_host
        self._limits = Limits(
            max_frames=1024, max_header_bytes=1 << 20, max_total_bytes=max_model_bytes
        )
        self._router: zmq.asyncio.Socket | None = None
        self._dealers: dict[str, zmq.asyncio.Socket] = {}
        self._dealer_locks: dict[str, asyncio.Lock] = {}
        self.endpoint = ""
        self.inbox: dict[int, dict[str, ReceivedModel]] = {}
        self.acked: dict[tuple[int, str], set[str]] = {}  # (round, trainer) -> peers that hold it
        self.stats = GossipStats()
        self._arrival = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self.flood = FloodGuard()  # per-peer refusal accounting of the ROUTER
        self._peer: tuple[str, str] | None = None  # (routing id, address) being answered
        # Set by the workflow: which (round, trainer) pushes are welcome, the hash a trainer
        # committed for a round (None while the broadcast has none), and the shape reference.
        self.expects: Callable[[int, str], str | None] = lambda r, t: "not following a round yet"
        self.committed: Callable[[int, str], str | None] = lambda r, t: None
        self.reference: dict[str, torch.Tensor] | None = None
        # Decodes a push's payloads into the update to aggregate (WeightsError on bad input);
        # None: plain weights checked against ``reference``. Set by the workflow's codec.
        self.decoder: Callable[[tuple[TensorPayload, ...]], dict[str, torch.Tensor]] | None = None
        # Relaying (set by the workflow): fanout, the round's members, each trainer's route in
        # a round (node/relay.py plan_routes), whether a peer is live, a peer's gossip endpoint.
        self.fanout = 0
        self.members: Callable[[int], tuple[str, ...]] = lambda r: ()
        self.route_of: Callable[[int, str], tuple[str, ...]] = lambda r, t: relay.make_route(
            r, t, self.members(r), 0
        )
        self.is_live: Callable[[str], bool] = lambda peer: False
        self.endpoint_of: Callable[[str], str | None] = lambda peer: None
        self._relays: set[asyncio.Task[None]] = set()
        self._fetching: dict[tuple[int, str], asyncio.Task[None]] = {}

    def start(self) -> str:
        self._router = self._factory.model_router(f"tcp://{self._bind_host}:0")
        self.endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._task = asyncio.create_task(self._serve(), name="gossip")
        self._reporter = asyncio.create_task(self._report_floods(), name="gossip-flood")
        return self.endpoint

    def store(self, round: int, model: ReceivedModel) -> None:
        self.inbox.setdefault(round, {})[model.trainer] = model
        # Wake every waiter, then hand later waiters a fresh event.
        self._arrival.set()
        self._arrival = asyncio.Event()

    async def wait_for_models(
        self,
        round: int,
        trainers: Callable[[], set[str]],
        timeout: float,
        *,
        fetch_after: float | None = None,
    ) -> bool:
        """Wait (bounded) until the inbox holds every model of ``trainers()`` for ``round``.

        ``trainers`` is re-read on every wake-up, so a trainer that drops stops being waited for.
        A missing update is fetched from a holder as soon as a relay on our path is gone, and
        in any case once ``fetch_after`` seconds have passed (default: 60 % of ``timeout``).
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeout
        fetch_at = start + (0.6 * timeout if fetch_after is None else fetch_after)
        while True:
            arrival = self._arrival
            missing = trainers() - set(self.inbox.get(round, {}))
            if not missing:
                return True
            now = loop.time()
            remaining = deadline - now
            if remaining <= 0:
                return False
            for trainer in sorted(missing):
                if now >= fetch_at or self._relay_lost(round, trainer):
                    self._start_fetch(round, trainer, deadline)
            try:
                # Short slices: membership changes (a dropped trainer) arrive by broadcast.
                await asyncio.wait_for(arrival.wait(), min(remaining, 0.05))
            except TimeoutError:
                pass

    def forget_before(self, round: int) -> None:
        for r in [r for r in self.inbox if r < round]:
            del self.inbox[r]
        for key in [k for k in self.acked if k[0] < round]:
            del self.acked[key]
        for key in [k for k in self.stats.receipts if k[0] < round - 8]:
            del self.stats.receipts[key]
        for r in [r for r in self.stats.round_bytes if r < round - 8]:
            del self.stats.round_bytes[r]
        for key in [k for k in self._fetching if k[0] < round]:
            del self._fetching[key]

    # ----------------------------------------------------------------- relaying and fetching

    def route_for(self, round: int, trainer: str) -> tuple[str, ...]:
        """The relay order of ``trainer``'s update in ``round`` (empty without relaying)."""
        if self.fanout < 1:
            return ()
        return self.route_of(round, trainer)

    def _relay_lost(self, round: int, trainer: str) -> bool:
        if self.fanout < 1:
            return False
        route = self.route_for(round, trainer)
        return relay.relay_lost(route, self.node_id, self.fanout, self.is_live)

    async def send_update(self, round: int, model: ReceivedModel, timeout: float) -> dict[str, str]:
        """The trainer's own push: to every live peer, or to its first relays."""
        if self.fanout < 1:
            peers = [p for p in sorted(self.members(round)) if p != self.node_id]
            targets = [p for p in peers if self.is_live(p)]
        else:
            targets = relay.targets(model.route, None, self.fanout, self.is_live)
        return await self.push_to(targets, round, model, timeout)

    async def _forward(self, round: int, model: ReceivedModel) -> None:
        """A relay's part: pass the update on to our children in its route."""
        targets = relay.targets(model.route, self.node_id, self.fanout, self.is_live)
        if targets:
            outcome = await self.push_to(targets, round, model, timeout=30.0)
            failed = {p: r for p, r in outcome.items() if r != "ok"}
            if failed:
                log.warning(
                    "round %d: relaying %s's update failed for %s", round, model.trainer, failed
                )

    def _start_fetch(self, round: int, trainer: str, deadline: float) -> None:
        key = (round, trainer)
        task = self._fetching.get(key)
        if task is not None and not task.done():
            return
        self._fetching[key] = self._spawn(self._fetch(round, trainer, deadline))

    async def _fetch(self, round: int, trainer: str, deadline: float) -> None:
        """Ask holders in turn (nearest live relay, the trainer, anyone) until one answers."""
        loop = asyncio.get_running_loop()
        waits = FETCH_POLL.delays()
        while loop.time() < deadline and trainer not in self.inbox.get(round, {}):
            route = self.route_for(round, trainer)
            members = self.members(round)
            asked = relay.holders(route, self.node_id, trainer, self.fanout, members, self.is_live)
            for holder in asked:
                endpoint = self.endpoint_of(holder)
                if endpoint is None:
                    continue
                reply = await self._request(
                    holder,
                    endpoint,
                    m.ModelFetch(
                        run_id=self.run_id, sender=self.node_id, round=round, trainer=trainer
                    ),
                    round,
                    min(10.0, max(0.1, deadline - loop.time())),
                )
                if trainer in self.inbox.get(round, {}):
                    return  # a push arrived meanwhile
                if isinstance(reply, m.ModelPush) and reply.trainer == trainer:
                    answer = self.take(reply)
                    if isinstance(answer, m.ModelAck):
                        self.stats.fetches += 1
                        log.info("round %d: fetched %s's update from %s", round, trainer, holder)
                        return
            await pause(waits, deadline)  # nobody holds it yet: a relay may still be receiving it

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._relays.add(task)
        task.add_done_callback(self._relays.discard)
        return task

    async def close(self) -> None:
        for task in list(self._relays):
            task.cancel()
        await cancel_and_wait([t for t in (self._task, self._reporter) if t is not None])
        self._report_due(final=True)  # the last interval's refusals
        for endpoint in list(self._dealers):
            self._drop_dealer(endpoint)
        if self._router is not None:
            self._router.close(linger=0)
            self._router = None
        self._factory.close()  # the ZAP thread, if any
