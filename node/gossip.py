"""Update gossip between nodes: a ROUTER that receives pushes and fetches, DEALERs that send.

Each node binds a gossip ROUTER and announces it at join; peers' endpoints come in the
broadcast. A trainer's update (encoded by the run's codec, ``node/compression.py``) reaches
every live peer once: pushed by the trainer itself (``gossip_fanout = 0``), or along a relay
tree (``node/relay.py``): the trainer pushes to K peers, and a node that receives an update
forwards the same bytes to its children in the route the push carries. A node that a dead
relay left out fetches the update (``model_fetch``) from the nearest live holder.

Every received push is decoded with its limits, checked (run, round, trainer, hash, the hash
the trainer committed to the console, the codec's own checks: names, shapes, dtypes, finite
values, index ranges) and answered: ``model_ack`` or an ``error`` that says what was wrong.

A push is bound to its sender: its ``sender`` must be the connection's routing id, and with
CURVE the connection must have authenticated with that sender's key from the console's
broadcast. Only the trainer may push an update before its commit is in the broadcast; a relay's
push (``sender`` != ``trainer``) is taken only when its hash is the one the trainer committed,
so a relay can forward an update but never forge or alter one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import zmq
import zmq.asyncio

from node import relay
from node.security import NodeSecurity
from node.weights import WeightsError, from_payloads
from transport import messages as m
from transport.codec import DecodeError, Limits, decode, encode
from transport.fields import ErrorCode
from transport.retry import Backoff, pause
from transport.sockets import SocketFactory, peer_key
from transport.tensors import TensorPayload, model_hash

log = logging.getLogger(__name__)

T = TypeVar("T")
FETCH_POLL = Backoff(first=0.2, cap=0.2)  # asking holders again for an update none had yet
PUSH_POLL = Backoff(first=0.1, cap=0.1)  # pushing again to a peer with no commit or model yet
WANTED_SLICE = 0.05  # how often a waiting push re-checks that its peer is still in the run


@dataclass(frozen=True)
class ReceivedModel:
    """A trainer's update for one round: the payloads as sent (what is forwarded and what the
    hash covers) and their decoded fp32 form (what is aggregated)."""

    trainer: str
    hash: str
    samples: int
    state: dict[str, torch.Tensor]  # the decoded update (node/compression.py decode_update)
    payloads: tuple[TensorPayload, ...] = ()
    route: tuple[str, ...] = ()  # the relay order its trainer chose (empty: no relaying)


@dataclass
class GossipStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    pushes_sent: int = 0
    pushes_received: int = 0
    duplicates: int = 0  # pushes of an update this node already held (bytes spent for nothing)
    fetches: int = 0  # updates this node fetched because a relay on its path was gone
    rejected: int = 0
    rejections: list[str] = field(default_factory=list)
    round_bytes: dict[int, list[int]] = field(default_factory=dict)  # round -> [up, down]
    receipts: dict[tuple[int, str], int] = field(default_factory=dict)  # (round, trainer) -> n

    def count(self, round: int, *, up: int = 0, down: int = 0) -> None:
        """Gossip bytes of ``round`` this node sent (``up``) and received (``down``)."""
        pair = self.round_bytes.setdefault(round, [0, 0])
        pair[0] += up
        pair[1] += down
        self.bytes_sent += up
        self.bytes_received += down

    def of_round(self, round: int) -> tuple[int, int]:
        up, down = self.round_bytes.get(round, (0, 0))
        return up, down


class GossipService:
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
        return self.endpoint

    # ----------------------------------------------------------------- receiving

    async def _serve(self) -> None:
        assert self._router is not None
        while True:
            frames = await self._router.recv_multipart(copy=False)
            identity, body = frames[0], frames[1:]
            size = sum(len(f.buffer) for f in body)
            reply, round = self._receive(identity, body)
            if round is not None:
                self.stats.count(round, down=size)
            else:
                self.stats.bytes_received += size
            reply_frames = encode(reply)
            try:
                await self._router.send_multipart([identity.bytes, *reply_frames], copy=False)
            except zmq.ZMQError as exc:
                log.debug("gossip reply not delivered: %s", exc)
                continue
            if isinstance(reply, m.ModelPush):  # a fetch answered with the update
                self.stats.count(reply.round, up=sum(len(memoryview(f)) for f in reply_frames))

    def _receive(self, identity: zmq.Frame, frames: list) -> tuple[m.Message, int | None]:
        """The reply to one received message, and the round it belongs to (None: unknown)."""
        try:
            msg = decode(frames, self._limits)
        except DecodeError as exc:
            return self._refuse("?", exc.code, exc.reason), None
        if isinstance(msg, m.ModelFetch):
            return self._answer_fetch(identity, msg), msg.round
        if not isinstance(msg, m.ModelPush):
            return self._refuse(
                msg.TYPE, ErrorCode.MALFORMED, f"{msg.TYPE} is not a gossip message"
            ), None
        return self.take(msg, identity), msg.round

    def take(self, msg: m.ModelPush, identity: zmq.Frame | None = None) -> m.Message:
        """Check a push (``identity``: its connection) or a fetch's answer (None) and keep its
        update; the reply for its sender.

        The content is judged before the sender (what a refusal names does not depend on who
        sent it): run, round, hashes, the codec's checks; then that the connection is the
        sender's, and that a relay is a live member passing on exactly what was committed.
        """
        if msg.run_id != self.run_id:
            return self._refuse(msg.TYPE, ErrorCode.WRONG_RUN_ID, f"run {msg.run_id!r} is not ours")
        why = self.expects(msg.round, msg.trainer)
        if why is not None:
            return self._refuse(msg.TYPE, ErrorCode.WRONG_ROUND, why)
        if model_hash(msg.tensors) != msg.hash:
            return self._refuse(
                msg.TYPE, ErrorCode.HASH_MISMATCH, "the payload does not match the announced hash"
            )
        committed = self.committed(msg.round, msg.trainer)
        if committed is not None and committed != msg.hash:
            return self._refuse(
                msg.TYPE,
                ErrorCode.HASH_MISMATCH,
                f"{msg.trainer} committed {committed[:12]} for round {msg.round}, "
                f"not {msg.hash[:12]}",
            )
        if self.reference is None:
            return self._refuse(msg.TYPE, ErrorCode.UNAVAILABLE, "model not built yet")
        try:
            update = self.decode_payloads(msg.tensors)
        except WeightsError as exc:
            return self._refuse(msg.TYPE, ErrorCode.BAD_MODEL, str(exc))
        if identity is not None:
            why = self._not_from_sender(identity, msg.sender)
            if why is not None:
                return self._refuse(msg.TYPE, ErrorCode.WRONG_SENDER, why)
        if msg.sender != msg.trainer:
            if not self.is_live(msg.sender):
                return self._refuse(
                    msg.TYPE,
                    ErrorCode.WRONG_SENDER,
                    f"{msg.sender} relayed {msg.trainer}'s update but is not a live member",
                )
            if committed is None:
                # A relay passes on only what the trainer committed; it retries once the
                # commit is broadcast (a race, not a fault: not counted as a refusal).
                return m.Error(
                    ref=msg.TYPE,
                    code=ErrorCode.UNAVAILABLE,
                    reason=f"{msg.sender} relayed {msg.trainer}'s update before its commit "
                    "reached us",
                )
        self._receipt(msg.round, msg.trainer)
        held = self.inbox.get(msg.round, {}).get(msg.trainer)
        if held is not None and held.hash == msg.hash:
            self.stats.duplicates += 1
            return m.ModelAck(round=msg.round, trainer=msg.trainer, hash=msg.hash)
        model = ReceivedModel(
            msg.trainer, msg.hash, msg.samples, update, tuple(msg.tensors), tuple(msg.route)
        )
        self.store(msg.round, model)
        self.stats.pushes_received += 1
        if msg.route and self.fanout > 0:
            self._spawn(self._forward(msg.round, model))
        return m.ModelAck(round=msg.round, trainer=msg.trainer, hash=msg.hash)

    def decode_payloads(self, payloads: tuple[TensorPayload, ...]) -> dict[str, torch.Tensor]:
        """A push's payloads as the update to aggregate (:class:`WeightsError` when bad)."""
        if self.decoder is not None:
            return self.decoder(payloads)
        assert self.reference is not None
        return from_payloads(payloads, self.reference)

    def _receipt(self, round: int, trainer: str) -> None:
        key = (round, trainer)
        self.stats.receipts[key] = self.stats.receipts.get(key, 0) + 1

    def _answer_fetch(self, identity: zmq.Frame, msg: m.ModelFetch) -> m.Message:
        why = self._not_from_sender(identity, msg.sender)
        if why is not None:
            return self._refuse(msg.TYPE, ErrorCode.WRONG_SENDER, why)
        if msg.run_id != self.run_id:
            return self._refuse(msg.TYPE, ErrorCode.WRONG_RUN_ID, f"run {msg.run_id!r} is not ours")
        if not self.is_live(msg.sender):
            return self._refuse(
                msg.TYPE, ErrorCode.NOT_MEMBER, f"{msg.sender} is not a live member"
            )
        held = self.inbox.get(msg.round, {}).get(msg.trainer)
        if held is None or not held.payloads:
            return m.Error(
                ref=msg.TYPE,
                code=ErrorCode.UNAVAILABLE,
                reason=f"no update of {msg.trainer} for round {msg.round} here (yet)",
            )
        return self._push_message(msg.round, held, route=())

    def _not_from_sender(self, identity: zmq.Frame, sender: str) -> str | None:
        """Why the connection did not belong to ``sender``, or None when it did."""
        if identity.bytes != sender.encode():
            return f"the connection of {identity.bytes[:64]!r} sent in {sender}'s name"
        if self._security is not None:
            key = peer_key(identity)
            expected = self._security.peer_keys.get(sender)
            if expected is None or key.encode("ascii", "replace") != expected:
                return f"the connection's CURVE key is not {sender}'s in the broadcast"
        return None

    def _refuse(self, ref: str, code: str, reason: str) -> m.Error:
        self.stats.rejected += 1
        self.stats.rejections = (self.stats.rejections + [f"{code}: {reason}"])[-20:]
        log.warning("rejected gossip %s: %s", ref, reason)
        return m.Error(ref=ref, code=code, reason=reason)

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

    # ----------------------------------------------------------------- pushing

    def _push_message(
        self, round: int, model: ReceivedModel, route: tuple[str, ...]
    ) -> m.ModelPush:
        return m.ModelPush(
            run_id=self.run_id,
            sender=self.node_id,
            round=round,
            trainer=model.trainer,
            hash=model.hash,
            samples=model.samples,
            tensors=model.payloads,
            route=route,
        )

    async def push_to(
        self, targets: list[str], round: int, model: ReceivedModel, timeout: float
    ) -> dict[str, str]:
        """Push ``model`` to each of ``targets`` that has not acked it yet; peer -> outcome.

        A peer that stops being live while a push waits is given up at once instead of holding
        the push until ``timeout``.
        """
        held = self.acked.setdefault((round, model.trainer), set())
        todo = {}
        for peer in targets:
            endpoint = self.endpoint_of(peer)
            if peer not in held and peer != self.node_id and endpoint:
                todo[peer] = endpoint
        frames = encode(self._push_message(round, model, model.route))
        size = sum(len(memoryview(f)) for f in frames)
        results = await asyncio.gather(
            *(
                self._push_one(peer, ep, frames, size, round, timeout)
                for peer, ep in sorted(todo.items())
            )
        )
        outcome = dict(zip(sorted(todo), results, strict=True))
        held.update(p for p, r in outcome.items() if r == "ok")
        return outcome

    async def _push_one(
        self, peer: str, endpoint: str, frames: list, size: int, round: int, timeout: float
    ) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        waits = PUSH_POLL.delays()
        while True:
            reply = await self._exchange(peer, endpoint, frames, size, round, deadline)
            if isinstance(reply, str):
                return reply
            if isinstance(reply, m.ModelAck):
                self.stats.pushes_sent += 1
                return "ok"
            if isinstance(reply, m.Error):
                if reply.code == ErrorCode.UNAVAILABLE and loop.time() + PUSH_POLL.cap < deadline:
                    await pause(waits, deadline)  # it has no commit or model yet: try shortly
                    continue
                log.warning("peer %s refused our push: %s", peer, reply.reason)
                return f"refused: {reply.reason}"
            return f"unexpected reply {reply.TYPE}"

    async def _request(
        self, peer: str, endpoint: str, msg: m.Message, round: int, timeout: float
    ) -> m.Message | None:
        frames = encode(msg)
        size = sum(len(memoryview(f)) for f in frames)
        deadline = asyncio.get_running_loop().time() + timeout
        reply = await self._exchange(peer, endpoint, frames, size, round, deadline)
        return None if isinstance(reply, str) else reply

    async def _exchange(
        self, peer: str, endpoint: str, frames: list, size: int, round: int, deadline: float
    ) -> m.Message | str:
        """Send ``frames`` to ``peer`` and return its decoded reply, or why there was none."""
        lock = self._dealer_locks.setdefault(endpoint, asyncio.Lock())
        wanted = lambda: self.is_live(peer)  # noqa: E731 - a dropped peer: stop waiting
        async with lock:
            sock = self._dealers.get(endpoint)
            if sock is None:
                sock = self._dealers[endpoint] = self._dealer_to(peer, endpoint)
            try:
                await _while_wanted(sock.send_multipart(frames, copy=False), deadline, wanted)
                received = await _while_wanted(sock.recv_multipart(copy=False), deadline, wanted)
                self.stats.count(round, up=size, down=sum(len(f.buffer) for f in received))
                return decode(received, self._limits)
            except _NotWanted:
                self._drop_dealer(endpoint)
                return "given up: the peer left the run"
            except TimeoutError:
                self._drop_dealer(endpoint)
                return "timeout"
            except (zmq.ZMQError, DecodeError) as exc:
                self._drop_dealer(endpoint)
                return f"failed: {exc}"

    def _drop_dealer(self, endpoint: str) -> None:
        sock = self._dealers.pop(endpoint, None)
        if sock is not None:
            sock.close(linger=0)

    def _dealer_to(self, peer: str, endpoint: str) -> zmq.asyncio.Socket:
        """A DEALER to ``peer``'s gossip ROUTER; with CURVE it trusts the peer's broadcast key."""
        key = None
        if self._security is not None:
            key = self._security.peer_keys.get(peer)
            if key is None:
                log.warning("no CURVE key for %s in the broadcast: its handshake will fail", peer)
        return self._factory.model_dealer(self.node_id, endpoint, server_key=key)

    async def close(self) -> None:
        for task in list(self._relays):
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        for endpoint in list(self._dealers):
            self._drop_dealer(endpoint)
        if self._router is not None:
            self._router.close(linger=0)
            self._router = None
        self._factory.close()  # the ZAP thread, if any


class _NotWanted(Exception):
    """The peer a push waits on is no longer wanted (it left the run)."""


async def _while_wanted(awaitable: Awaitable[T], deadline: float, wanted: Callable[[], bool]) -> T:
    """Await ``awaitable`` until ``deadline`` (TimeoutError) or until ``wanted()`` turns false
    (:class:`_NotWanted`), re-checked every ``WANTED_SLICE`` seconds; cancels it on giving up."""
    loop = asyncio.get_running_loop()
    future = asyncio.ensure_future(awaitable)
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("no reply in time")
            if not wanted():
                raise _NotWanted
            done, _ = await asyncio.wait({future}, timeout=min(remaining, WANTED_SLICE))
            if done:
                return future.result()
    finally:
        if not future.done():
            future.cancel()
