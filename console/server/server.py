"""The console's server: the only place console-side sockets live.

It binds the state PUB and the control ROUTER, feeds every request to the coordinator,
answers every request (an ack, or an error naming what was wrong), ticks the coordinator
for timeouts exactly when something can time out, broadcasts the state with a sequence
number on every change and at every tick, writes the event log, and stores checkpoints.
It runs on whatever asyncio loop it is started on: Textual's, or ``asyncio.run`` when
headless.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import time
from bisect import bisect_left
from collections.abc import Callable
from pathlib import Path

import msgspec
import zmq
import zmq.asyncio

from console.config import Config
from console.coordinator import Coordinator, Outcome
from console.coordinator.events import ClientJoined, Stall, StateChanged
from console.record.eventlog import EventLog
from console.record.records import RunRecords
from console.record.replay import view_to_dict
from console.record.settled import row_round
from console.record.view import ConsoleView, RoundRow
from console.server.checkpoint import (
    CheckpointError,
    StoredCheckpoint,
    load_latest,
)
from console.server.history import HISTORY_LAG, RoundHistory
from console.server.operator import OperatorRequests
from console.server.remote import RemoteRequests
from console.server.requests import Endpoints, NodeRequests, rate_limited
from console.server.security import ConsoleSecurity
from console.server.settings import ConfigFile
from transport import messages as m
from transport.codec import encode
from transport.fields import ErrorCode
from transport.flood import YIELD_EVERY, Admit, FloodGuard
from transport.net import is_loopback
from transport.sockets import (
    PeerUnreachable,
    SocketFactory,
    peer_address,
    peer_key,
    send_to,
)
from transport.state import RoundOutcome, RunState
from transport.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Events that change what nodes do next are broadcast at once; the rest are coalesced.
URGENT_EVENTS = frozenset(
    {
        "state_changed",
        "round_started",
        "round_ended",
        "witnesses_replaced",
        "client_dropped",
        "client_kicked",
        "client_banned",
        "client_unbanned",
        "client_left",
        "training_declined",
        "epoch_started",
        "checkpoint_requested",
        "checkpoint_saved",
        "run_finished",
        "pause_requested",
        "paused",
        "resumed",
    }
)
COALESCE_SECONDS = 0.005
FINAL_REPORT_GRACE = 5.0  # seconds a Finished run waits for the last round's aggregate reports
# Rounds this recent may still gain reports (late aggregates, metrics); older decided ones are
# settled: their records kept in compact form (RunRecords.settle), so memory stays flat.
ROUNDS_OPEN_TO_REPORTS = HISTORY_LAG + 2
VIEW_RECORD_INTERVAL = 0.25  # seconds between two view records in events.jsonl (--replay)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 128 << 10


def return_big_buffers() -> None:
    """Have glibc give every freed buffer of 128 KiB or more back to the system at once.

    The control socket takes messages of up to 64 MB, and a peer may queue many: a burst of
    200 one-megabyte garbage messages lifted the console's RSS from 45 to 110 MB and it stayed
    there (glibc raises its mmap threshold after freeing a big block, so the next big buffers
    come from the heap and are kept). A fixed threshold keeps the burst's cost transient.
    Nothing to do where the C library is not glibc.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass


