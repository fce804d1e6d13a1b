"""The DEALER side of the gossip service: pushes and requests to peers' ROUTERs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import zmq
import zmq.asyncio

from node.gossip.received import ReceivedModel
from node.gossip.stats import GossipStats
from node.security import NodeSecurity
from transport import messages as m
from transport.codec import DecodeError, Limits, decode, encode
from transport.fields import ErrorCode
from transport.retry import Backoff, pause
from transport.sockets import SocketFactory

log = logging.getLogger(__name__)

T = TypeVar("T")
PUSH_POLL = Backoff(first=0.1, cap=0.1)  # pushing again to a peer with no commit or model yet
WANTED_SLICE = 0.05  # how often a waiting push re-checks that its peer is still in the run


class GossipDealers:
    """Sends pushes and requests over one DEALER per peer (part of ``GossipService``): the
    trainer's own push, a relay's forwarding and a fetch all go through ``_exchange``."""

    node_id: str
    run_id: str
    acked: dict[tuple[int, str], set[str]]
    stats: GossipStats
    is_live: Callable[[str], bool]
    endpoint_of: Callable[[str], str | None]
    _security: NodeSecurity | None
    _factory: SocketFactory
    _limits: Limits
    _dealers: dict[str, zmq.asyncio.Socket]
    _dealer_locks: dict[str, asyncio.Lock]

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
