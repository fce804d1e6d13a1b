"""The data server: hands each epoch client its shard, so nodes need no copy of the data.

    python -m node.dataserver --state tcp://HOST:STATE_PORT --bind tcp://HOST:DATA_PORT \\
        --run-id ID --spec-json '{...RunSpec.to_dict()...}'

The console starts it (``console/server/spawn.py``) when ``[data] serve = true``. It lives in
``node/`` because the console imports no torch: it loads the data with :mod:`node.data`,
follows the console's state broadcast (a plain SUB) to know the epoch and its members, and
answers each ``data_request{node_id, epoch}`` on its ROUTER with
``data_reply{epoch, classes, tensors: x, y, x_test, y_test}`` or an ``error``:

- ``unavailable``: no epoch in progress (before the first, between two, after the last);
- ``wrong_state``: the request names another epoch than the current one;
- ``not_member``: the sender is not a member of the current epoch;
- ``malformed`` (and the codec's codes): unreadable, not a ``data_request``, or a ``node_id``
  other than the socket's routing id.

A shard is cut exactly as a node cuts its own (:func:`node.data.shard` over the sorted epoch
members), so a served run trains on the same data as one where every node loads it. ``x`` keeps
the image shape ``(N, H, W)`` when the data has one. Every refusal is counted and logged.

Once bound and loaded it prints one line on stdout, ``ready ENDPOINT`` (the console waits for
it); logs go to stderr. SIGINT/SIGTERM stop it cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import zmq
import zmq.asyncio

from node.data import DataError, Dataset, load_dataset, shard
from node.weights import to_payloads
from transport import messages as m
from transport.codec import DecodeError, Limits, decode, encode
from transport.exit_codes import ExitCode
from transport.fields import ErrorCode
from transport.flood import YIELD_EVERY, Admit, FloodGuard
from transport.sockets import SocketFactory, endpoint, peer_address
from transport.spec import RunSpec, SpecError
from transport.state import ClientStatus, RunSnapshot, RunState
from transport.tasks import cancel_and_wait
from transport.tensors import TensorPayload

log = logging.getLogger(__name__)

REQUEST_LIMITS = Limits(max_frames=4, max_header_bytes=4096, max_total_bytes=4096)
REQUEST_MAX_BYTES = 64 << 10  # MAXMSGSIZE of the ROUTER: requests are a small header
STATE_LIMITS = Limits(max_frames=4, max_header_bytes=64 << 20, max_total_bytes=64 << 20)
EPOCH_STATES = frozenset(
    {RunState.WARMUP, RunState.ROUND_TRAIN, RunState.ROUND_WITNESS, RunState.COOLDOWN}
)
FOLLOW_WAIT = 10.0  # seconds to wait for the first broadcast before saying ready anyway


def epoch_members(snap: RunSnapshot) -> tuple[str, ...]:
    """The epoch's live members, sorted: the order shards are cut in (as nodes do)."""
    return tuple(sorted(c.id for c in snap.clients if c.status is ClientStatus.ACTIVE))


def wire_features(x: torch.Tensor, dataset: Dataset) -> torch.Tensor:
    """``x`` as sent: ``(N, H, W)`` when the data has an image shape, else ``(N, F)``."""
    if dataset.image_shape is None:
        return x
    return x.reshape(x.shape[0], *dataset.image_shape)


@dataclass
class ServeStats:
    served: int = 0
    rejected: int = 0
    by_code: Counter[str] = field(default_factory=Counter)