class ConsoleServer(NodeRequests, OperatorRequests, RemoteRequests):
    """Server + coordinator. Call :meth:`start`, then await :meth:`serve` (until Finished)."""

    def __init__(
        self,
        config: Config,
        *,
        run_dir: Path,
        resume: bool = False,
        clock: Callable[[], float] = time.monotonic,
        tick_interval: float | None = None,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.clock = clock
        self.tick_interval = tick_interval or config.coordinator.heartbeat_interval
        self.checkpoint_dir = config.checkpoint.dir / config.run_id
        self.events = EventLog(run_dir / "events.jsonl")
        self.records = RunRecords()
        self.seq = 0
        self.rejected_messages = 0
        self._stall: Stall | None = None  # the latest stall of this wait for members
        self.flood = FloodGuard(
            limit=config.server.refusal_limit, backoff=config.server.refusal_backoff
        )
        # [security] curve: CURVE keys, the node allowlist, refused connections (None: off)
        self.security = (
            ConsoleSecurity(config.security, self.events) if config.security.curve else None
        )
        self._factory: SocketFactory | None = None
        self._view_recorded: tuple[float, object] = (float("-inf"), None)  # time, (state, round)
        self._rows_recorded: dict[int, RoundRow] = {}  # round -> its row as last recorded
        self._rows_recorded_through = -1  # rows up to this round: recorded and settled (-1: none)
        self.history = RoundHistory(self.checkpoint_dir)  # settled rounds, beside checkpoints
        self.listeners: list[Callable[[], None]] = []
        self._stored: StoredCheckpoint | None = None
        self._resume = resume
        self._ctx: zmq.asyncio.Context | None = None
        self._pub: zmq.asyncio.Socket | None = None
        self._pub_out: zmq.Socket | None = None  # the same socket, synchronous (see start)
        self._control: zmq.asyncio.Socket | None = None
        self._wake = asyncio.Event()
        self._pending_broadcast: asyncio.TimerHandle | None = None
        self._finished = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.endpoints = Endpoints("", "")
        # data.serve: the data server's address, told to nodes in every snapshot (the launcher
        # may correct it once the data server has bound, e.g. port 0).
        self.data_server: str | None = config.run_spec().data_endpoint or None
        self.coordinator = self._make_coordinator()
        # live settings: the file as read, and the config whose spec nodes build epochs with
        self.config_file = ConfigFile(config.source)
        self.spec_config = config
        self.spec_version = 0

    # ----------------------------------------------------------------- lifecycle

    def _make_coordinator(self) -> Coordinator:
        cfg = self.config
        restore = None
        if self._resume:
            self._stored = load_latest(self.checkpoint_dir)
            if self._stored is None:
                raise CheckpointError(f"--resume: no checkpoint in {self.checkpoint_dir}")
            restore = self.history.restore(self._stored.state)
        coordinator = Coordinator(
            cfg.coordinator,
            run_id=cfg.run_id,
            seed=cfg.seed,
            train_set_size=cfg.learning.train_set_size,
            now=self.clock(),
            restore=restore,
        )
        if self._stored is not None:
            self.events.write(
                self.clock(),
                "resume",
                f"resumed from epoch {self._stored.epoch} checkpoint (round {self._stored.round})",
            )
        return coordinator

    def start(self) -> Endpoints:
        """Bind the sockets (port 0 picks a free port) on the running loop."""
        return_big_buffers()
        cfg = self.config.server
        self._ctx = zmq.asyncio.Context()
        if self.security is None:
            factory = self._factory = SocketFactory(self._ctx)
        else:
            factory = self._factory = self.security.socket_factory(self._ctx, self.clock)
        # The PUB is written from plain callbacks (a coalesced broadcast): a synchronous view of
        # it raises its errors here, where an asyncio socket would park them in a future nobody
        # awaits ("Future exception was never retrieved" at shutdown).
        self._pub = factory.pub(cfg.endpoint(cfg.state_port))
        self._pub_out = zmq.Socket.shadow(self._pub.underlying)
        self._control = factory.router(cfg.endpoint(cfg.control_port))
        if self.security is not None:
            self.security.watch(self._control)
            self.events.write(
                self.clock(),
                "server",
                f"CURVE on: {len(self.security.allowlist)} authorized node keys",
            )
        self.endpoints = Endpoints(
            state=self._pub.getsockopt_string(zmq.LAST_ENDPOINT),
            control=self._control.getsockopt_string(zmq.LAST_ENDPOINT),
        )
        self.events.write(
            self.clock(),
            "server",
            f"serving run {self.config.run_id!r}: control {self.endpoints.control}, "
            f"state {self.endpoints.state}",
        )
        if self.security is None and not is_loopback(cfg.host):
            self.events.write(
                self.clock(),
                "server",
                f"listening on {cfg.host} without encryption: anyone who can reach it can join "
                "and read the run; set [security] curve = true (README: encrypted nodes)",
                level="warning",
            )
        self._tasks = [
            asyncio.create_task(self._control_loop(), name="control"),
            asyncio.create_task(self._tick_loop(), name="ticker"),
        ]
        self._broadcast()
        return self.endpoints

    async def serve(
        self, timeout: float | None = None, *, settle: float = FINAL_REPORT_GRACE
    ) -> RunState:
        """Wait until the run is Finished (or ``timeout`` passes); returns the final state.

        A Finished run is served ``settle`` seconds more at most, until every live client has
        reported its aggregate of the last round: the checkpoint upload ends the run at once,
        and a node still aggregating (a slow link, a busy CPU) would otherwise report to a
        console that is gone, leaving the final round's records one node short.
        """
        try:
            await asyncio.wait_for(self._finished.wait(), timeout)
        except TimeoutError:
            return self.coordinator.state
        deadline = self.clock() + settle
        while self.final_reports_missing() and self.clock() < deadline:
            await asyncio.sleep(0.02)
        return self.coordinator.state

    def final_reports_missing(self) -> set[str]:
        """Live clients whose aggregate of the accepted last round has not come in."""
        snap = self.coordinator.snapshot(self.clock())
        last = snap.current
        if last is None or last.outcome is not RoundOutcome.ACCEPTED:
            return set()
        record = self.records.rounds.get(last.round)  # .get: a defaultdict, not grown here
        reported = set(record.aggregates) if record is not None else set()
        return {c.id for c in snap.live_clients} - reported

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []
        self._flood_reports(self.clock(), final=True)  # the last interval's refusals
        if self._pending_broadcast is not None:
            self._pending_broadcast.cancel()
            self._pending_broadcast = None
        if self.security is not None:
            self.security.close()
        for sock in (self._pub, self._control):
            if sock is not None:
                sock.close(linger=0)
        self._pub = self._pub_out = self._control = None
        if self._factory is not None:
            self._factory.close()  # the ZAP thread, before its context goes
            self._factory = None
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None
        self.events.close()

    def spawn_args(self, name: str) -> tuple[str, ...]:
        """Extra ``fl-node`` arguments for a local node this console spawns (CURVE keys)."""
        return () if self.security is None else self.security.spawn_args(name)

    # ----------------------------------------------------------------- what the console shows

    def view(self, *, rounds_from: int = 0) -> ConsoleView:
        """What the console shows; ``rounds_from``: only the rows of rounds numbered from it
        (an attached screen that holds the older ones)."""
        now = self.clock()
        snap = self.coordinator.snapshot(now)
        return ConsoleView(
            run=snap,
            address=self.endpoints.control,
            seq=self.seq,
            clients=self.records.client_rows(snap),
            rounds=self._round_rows(rounds_from),
            log=tuple(self.events.tail),
            rejected_messages=self.rejected_messages,
            dropped_messages=self.flood.dropped,
            throttled_peers=tuple(self.flood.throttled(now)),
            checkpoint_dir=str(self.checkpoint_dir),
            epsilon=self.records.worst_epsilon() if self.config.privacy.dp else None,
            delta=self.config.privacy.delta if self.config.privacy.dp else None,
            notes={} if self._stall is None else {"stalled": self._stall.short()},
        )

    def _round_rows(self, rounds_from: int) -> tuple[RoundRow, ...]:
        """The rows of the rounds numbered from ``rounds_from``: settled ones as the records
        keep them, the recent ones built from the coordinator's views."""
        settled = self.records.settled
        recent = self.coordinator.rounds_after(max(settled.through, rounds_from - 1))
        rows = tuple(self.records.round_row(v) for v in recent)
        return rows if rounds_from > settled.through else settled.rows(rounds_from) + rows

    def _settle_rounds(self) -> None:
        """Settle the decided rounds older than the last ``ROUNDS_OPEN_TO_REPORTS`` (their
        records go into compact form), so what the console holds per round stays small."""
        views = self.coordinator.rounds_after(self.records.settled_through)
        for view in views:
            if (
                view.round > views[-1].round - ROUNDS_OPEN_TO_REPORTS
                or view.outcome is RoundOutcome.OPEN
            ):
                break
            self.records.settle(view)

    # ----------------------------------------------------------------- control socket

    async def _control_loop(self) -> None:
        assert self._control is not None
        sock = self._control
        clients = self.records.clients
        # After a drop, the next message is read synchronously when one waits: the same
        # socket, without the asyncio future per message (most of a dropped message's cost).
        now_or_never = zmq.Socket.shadow(sock.underlying)
        received = 0
        frames: list[zmq.Frame] | None = None
        while True:
            if frames is None:
                frames = await sock.recv_multipart(copy=False)
            received += 1
            if received % YIELD_EVERY == 0:  # a ready recv never yields: let ticks run
                await asyncio.sleep(0)
            identity = frames[0].bytes
            address = peer_address(frames[-1])
            sender = identity.decode("utf-8", "replace")
            # a peer in back-off is dropped unread (members never are); see transport/flood.py
            admit = self.flood.admit(sender, address, sender in clients, self.clock())
            if admit is Admit.DROP:
                try:
                    frames = now_or_never.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    frames = None
                continue
            size = sum(len(f.buffer) for f in frames[1:])
            if admit is Admit.TELL:
                replies: list[m.Message] = [rate_limited("?", self.flood.backoff)]
            else:
                key = peer_key(frames[-1]) if self.security is not None else ""
                try:
                    replies = self.handle(identity, frames[1:], size, key=key, address=address)
                except Exception as exc:  # a bug in one request must not silence the console
                    log.exception("request from %r failed", identity)
                    self.events.write(
                        self.clock(), "server", f"a request failed: {exc!r}", level="error"
                    )
                    replies = [m.Error(ref="?", code=ErrorCode.UNAVAILABLE, reason="failed")]
            frames = None
            sent = 0
            for reply in replies:
                try:
                    sent += await send_to(sock, identity, reply)
                except (PeerUnreachable, zmq.ZMQError) as exc:  # peer gone: nothing to answer
                    log.debug("reply to %r not delivered: %s", identity, exc)
                    break
            self.records.bytes_out(identity.decode("utf-8", "replace"), sent)

    # ----------------------------------------------------------------- ticking and broadcast

    async def _tick_loop(self) -> None:
        while True:
            now = self.clock()
            wake = self.coordinator.next_wakeup(now)
            delay = self.tick_interval if wake is None else min(self.tick_interval, wake - now)
            self._wake.clear()
            try:  # not wait_for: on 3.11 it swallows a cancel that races the wake-up (stop hangs)
                async with asyncio.timeout(max(0.0, delay)):
                    await self._wake.wait()
            except TimeoutError:
                pass
            now = self.clock()
            if self.security is not None:
                self.security.poll(now)  # handshakes refused since the last tick
            self._flood_reports(now)
            outcome = self.coordinator.tick(now)
            self._after(outcome, now, force_broadcast=True)

    def _after(self, outcome: Outcome, now: float, *, force_broadcast: bool = False) -> None:
        """Log what happened, broadcast at once if anything did, wake the ticker."""
        for event in outcome.events:
            if isinstance(event, StateChanged) and event.new is RunState.WARMUP:
                self._activate_spec(now)
            fields = _fields(event)
            if isinstance(event, ClientJoined) and event.client_id in self.records.clients:
                record = self.records.clients[event.client_id]  # the process behind the id
                fields.update(pid=record.pid, host=record.host)
            self.events.write(
                now,
                event.kind,
                event.describe(),
                level=event.level,
                detail=event.routine,
                **fields,
            )
            self.records.on_event(event, now)
            if isinstance(event, Stall):
                self._stall = event
        if any(e.kind == "round_ended" for e in outcome.events):
            self._settle_rounds()
        if self._stall is not None and self.coordinator.state is not RunState.WAITING_FOR_MEMBERS:
            self._stall = None  # the wait is over
        if force_broadcast or any(e.kind in URGENT_EVENTS for e in outcome.events):
            self._broadcast()
            self._wake.set()
        elif outcome.events:
            self._broadcast_soon()
        if self.coordinator.state is RunState.FINISHED:
            self._finished.set()
        for listener in self.listeners:
            listener()

    def _broadcast_soon(self) -> None:
        """Coalesce the broadcasts of minor events (votes, commits) into one a few ms later."""
        if self._pending_broadcast is None and self._pub is not None:
            loop = asyncio.get_running_loop()
            self._pending_broadcast = loop.call_later(COALESCE_SECONDS, self._broadcast)

    def _broadcast(self) -> None:
        if self._pending_broadcast is not None:
            self._pending_broadcast.cancel()
            self._pending_broadcast = None
        if self._pub_out is None:
            return
        self.seq += 1
        snap = self._snapshot(self.clock())
        frames = encode(m.StateUpdate(seq=self.seq, snapshot=snap))
        try:
            self._pub_out.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:  # PUB never blocks; this is a closed socket at shutdown
            log.debug("broadcast failed: %s", exc)
        self._record_view(self.clock())

    def _record_view(self, now: float) -> None:
        """Append the console's view to events.jsonl for ``--replay``: on every change of
        state or round, else at most every ``VIEW_RECORD_INTERVAL`` seconds."""
        fh = self.events._fh  # the log's own file, so views and log lines stay in order
        phase = (self.coordinator.state, self.coordinator.snapshot(now).round)
        last, last_phase = self._view_recorded
        if fh is None or (phase == last_phase and now - last < VIEW_RECORD_INTERVAL):
            return
        self._view_recorded = (now, phase)
        try:
            # Round rows are written when they change, not with every view (a long run's
            # views would grow with its rounds): the first view of this server has them all,
            # the later ones only the rows that changed since the last recorded view.
            # Rows of settled rounds never change again: once recorded they are forgotten here.
            current = self.view()
            full = self._rows_recorded_through < 0
            start = bisect_left(current.rounds, self._rows_recorded_through + 1, key=row_round)
            changed = [
                r for r in current.rounds[start:] if self._rows_recorded.get(r.round) is not r
            ]
            self._rows_recorded.update((r.round, r) for r in changed)
            settled = self.records.settled_through
            if settled > self._rows_recorded_through:
                for number in [n for n in self._rows_recorded if n <= settled]:
                    del self._rows_recorded[number]
                self._rows_recorded_through = settled
            view = view_to_dict(dataclasses.replace(current, rounds=tuple(changed)), with_log=False)
            if not full:
                view["rounds_delta"] = True
            line = msgspec.json.encode({"kind": "view", "t": round(now, 6), "view": view})
            fh.write(line.decode() + "\n")
            fh.flush()
        except (OSError, TypeError, ValueError) as exc:  # a replay record never stops the run
            log.warning("view record not written: %s", exc)


def _fields(event: object) -> dict[str, object]:
    """The event's own fields for the JSONL log (tuples become lists via json default)."""
    to_dict = getattr(event, "to_dict", None)
    data = to_dict() if to_dict is not None else dict(getattr(event, "__dict__", {}))
    data.pop("kind", None)
    return data
