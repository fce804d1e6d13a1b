"""State-change latency: from a change in the console to every node having seen it.

``python -m bench.latency_bench [--changes N] [--subscribers N] [--members 8 100] [--json PATH]``

One asyncio process on loopback holds an in-process :class:`~console.server.ConsoleServer`
(port 0) and ``--subscribers`` real :class:`~node.link.ConsoleLink` objects: each joined the
run over the control socket and follows the state PUB exactly as an ``fl-node`` does (one
typed msgspec decode that validates the snapshot, sequence check, callbacks). The operator
pauses and resumes the run (each a state change, broadcast at once), alternately,
``--changes`` times.
A change's latency runs from just before the server's call (``server.pause()``: coordinator,
event log, snapshot, encode, PUB send) to the moment the last link has accepted a snapshot
carrying it, on the same clock (``time.perf_counter``). With ``--members 100`` the snapshot
also lists simulated members (joined in the coordinator, never heartbeat-expired), so every
broadcast carries 100 clients.

Baseline, measured in the same run: bare pyzmq, one PUB to as many SUB sockets in the same
loop, moving the very same encoded broadcast (no decode), so ``ours/bare`` is what the
console's path and the node's decoding add. All subscribers share one process and one
thread: the figures include decoding every copy one after another, an upper bound on what
separate node processes see.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from bench.report import arguments, column_table, publish
from console.config import CheckpointConfig, Config, LocalConfig, ServerConfig
from console.server import ConsoleServer
from node.link import ConsoleLink
from transport import messages as m
from transport.codec import encode
from transport.state import RunSnapshot, RunState

CHANGES = 200
SUBSCRIBERS = 8
MEMBERS = (8, 100)
WARMUP_CHANGES = 10
WAIT_S = 5.0
TARGET_MEDIAN_MS = 5.0


def _config(tmp: Path) -> Config:
    base = Config()
    return replace(
        base,
        run_id="latency-bench",
        server=ServerConfig(host="127.0.0.1", state_port=0, control_port=0, data_port=0),
        coordinator=replace(
            base.coordinator,
            init_min_clients=10_000,  # the run stays WaitingForMembers <-> Paused
            min_clients=1,
            witness_nodes=1,
            heartbeat_interval=0.5,
            health_timeout=3600.0,  # simulated members never heartbeat
        ),
        local=LocalConfig(spawn=0),
        checkpoint=CheckpointConfig(dir=tmp / "checkpoints"),
    )


def _stats(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in samples_s)
    return {
        "median_ms": statistics.median(ms),
        "p95_ms": ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))],
        "max_ms": ms[-1],
    }


class _Arrivals:
    """Collects, per change, the time each subscriber first saw broadcast ``seq`` or later."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.target_seq: int | None = None
        self.target_state: RunState | None = None
        self.seen: dict[int, float] = {}
        self.all_seen = asyncio.Event()

    def expect(self, seq: int, state: RunState | None) -> None:
        self.target_seq, self.target_state = seq, state
        self.seen = {}
        self.all_seen.clear()

    def arrived(self, who: int, seq: int, state: RunState | None) -> None:
        now = time.perf_counter()
        if self.target_seq is None or who in self.seen or seq < self.target_seq:
            return
        if self.target_state is not None and state is not self.target_state:
            return
        self.seen[who] = now
        if len(self.seen) == self.count:
            self.all_seen.set()


async def _console_latency(members: int, subscribers: int, changes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="latency-bench-") as tmp:
        config = _config(Path(tmp))
        server = ConsoleServer(config, run_dir=Path(tmp) / "run")
        endpoints = server.start()
        ctx = zmq.asyncio.Context()
        links: list[ConsoleLink] = []
        arrivals = _Arrivals(subscribers)
        try:
            for i in range(max(0, members - subscribers)):
                server.coordinator.join(
                    f"simulated-{i:03d}",
                    config.run_id,
                    server.clock(),
                    gossip_endpoint=f"tcp://127.0.0.1:{20000 + i}",
                )
            for i in range(subscribers):
                link = ConsoleLink(
                    node_id=f"node-{i}",
                    run_id=config.run_id,
                    control_endpoint=endpoints.control,
                    gossip_endpoint=f"tcp://127.0.0.1:{19000 + i}",
                    context=ctx,
                )

                def on_snapshot(snap: RunSnapshot, who: int = i, link: ConsoleLink = link) -> None:
                    assert link.latest is not None
                    arrivals.arrived(who, link.latest.seq, snap.state)

                link.on_snapshot.append(on_snapshot)
                await link.start(max_wait=WAIT_S)
                links.append(link)
            snapshot_clients = len(server.coordinator.snapshot(server.clock()).clients)
            latencies, firsts, calls = [], [], []
            for n in range(WARMUP_CHANGES + changes):
                paused = server.coordinator.state is RunState.PAUSED
                started = time.perf_counter()
                outcome = server.resume() if paused else server.pause()
                calls.append(time.perf_counter() - started)
                assert outcome.ok, outcome.rejection
                arrivals.expect(server.seq, server.coordinator.state)
                await asyncio.wait_for(arrivals.all_seen.wait(), WAIT_S)
                if n >= WARMUP_CHANGES:
                    latencies.append(max(arrivals.seen.values()) - started)
                    firsts.append(min(arrivals.seen.values()) - started)
            payload = encode(
                m.StateUpdate(seq=server.seq, snapshot=server.coordinator.snapshot(server.clock()))
            )
            size = sum(len(memoryview(f)) for f in payload)
        finally:
            for link in links:
                await link.close(leave=False)
            ctx.destroy(linger=0)
            await server.stop()
    bare = await _bare_latency([bytes(f) for f in payload], subscribers, changes)
    ours = _stats(latencies)
    return {
        "members": snapshot_clients,
        "subscribers": subscribers,
        "changes": len(latencies),
        "broadcast_bytes": size,
        **ours,
        "first_median_ms": statistics.median(firsts) * 1e3,
        "server_call_median_ms": statistics.median(calls[WARMUP_CHANGES:]) * 1e3,
        "bare_median_ms": bare["median_ms"],
        "bare_p95_ms": bare["p95_ms"],
        "ratio": ours["median_ms"] / bare["median_ms"],
    }


