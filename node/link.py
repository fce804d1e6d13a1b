"""A node's connection to the console: join, follow the broadcasts, heartbeat, reconnect.

The join reply carries the current snapshot (the ZeroMQ guide's Clone pattern), so a node
that starts late has the state at once; after that it follows the PUB broadcasts, ignoring
stale sequence numbers. If the console goes away or restarts, requests time out or come back
``not_member``; the link then reconnects with jittered backoff and joins again on its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq
import zmq.asyncio

from transport import messages as m
from transport.codec import DecodeError, Limits, decode, encode
from transport.fields import MAX_TEXT_LEN, ErrorCode
from transport.net import connectable
from transport.retry import Backoff
from transport.sockets import CurveConfig, HandshakeWatch, SocketFactory
from transport.spec import RunSpec
from transport.state import ClientStatus, RunSnapshot
from transport.tasks import cancel_and_wait

if TYPE_CHECKING:
    from node.gossip import GossipStats

log = logging.getLogger(__name__)

REPLY_LIMITS = Limits(max_frames=512, max_header_bytes=64 << 20, max_total_bytes=2 << 30)
HANDSHAKE_CHECK = 0.1  # CURVE: seconds between two looks at the DEALER's handshakes
REPLY_CHECK = 0.25  # seconds between two looks at the console's broadcasts while awaiting a reply
# The console broadcasts its state at every tick (heartbeat_interval); a request stops waiting
# for its reply when the console has been silent this many ticks (and at least SILENCE_MIN
# seconds), instead of waiting out request_timeout for a console that is gone.
SILENCE_TICKS = 8
SILENCE_MIN = 2.0
JOIN_BACKOFF = Backoff(first=0.1, cap=5.0)  # joining again while the console is unreachable
# refusals of a join that joining again cannot change
_FATAL_JOIN_CODES = frozenset(
    {
        ErrorCode.WRONG_RUN_ID,
        ErrorCode.KICKED,
        ErrorCode.BANNED,
        ErrorCode.MALFORMED,
        ErrorCode.WRONG_STATE,
    }
)
# refusals of any request that end this node's part in the run: the operator removed it
_FATAL_REQUEST_CODES = frozenset({ErrorCode.KICKED, ErrorCode.BANNED})


class JoinRejected(RuntimeError):
    """The console refused us for good (wrong run id, kicked): retrying will not help."""


class ConsoleUnreachable(RuntimeError):
    """No reply in time: the console is down or restarting."""


class KeyRefused(JoinRejected):
    """CURVE: the console's ZAP handler refused this node's public key."""


@dataclass
class Received:
    snapshot: RunSnapshot
    seq: int
    at: float  # local monotonic time of receipt

    def local_deadline(self) -> float | None:
        """The phase deadline translated into this node's monotonic clock."""
        if self.snapshot.deadline is None:
            return None
        return self.at + max(0.0, self.snapshot.deadline - self.snapshot.now)