class DataRequests:
    """Answers data requests from the dataset and the latest snapshot. No sockets here."""

    def __init__(self, spec: RunSpec, dataset: Dataset) -> None:
        self.spec = spec
        self.dataset = dataset
        self.snapshot: RunSnapshot | None = None
        self.stats = ServeStats()
        self._held_out = to_payloads(
            {"x_test": wire_features(dataset.x_test, dataset), "y_test": dataset.y_test}
        )
        self._cut_for: tuple[int, tuple[str, ...]] | None = None  # (epoch, members) cached
        self._replies: dict[str, m.DataReply] = {}
        self.flood = FloodGuard()  # per-peer refusal accounting (transport/flood.py)
        self._members: tuple[RunSnapshot | None, frozenset[str]] = (None, frozenset())
        self._address = ""  # the peer address of the request being answered

    def is_member(self, node_id: str) -> bool:
        """``node_id`` is a member of the run in the latest snapshot (never rate-limited)."""
        snap = self.snapshot
        if snap is None:
            return False
        if self._members[0] is not snap:
            self._members = (snap, frozenset(c.id for c in snap.clients))
        return node_id in self._members[1]

    def admit(self, sender: str, address: str, now: float) -> m.Message | None:
        """Before decoding: None to read the request, else the reply (``rate_limited``, told
        once per back-off) or :data:`DROPPED`."""
        admit = self.flood.admit(sender, address, self.is_member(sender), now)
        if admit is Admit.PASS:
            self._address = address
            return None
        return _rate_limited("?", self.flood.backoff) if admit is Admit.TELL else DROPPED

    def report_floods(self, now: float, *, final: bool = False) -> None:
        """One aggregated line per flooding peer per interval (``final``: all that is left)."""
        for report in self.flood.due(now, final=final):
            log.warning("refused: %s", report.describe())

    def observe(self, snapshot: RunSnapshot) -> None:
        """Follow the run: the latest broadcast snapshot of our run decides every answer."""
        if snapshot.run_id == self.spec.run_id:
            self.snapshot = snapshot

    def answer(self, sender: str, frames: Sequence[Any]) -> m.Message:
        """The one reply to the frames ``sender`` (its routing id) sent."""
        try:
            msg = decode(frames, REQUEST_LIMITS)
        except DecodeError as exc:
            return self._refuse(sender, exc.ref, exc.code, exc.reason)
        if not isinstance(msg, m.DataRequest):
            return self._refuse(
                sender, msg.TYPE, ErrorCode.MALFORMED, f"{msg.TYPE} is not a data request"
            )
        if msg.node_id != sender:
            return self._refuse(
                sender,
                msg.TYPE,
                ErrorCode.MALFORMED,
                f"node_id {msg.node_id!r} differs from its socket id",
            )
        return self.reply_to(msg)

    def reply_to(self, msg: m.DataRequest) -> m.Message:
        snap = self.snapshot
        if snap is None:
            return self._refuse(
                msg.node_id, msg.TYPE, ErrorCode.UNAVAILABLE, "no state received yet"
            )
        if snap.state not in EPOCH_STATES:
            return self._refuse(
                msg.node_id,
                msg.TYPE,
                ErrorCode.UNAVAILABLE,
                f"no epoch in progress ({snap.state.value})",
            )
        if msg.epoch != snap.epoch:
            return self._refuse(
                msg.node_id,
                msg.TYPE,
                ErrorCode.WRONG_STATE,
                f"not this epoch: asked for epoch {msg.epoch}, the run is in epoch {snap.epoch}",
            )
        members = epoch_members(snap)
        if msg.node_id not in members:
            return self._refuse(
                msg.node_id,
                msg.TYPE,
                ErrorCode.NOT_MEMBER,
                f"{msg.node_id} is not a member of epoch {snap.epoch}",
            )
        reply = self._reply(msg.node_id, snap.epoch, members)
        self.stats.served += 1
        log.info(
            "served %s its shard of %d samples for epoch %d (%d of %d members)",
            msg.node_id,
            reply.tensors[1].shape[0],
            snap.epoch,
            members.index(msg.node_id) + 1,
            len(members),
        )
        return reply

    def _reply(self, node_id: str, epoch: int, members: tuple[str, ...]) -> m.DataReply:
        if self._cut_for != (epoch, members):
            self._cut_for, self._replies = (epoch, members), {}
        reply = self._replies.get(node_id)
        if reply is None:
            ds = self.dataset
            part = shard(ds, members.index(node_id), len(members), self.spec.data, self.spec.seed)
            tensors: tuple[TensorPayload, ...] = (
                *to_payloads({"x": wire_features(part.x, ds), "y": part.y}),
                *self._held_out,
            )
            reply = self._replies[node_id] = m.DataReply(
                epoch=epoch, tensors=tensors, classes=ds.classes
            )
        return reply

    def _refuse(self, sender: str, ref: str, code: str, reason: str) -> m.Error:
        """Count a refusal; logged in full only when its peer was quiet (the aggregated lines
        of :meth:`report_floods` account for the rest)."""
        self.stats.rejected += 1
        self.stats.by_code[code] += 1
        verdict = self.flood.refused(
            sender, self._address, code, reason, time.monotonic(), member=self.is_member(sender)
        )
        if verdict.log:
            # unavailable is expected while an epoch starts (a node may see it before we do)
            log.log(
                logging.INFO if code == ErrorCode.UNAVAILABLE else logging.WARNING,
                "refused %s from %s (%s): %s [%d refused so far]",
                ref,
                sender,
                code,
                reason,
                self.stats.rejected,
            )
        if verdict.throttled is not None:
            log.warning("%s", verdict.throttled.describe())
        if verdict.rate_limited:
            return _rate_limited(ref, self.flood.backoff)
        return m.Error(ref=ref, code=code, reason=reason)


DROPPED = m.Ack(ref="dropped")  # admit's sentinel: no reply at all (never sent)


def _rate_limited(ref: str, backoff: float) -> m.Error:
    return m.Error(
        ref=ref,
        code=ErrorCode.RATE_LIMITED,
        reason=f"too many refused requests: ignored for {backoff:g} s",
    )