async def _bare_latency(frames: list[bytes], subscribers: int, changes: int) -> dict[str, float]:
    """The baseline: the same frames from a bare PUB to bare SUBs in this loop, no decoding."""
    ctx = zmq.asyncio.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:0")
    address = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    arrivals = _Arrivals(subscribers)
    subs = []
    tasks = []

    async def read(who: int, sock: zmq.asyncio.Socket) -> None:
        while True:
            received = await sock.recv_multipart(copy=False)
            arrivals.arrived(who, int.from_bytes(received[-1].bytes, "big"), None)

    try:
        for i in range(subscribers):
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(address)
            subs.append(sub)
            tasks.append(asyncio.create_task(read(i, sub)))
        # Slow joiner: publish until every subscriber has heard something.
        arrivals.expect(0, None)
        deadline = time.perf_counter() + WAIT_S
        while not arrivals.all_seen.is_set():
            assert time.perf_counter() < deadline, "bare subscribers never connected"
            await pub.send_multipart([*frames, (0).to_bytes(8, "big")])
            await asyncio.sleep(0.01)
        latencies = []
        for n in range(1, WARMUP_CHANGES + changes + 1):
            arrivals.expect(n, None)
            started = time.perf_counter()
            await pub.send_multipart([*frames, n.to_bytes(8, "big")])
            await asyncio.wait_for(arrivals.all_seen.wait(), WAIT_S)
            if n > WARMUP_CHANGES:
                latencies.append(max(arrivals.seen.values()) - started)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sock in (*subs, pub):
            sock.close(linger=0)
        ctx.destroy(linger=0)
    return _stats(latencies)


def run(
    members: tuple[int, ...] = MEMBERS, subscribers: int = SUBSCRIBERS, changes: int = CHANGES
) -> dict[str, Any]:
    """Measure every member count; print the table; return the figures."""
    logging.getLogger("fl.events").setLevel(logging.WARNING)
    rows = [asyncio.run(_console_latency(n, subscribers, changes)) for n in members]
    result = {
        "bench": "latency",
        "transport": "tcp://127.0.0.1",
        "rows": rows,
        "target_median_ms": TARGET_MEDIAN_MS,
        "max_median_ms": max(r["median_ms"] for r in rows),
    }
    return result


COLUMNS = (  # (title, key, format)
    ("members", "members", "{:>7}"),
    ("subs", "subscribers", "{:>4}"),
    ("n", "changes", "{:>4}"),
    ("bytes", "broadcast_bytes", "{:>6}"),
    ("median ms", "median_ms", "{:>9.2f}"),
    ("p95 ms", "p95_ms", "{:>7.2f}"),
    ("max ms", "max_ms", "{:>7.2f}"),
    ("first ms", "first_median_ms", "{:>8.2f}"),
    ("call ms", "server_call_median_ms", "{:>7.2f}"),
    ("bare ms", "bare_median_ms", "{:>7.2f}"),
    ("bare p95", "bare_p95_ms", "{:>8.2f}"),
    ("ours/bare", "ratio", "{:>9.1f}"),
)


def table(result: dict[str, Any]) -> str:
    lines = column_table(COLUMNS, result["rows"])
    verdict = "ok" if result["max_median_ms"] < result["target_median_ms"] else "OVER TARGET"
    lines.append(
        f"worst median {result['max_median_ms']:.2f} ms (target < {result['target_median_ms']} "
        f"ms): {verdict}"
    )
    lines.append(
        "median/p95/max: operator pause/resume -> the last ConsoleLink has accepted the "
        "snapshot\nfirst: -> the first one has (what one node alone sees; the links decode one "
        "after another in this one thread)\ncall: the server's part (coordinator, event log, "
        "snapshot, encode, send); bare: the same bytes, bare PUB -> SUBs, no decode"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = arguments(__doc__)
    parser.add_argument("--changes", type=int, default=CHANGES, help="measured state changes")
    parser.add_argument("--subscribers", type=int, default=SUBSCRIBERS, help="following links")
    parser.add_argument(
        "--members", type=int, nargs="+", default=list(MEMBERS), help="clients in the snapshot"
    )
    args = parser.parse_args(argv)
    result = run(tuple(args.members), args.subscribers, args.changes)
    publish("latency", result, table(result), args.json)
    return result


if __name__ == "__main__":
    main()