class ConsoleLink:
    def __init__(
        self,
        *,
        node_id: str,
        run_id: str,
        control_endpoint: str,
        gossip_endpoint: str,
        context: zmq.asyncio.Context,
        request_timeout: float = 10.0,
        security: CurveConfig | None = None,
    ) -> None:
        self.node_id = node_id
        self.run_id = run_id
        self.control_endpoint = control_endpoint
        self.gossip_endpoint = gossip_endpoint
        self.request_timeout = request_timeout
        self.security = security  # CURVE: this node's keys and the console's public key
        self._factory = SocketFactory(context, security=security)
        self._watch: HandshakeWatch | None = None  # why the DEALER to the console fails
        self._handshakes: set[str] = set()  # the failed handshake outcomes seen on it
        self._silent_for: float | None = None  # the last request gave up on a silent console
        self._dealer: zmq.asyncio.Socket | None = None
        self._sub: zmq.asyncio.Socket | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self.latest: Received | None = None
        self.spec: RunSpec | None = None
        self.spec_version = 0  # the version of ``spec`` (the broadcast's spec_version then)
        self.stage = "joining"
        self.round = 0
        self.gossip_stats: GossipStats | None = None  # reported with every heartbeat
        self.connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.on_snapshot: list[Callable[[RunSnapshot], None]] = []
        # set when the console answered kicked or banned: the node must leave (exit 3)
        self.removed = asyncio.Event()
        self.removal = ""

    # ----------------------------------------------------------------- joining

    async def start(self, *, max_wait: float | None = None) -> RunSpec:
        """Join (retrying while the console is unreachable) and start following it."""
        await self._join_with_backoff(max_wait=max_wait)
        await self._leave_stale_membership()
        self._tasks = [
            asyncio.create_task(self._follow(), name="follow"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
        ]
        assert self.spec is not None
        return self.spec

    async def _leave_stale_membership(self) -> None:
        """A new process that finds its id already a member of the running epoch joined in
        the place of a previous process under that id, which died and is not dropped yet:
        the epoch would wait for that one's reports until its timeouts (this process has no
        part of its work). Leave that membership, so the run stops waiting on it at once, and
        join again for the next epoch. (Admitted by this very join, ``joined_at`` is ``now``.)
        """
        snap = self.latest.snapshot if self.latest is not None else None
        me = snap.client(self.node_id) if snap is not None else None
        if snap is None or me is None or me.status is not ClientStatus.ACTIVE:
            return
        if me.joined_at >= snap.now:
            return
        log.warning(
            "%s is a member of epoch %d from a previous process: leaving it",
            self.node_id,
            snap.epoch,
        )
        try:
            await self._request_raw(
                m.Leave(node_id=self.node_id, reason="restarted: a new process under this id"),
                timeout=min(self.request_timeout, 3.0),
            )
        except ConsoleUnreachable as exc:  # joining again below retries until it is back
            log.warning("could not leave the old membership: %s", exc)
        await self._join_with_backoff()

    async def _join_with_backoff(self, *, max_wait: float | None = None) -> None:
        waits = JOIN_BACKOFF.delays()
        started = time.monotonic()
        while True:
            try:
                await self._join_once()
                return
            except ConsoleUnreachable as exc:
                if max_wait is not None and time.monotonic() - started > max_wait:
                    raise
                wait = next(waits)
                log.info(
                    "console %s unreachable (%s); retrying in %.1fs",
                    self.control_endpoint,
                    exc,
                    wait,
                )
                await asyncio.sleep(wait)

    async def _join_once(self) -> None:
        self.connected.clear()
        self._reset_dealer()
        join = m.Join(
            run_id=self.run_id,
            node_id=self.node_id,
            gossip_endpoint=self.gossip_endpoint,
            pid=os.getpid(),
            host=socket.gethostname(),
        )
        reply = await self._request_raw(join, timeout=min(self.request_timeout, 3.0))
        if isinstance(reply, m.Error):
            if reply.code in _FATAL_JOIN_CODES:
                raise JoinRejected(f"join refused ({reply.code}): {reply.reason}")
            raise ConsoleUnreachable(f"join not accepted yet ({reply.code}): {reply.reason}")
        if not isinstance(reply, m.JoinAck):
            raise ConsoleUnreachable(f"unexpected reply to join: {reply.TYPE}")
        self.spec, snapshot = reply.spec, reply.snapshot
        self.spec_version = snapshot.spec_version
        # A console bound on every interface announces tcp://0.0.0.0:PORT: use its real host.
        state_endpoint = connectable(reply.state_endpoint, self.control_endpoint)
        if self._sub is None or self._sub_endpoint != state_endpoint:
            if self._sub is not None:
                self._sub.close(linger=0)
            self._sub = self._factory.sub(state_endpoint)
            self._sub_endpoint = state_endpoint
        # A restarted console counts its sequence from scratch: the join reply is the new baseline.
        self.latest = None
        await self._accept(snapshot, reply.seq)
        self.connected.set()
        log.info("joined run %s as %s (state %s)", self.run_id, self.node_id, snapshot.state)

    _sub_endpoint: str = ""

    def _reset_dealer(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._dealer is not None:
            self._dealer.close(linger=0)
        self._handshakes = set()
        self._dealer = self._factory.dealer(
            self.node_id, self.control_endpoint, immediate=False, before_connect=self._watch_new
        )

    def _watch_new(self, dealer: zmq.Socket) -> None:
        """Watch a new DEALER's handshakes from before it connects: a refusal is not retried,
        so its one event must not be missed."""
        self._watch = HandshakeWatch(dealer)

    # ----------------------------------------------------------------- requests

    async def request(self, msg: m.Message, *, timeout: float | None = None) -> m.Message:
        """Send one request and return its reply; rejoin if the console forgot us."""
        await asyncio.wait_for(self.connected.wait(), timeout or self.request_timeout)
        reply = await self._request_raw(msg, timeout=timeout, watch_silence=True)
        if isinstance(reply, m.Error) and reply.code in _FATAL_REQUEST_CODES:
            if not self.removed.is_set():
                self.removal = f"{msg.TYPE} refused ({reply.code}): {reply.reason}"
                log.error("the console removed this node: %s", self.removal)
                self.removed.set()
            return reply
        if (
            isinstance(reply, m.Error)
            and reply.code == ErrorCode.NOT_MEMBER
            and msg.TYPE == "heartbeat"
        ):
            log.warning("console no longer knows us (%s); joining again", reply.reason)
            await self._rejoin()
        return reply

    async def _request_raw(
        self, msg: m.Message, *, timeout: float | None = None, watch_silence: bool = False
    ) -> m.Message:
        """One request and its reply. ``watch_silence``: give up early when the console's
        broadcasts stop (not for joins: a node that is not following yet hears none)."""
        async with self._lock:
            assert self._dealer is not None
            dealer = self._dealer
            await dealer.send_multipart(encode(msg), copy=False)
            self._silent_for = None
            if not await self._wait_reply(
                dealer, timeout or self.request_timeout, watch_silence=watch_silence
            ):
                # Drop the socket so a late reply can never be taken for the next request's.
                why = self._no_reply_reason()
                self._reset_dealer()
                raise ConsoleUnreachable(
                    f"no reply to {msg.TYPE} from {self.control_endpoint}{why}"
                )
            frames = await dealer.recv_multipart(copy=False)
        try:
            return decode(frames, REPLY_LIMITS)
        except DecodeError as exc:
            if exc.ref == "join_ack":  # a spec or snapshot we cannot follow: retrying won't help
                raise JoinRejected(f"console sent an unusable join reply: {exc.reason}") from exc
            raise ConsoleUnreachable(f"unreadable reply to {msg.TYPE}: {exc.reason}") from exc

    async def _wait_reply(
        self, dealer: zmq.asyncio.Socket, timeout: float, *, watch_silence: bool = False
    ) -> bool:
        """Wait (bounded) for a reply; a refused CURVE key ends the wait at once, and so does
        a console whose broadcasts stopped (``watch_silence``)."""
        if self._watch is None and not watch_silence:
            return bool(await dealer.poll(int(1000 * timeout), zmq.POLLIN))
        started = time.monotonic()
        deadline = started + timeout
        check = HANDSHAKE_CHECK if self._watch is not None else REPLY_CHECK
        while True:
            remaining = deadline - time.monotonic()
            if await dealer.poll(max(1, int(1000 * min(remaining, check))), zmq.POLLIN):
                return True
            if self._watch is not None:
                self._check_handshakes()
            if watch_silence and (silent := self._console_silence(started)) is not None:
                self._silent_for = silent
                return False
            if remaining <= check:
                return False

    def _console_silence(self, since: float) -> float | None:
        """How long the console has sent no state (counted from ``since`` at the earliest),
        when that is longer than it ever is while the console runs; else None."""
        if self.spec is None:
            return None
        # Never peek at the SUB (getsockopt(EVENTS)): reading EVENTS on a zmq.asyncio socket
        # consumes the edge of its file descriptor, and the pending recv in _follow then never
        # wakes although broadcasts keep arriving (a node froze at an old round that way).
        # Silence counts from ``since`` at the earliest, so time this node spent busy before
        # the wait began is not mistaken for a silent console.
        heard = since if self.latest is None else max(since, self.latest.at)
        silent = time.monotonic() - heard
        limit = max(SILENCE_MIN, SILENCE_TICKS * self.spec.heartbeat_interval)
        return silent if silent > limit else None

    def _check_handshakes(self) -> None:
        assert self._watch is not None
        for shake in self._watch.drain():
            if shake.outcome != "ok":
                self._handshakes.add(shake.outcome)
            if shake.outcome == "refused" and self.security is not None:
                key = (self.security.client_public or b"").decode()
                raise KeyRefused(
                    f"the console refused this node's CURVE key {key}: it is not among the "
                    "console's authorized keys; give the operator this node's .key file "
                    "(for [security] authorized_keys)"
                )

    def _no_reply_reason(self) -> str:
        """What the failed handshakes (if any) say about a request that got no reply."""
        if self._silent_for is not None:
            return f": the console has broadcast nothing for {self._silent_for:.1f}s (it is down)"
        seen = self._handshakes
        if self.security is None:
            if seen:  # a plain (NULL) handshake fails only against a CURVE console
                return (
                    ": the handshake failed, so the console probably uses CURVE; start this node "
                    "with --curve-key and --server-key (key files from fl-console keygen)"
                )
            return ""
        if "mechanism" in seen:
            return (
                ": the console does not use CURVE; start this node without --curve-key and "
                "--server-key, or set [security] curve = true on the console"
            )
        if seen & {"crypto", "failed"}:
            return ": the CURVE handshake failed; is --server-key the console's public key?"
        return ": no reply from the console: is this node's public key authorized?"

    async def _rejoin(self) -> None:
        self.connected.clear()
        await self._join_with_backoff()

    # ----------------------------------------------------------------- following the state

    async def _accept(self, snapshot: RunSnapshot, seq: int) -> None:
        previous = self.latest
        if previous is not None and seq <= previous.seq:
            return  # stale or duplicate
        if previous is not None and seq > previous.seq + 1:
            log.debug(
                "state broadcasts %d..%d missed; the full snapshot re-syncs us",
                previous.seq + 1,
                seq - 1,
            )
        self.latest = Received(snapshot, seq, time.monotonic())
        for callback in self.on_snapshot:
            callback(snapshot)
        async with self._changed:
            self._changed.notify_all()

    async def _follow(self) -> None:
        while True:
            if self._sub is None:
                await asyncio.sleep(0.1)
                continue
            frames = await self._sub.recv_multipart(copy=False)
            try:
                msg = decode(frames, REPLY_LIMITS)
                if not isinstance(msg, m.StateUpdate):
                    continue
                snapshot = msg.snapshot
            except DecodeError as exc:
                log.warning("ignored a malformed state broadcast: %s", exc)
                continue
            if snapshot.run_id != self.run_id:
                continue
            await self._accept(snapshot, msg.seq)

    async def _heartbeat(self) -> None:
        assert self.spec is not None
        while not self.removed.is_set():
            await asyncio.sleep(self.spec.heartbeat_interval)  # a new spec may change it
            try:
                await self.request(
                    self._heartbeat_message(), timeout=max(1.0, self.spec.health_timeout)
                )
            except (ConsoleUnreachable, TimeoutError):
                if self._closing:
                    return
                log.warning("console unreachable; reconnecting")
                await self._rejoin()

    def _heartbeat_message(self) -> m.Heartbeat:
        """Alive, what it is doing, and what its gossip ROUTER refused (so the operator sees
        hostile pushes to nodes too, not only those to the console)."""
        stats = self.gossip_stats
        return m.Heartbeat(
            node_id=self.node_id,
            stage=self.stage,
            round=self.round,
            gossip_refused=stats.rejected if stats is not None else 0,
            gossip_refusal=stats.rejections[-1][:MAX_TEXT_LEN]
            if stats and stats.rejections
            else "",
        )

    async def wait_for(
        self, predicate: Callable[[RunSnapshot], bool], timeout: float
    ) -> RunSnapshot | None:
        """Wait (bounded) until the latest snapshot satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                if self.latest is not None and predicate(self.latest.snapshot):
                    return self.latest.snapshot
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    return None

    @property
    def snapshot(self) -> RunSnapshot:
        assert self.latest is not None, "not joined"
        return self.latest.snapshot

    # ----------------------------------------------------------------- leaving

    async def close(self, *, leave: bool = True, reason: str = "shutdown") -> None:
        self._closing = True
        await cancel_and_wait(self._tasks)
        if leave and self.connected.is_set():
            try:
                await self._request_raw(m.Leave(node_id=self.node_id, reason=reason), timeout=1.0)
            except (ConsoleUnreachable, zmq.ZMQError):
                pass
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        for sock in (self._dealer, self._sub):
            if sock is not None:
                sock.close(linger=0)
        self._dealer = self._sub = None
