"""Model gossip between nodes: a ROUTER that receives pushes, DEALERs that push.

Each node binds a gossip ROUTER and announces it at join; peers' endpoints come in the
broadcast. A trainer pushes its model directly to every live peer that lacks it, once per
peer (a peer that acked a model is never sent it again). Every received push is decoded
with its limits, checked (run, round, trainer, hash, the hash the trainer committed to the
console, shapes, dtypes, finite values, and that the trainer itself sent it) and answered:
``model_ack`` or an ``error`` that says what was wrong.

A trainer pushes only its own model, so a push is bound to its sender: its ``sender`` must be its
``trainer`` and the connection's routing id; with CURVE, the connection must also have
authenticated with that trainer's key from the console's broadcast. A peer cannot slip a model
into another trainer's name, and once the trainer's commit is in the broadcast no other weights
are taken for it either.
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

from node.security import NodeSecurity
from node.weights import WeightsError, from_payloads
from transport import messages as m
from transport.codec import DecodeError, Limits, decode, encode
from transport.sockets import SocketFactory, peer_key
from transport.tensors import TensorPayload, model_hash

log = logging.getLogger(__name__)

T = TypeVar("T")
WANTED_SLICE = 0.05  # how often a waiting push re-checks that its peer is still in the run


@dataclass(frozen=True)
class ReceivedModel:
    trainer: str
    hash: str
    samples: int
    state: dict[str, torch.Tensor]


@dataclass
class GossipStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    pushes_sent: int = 0
    pushes_received: int = 0
    rejected: int = 0
    rejections: list[str] = field(default_factory=list)


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
            self.stats.bytes_received += sum(len(f.buffer) for f in body)
            reply = self._receive(identity, body)
            try:
                await self._router.send_multipart([identity.bytes, *encode(reply)], copy=False)
            except zmq.ZMQError as exc:
                log.debug("gossip reply not delivered: %s", exc)

    def _receive(self, identity: zmq.Frame, frames: list) -> m.Message:
        try:
            msg = decode(frames, self._limits)
        except DecodeError as exc:
            return self._refuse("?", exc.code, exc.reason)
        if not isinstance(msg, m.ModelPush):
            return self._refuse(msg.TYPE, "malformed", f"{msg.TYPE} is not a gossip message")
        if msg.run_id != self.run_id:
            return self._refuse(msg.TYPE, "wrong_run_id", f"run {msg.run_id!r} is not ours")
        why = self.expects(msg.round, msg.trainer)
        if why is not None:
            return self._refuse(msg.TYPE, "wrong_round", why)
        actual = model_hash(msg.tensors)
        if actual != msg.hash:
            return self._refuse(
                msg.TYPE, "hash_mismatch", "weights do not match the announced hash"
            )
        committed = self.committed(msg.round, msg.trainer)
        if committed is not None and committed != msg.hash:
            return self._refuse(
                msg.TYPE,
                "hash_mismatch",
                f"{msg.trainer} committed {committed[:12]} for round {msg.round}, "
                f"not {msg.hash[:12]}",
            )
        if self.reference is None:
            return self._refuse(msg.TYPE, "unavailable", "model not built yet")
        try:
            state = from_payloads(msg.tensors, self.reference)
        except WeightsError as exc:
            return self._refuse(msg.TYPE, "bad_model", str(exc))
        why = self._not_from_trainer(identity, msg)
        if why is not None:
            return self._refuse(msg.TYPE, "wrong_sender", why)
        self.store(msg.round, ReceivedModel(msg.trainer, msg.hash, msg.samples, state))
        self.stats.pushes_received += 1
        return m.ModelAck(round=msg.round, trainer=msg.trainer, hash=msg.hash)

    def _not_from_trainer(self, identity: zmq.Frame, msg: m.ModelPush) -> str | None:
        """Why ``msg`` did not come from its trainer's own connection, or None when it did."""
        if msg.sender != msg.trainer:
            return f"{msg.sender} pushed {msg.trainer}'s model: a trainer pushes only its own"
        if identity.bytes != msg.sender.encode():
            return f"the connection of {identity.bytes[:64]!r} sent a push in {msg.sender}'s name"
        if self._security is not None:
            key = peer_key(identity)
            expected = self._security.peer_keys.get(msg.sender)
            if expected is None or key.encode("ascii", "replace") != expected:
                return f"the connection's CURVE key is not {msg.sender}'s in the broadcast"
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
        self, round: int, trainers: Callable[[], set[str]], timeout: float
    ) -> bool:
        """Wait (bounded) until the inbox holds every model of ``trainers()`` for ``round``.

        ``trainers`` is re-read on every wake-up, so a trainer that drops stops being waited for.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            arrival = self._arrival
            if trainers() <= set(self.inbox.get(round, {})):
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
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

    # ----------------------------------------------------------------- pushing

    async def push(
        self,
        peers: dict[str, str],
        *,
        round: int,
        trainer: str,
        model_hash_: str,
        samples: int,
        tensors: tuple[TensorPayload, ...],
        timeout: float,
        wanted: Callable[[str], bool] = lambda peer: True,
    ) -> dict[str, str]:
        """Push one model to every peer that has not acked it yet; returns peer -> outcome.

        ``wanted(peer)`` is re-read while a push waits: a peer that stops being wanted (it was
        dropped from the run) is given up at once instead of holding the push until ``timeout``.
        """
        held = self.acked.setdefault((round, trainer), set())
        todo = {p: ep for p, ep in peers.items() if p not in held and p != self.node_id}
        msg = m.ModelPush(
            run_id=self.run_id,
            sender=self.node_id,
            round=round,
            trainer=trainer,
            hash=model_hash_,
            samples=samples,
            tensors=tensors,
        )
        frames = encode(msg)
        size = sum(len(memoryview(f)) for f in frames)
        results = await asyncio.gather(
            *(
                self._push_one(peer, ep, frames, size, timeout, wanted)
                for peer, ep in sorted(todo.items())
            )
        )
        outcome = dict(zip(sorted(todo), results, strict=True))
        held.update(p for p, r in outcome.items() if r == "ok")
        return outcome

    async def _push_one(
        self,
        peer: str,
        endpoint: str,
        frames: list,
        size: int,
        timeout: float,
        wanted: Callable[[str], bool],
    ) -> str:
        lock = self._dealer_locks.setdefault(endpoint, asyncio.Lock())
        async with lock:
            sock = self._dealers.get(endpoint)
            if sock is None:
                sock = self._dealers[endpoint] = self._dealer_to(peer, endpoint)
            deadline = asyncio.get_running_loop().time() + timeout
            try:
                await _while_wanted(
                    sock.send_multipart(frames, copy=False), deadline, lambda: wanted(peer)
                )
                self.stats.bytes_sent += size
                self.stats.pushes_sent += 1
                received = await _while_wanted(
                    sock.recv_multipart(copy=False), deadline, lambda: wanted(peer)
                )
                reply = decode(received, self._limits)
            except _NotWanted:
                self._drop_dealer(endpoint)
                return "given up: the peer left the run"
            except TimeoutError:
                self._drop_dealer(endpoint)
                return "timeout"
            except (zmq.ZMQError, DecodeError) as exc:
                self._drop_dealer(endpoint)
                return f"failed: {exc}"
        if isinstance(reply, m.ModelAck):
            return "ok"
        if isinstance(reply, m.Error):
            log.warning("peer %s refused our model: %s", peer, reply.reason)
            return f"refused: {reply.reason}"
        return f"unexpected reply {reply.TYPE}"

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