class DataServer:
    """The data server's sockets: a SUB following the console, a ROUTER answering requests."""

    def __init__(
        self,
        context: zmq.asyncio.Context,
        *,
        state_endpoint: str,
        bind: str,
    ) -> None:
        """Bind and connect at once (a taken port fails here, before the data is loaded)."""
        self.server: DataRequests | None = None
        self._factory = SocketFactory(context)
        self._router = self._factory.router(bind, max_bytes=REQUEST_MAX_BYTES)
        self.endpoint = endpoint(self._router)
        self._sub = self._factory.sub(state_endpoint)
        self.following = asyncio.Event()  # set at the first state broadcast received
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, server: DataRequests) -> str:
        """Answer with ``server`` from now on (requests sent earlier wait in the ROUTER)."""
        self.server = server
        self._tasks = [
            asyncio.create_task(self._follow(), name="follow"),
            asyncio.create_task(self._serve(), name="serve"),
        ]
        return self.endpoint

    async def _follow(self) -> None:
        assert self.server is not None
        while True:
            frames = await self._sub.recv_multipart(copy=False)
            try:
                msg = decode(frames, STATE_LIMITS)
                if isinstance(msg, m.StateUpdate):
                    self.server.observe(msg.snapshot)
                    self.following.set()
            except DecodeError as exc:
                log.warning("ignored a malformed state broadcast: %s", exc)
            self.server.report_floods(time.monotonic())  # a broadcast comes at every tick

    async def _serve(self) -> None:
        assert self.server is not None
        server = self.server
        received = 0
        while True:
            frames = await self._router.recv_multipart(copy=False)
            received += 1
            if received % YIELD_EVERY == 0:  # a ready recv never yields: let _follow run
                await asyncio.sleep(0)
            identity = frames[0].bytes
            sender = identity.decode("utf-8", "replace")
            now = time.monotonic()
            server.report_floods(now)
            reply = server.admit(sender, peer_address(frames[0]), now)
            if reply is DROPPED:
                continue
            if reply is None:
                reply = server.answer(sender, frames[1:])
            try:
                await self._router.send_multipart([identity, *encode(reply)], copy=False)
            except zmq.ZMQError as exc:  # the requester left (ROUTER_MANDATORY)
                log.debug("reply to %r not delivered: %s", identity, exc)

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []
        if self.server is not None:
            self.server.report_floods(time.monotonic(), final=True)
        for sock in (self._router, self._sub):
            sock.close(linger=0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m node.dataserver",
        description="Serve each epoch client of a run its data shard (started by fl-console).",
    )
    p.add_argument("--state", required=True, help="the console's state PUB endpoint")
    p.add_argument("--bind", required=True, help="where to bind the ROUTER, tcp://HOST:PORT")
    p.add_argument("--run-id", required=True, help="the run whose broadcasts to follow")
    p.add_argument("--spec-json", required=True, help="the run's RunSpec as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


async def run(args: argparse.Namespace, spec: RunSpec) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    context = zmq.asyncio.Context()
    service: DataServer | None = None
    try:
        try:
            service = DataServer(context, state_endpoint=args.state, bind=args.bind)
        except zmq.ZMQError as exc:
            print(f"data server: cannot bind {args.bind}: {exc}", file=sys.stderr)
            return ExitCode.BIND
        dataset = await asyncio.to_thread(load_dataset, spec.data, seed=spec.seed, base_dir=None)
        server = DataRequests(spec, dataset)
        service.start(server)
        # Ready once following the run (the console broadcasts at least every tick).
        if not await _first_of(service.following, stop, timeout=FOLLOW_WAIT):
            log.warning(
                "no state broadcast from %s in %.0fs; serving anyway", args.state, FOLLOW_WAIT
            )
        log.info(
            "serving run %s on %s: %d training and %d held-out samples, %d classes",
            spec.run_id,
            service.endpoint,
            dataset.y_train.shape[0],
            dataset.y_test.shape[0],
            dataset.classes,
        )
        if not stop.is_set():
            print(f"ready {service.endpoint}", flush=True)
        await stop.wait()
        stats = server.stats
        log.info(
            "stopping: served %d shards, refused %d requests %s",
            stats.served,
            stats.rejected,
            dict(stats.by_code),
        )
        return ExitCode.OK
    except DataError as exc:
        print(f"data server: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    finally:
        if service is not None:
            await service.close()
        context.destroy(linger=0)


async def _first_of(*events: asyncio.Event, timeout: float) -> bool:
    """Wait until one of ``events`` is set; False when ``timeout`` passes first."""
    waits = [asyncio.create_task(e.wait()) for e in events]
    done, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return bool(done)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        spec = RunSpec.from_dict(json.loads(args.spec_json))
    except (ValueError, SpecError) as exc:  # JSONDecodeError is a ValueError
        print(f"data server: unusable --spec-json: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if spec.run_id != args.run_id:
        print(
            f"data server: --run-id {args.run_id!r} differs from the spec's {spec.run_id!r}",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    torch.set_num_threads(1)
    return asyncio.run(run(args, spec))


if __name__ == "__main__":
    raise SystemExit(main())
