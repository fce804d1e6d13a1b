"""Scale: the console's server with 100 and 1,000 simulated clients, and how many fl-node
processes this machine runs in one job.

``python -m bench.scale_bench [--clients 100 1000] [--nodes 4 8 12 16] [--json PATH]``

**Simulated clients.** An in-process :class:`~console.server.ConsoleServer` (ports 0, ticker
off so that only the measured changes broadcast; ``init_min_clients`` = N + 1, so the clients
stay pending in WaitingForMembers) and, in a child process (no torch), N clients, each a DEALER
made by the product's socket factory plus, once its join is acked, a SUB on the state
endpoint, as ``node/link.py`` does. Every client then heartbeats every ``heartbeat_interval``
(staggered), and every SUB is drained as messages come.

- **join**: all N send ``Join`` at once: time until all N are acked, per join (that / N), and
  each join's own latency (median, p99). Baseline: a bare ROUTER (a thread of this process)
  answering N fresh DEALERs' same-size requests with a 100-byte reply, in the same run.
- **fan-out**: from ``server.pause()`` / ``server.resume()`` (an urgent state change: broadcast
  at once) to all N SUBs having received a snapshot showing it (median over repetitions of
  the slowest SUB, and of the median SUB). Baseline: a bare pyzmq PUB -> the same N SUBs'
  process, a payload of the same size as the server's snapshot frame.
- **tick cost**: ``coordinator.tick(now)`` (nobody due) and one full ``server._broadcast()``
  (snapshot, encode, PUB send, the throttled view record) at N clients; baseline:
  ``json.dumps`` of the same snapshot dict plus a PUB send. The broadcast is profiled
  (cProfile) and its top functions listed. The tick broadcast's steady load (snapshot bytes x N
  per ``heartbeat_interval``) and the heartbeats' round trip as the client process sees it
  (its own poll loop included) are shown beside.

**fl-node processes.** The default job (digits, MLP 64-32, FedAvg) with ``--spawn N``,
``init_min_clients = train_set_size = N``, 3 rounds, for N = 4, 8, 12, 16; stops at the first
N that does not finish or takes over ~2 minutes. Per N: finished, wall time, round time
(median summary duration; x the 4-node round), time to the first round (processes up,
joined, warmed up), and each node's resident memory (VmRSS, sampled from /proc during the
run; median of the nodes' peaks), against a bare ``python -c "import torch"`` measured in the
same run. Every child process is reaped (the console's nodes die with it; stragglers are
killed by pid).
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import json
import multiprocessing as mp
import os
import pstats
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import zmq

from bench.report import arguments, publish
from console.config import CheckpointConfig, Config, CoordinatorConfig, ServerConfig
from console.server import ConsoleServer
from transport import messages as m
from transport.codec import decode, encode
from transport.sockets import SocketFactory, endpoint

CLIENTS = (100, 1000)
NODES = (4, 8, 12, 16)
RUN_ID = "scale"
HEARTBEAT = 0.5
FANOUT_REPS = 6
WAIT = 60.0  # seconds: the longest any single step of the simulation may take
NODE_RUN_LIMIT = 120.0  # seconds: "exceeds ~2 minutes"
MARKER_WINDOW = 256  # a snapshot's "state" comes within its first bytes (after seq, run_id)


# ============================================================================ the clients
# Runs in a child process: N DEALERs + N SUBs on one sync context, one poll loop.


class _Clients:
    def __init__(self, conn: Connection, control: str, n: int) -> None:
        self.conn = conn
        self.control = control
        self.n = n
        self.ctx = zmq.Context()
        self.ctx.set(zmq.MAX_SOCKETS, 4 * n + 64)
        self.factory = SocketFactory(self.ctx)
        self.poller = zmq.Poller()
        self.poller.register(conn.fileno(), zmq.POLLIN)
        self.dealers: list[zmq.Socket] = []
        self.subs: dict[zmq.Socket, int] = {}
        self.bare_subs: dict[zmq.Socket, int] = {}
        self.owner: dict[zmq.Socket, int] = {}
        self.state_endpoint = ""
        self.join_sent: list[float] = [0.0] * n
        self.join_acked: list[float | None] = [None] * n
        self.heard: set[int] = set()  # SUBs that received anything
        self.bare_heard: set[int] = set()
        self.marker: bytes | None = None
        self.seen_at: dict[int, float] = {}
        self.next_heartbeat: list[float] = []
        self.heartbeat_sent: dict[int, float] = {}
        self.heartbeat_rtt: list[float] = []
        self.received_bytes = 0
        self.received_messages = 0
        self.running = True

    # ------------------------------------------------------------------ main loop

    def run(self) -> None:
        try:
            self._join_all()
            while self.running:
                self._poll(0.05)
        finally:
            self.ctx.destroy(linger=0)

    def _poll(self, timeout: float) -> None:
        now = time.monotonic()
        if self.next_heartbeat:
            self._heartbeats(now)
        for sock, _ in self.poller.poll(int(timeout * 1000)):
            if isinstance(sock, int):
                self._command(self.conn.recv())
            elif sock in self.subs or sock in self.bare_subs:
                self._drain_sub(sock)
            else:
                self._drain_dealer(sock)

    def _heartbeats(self, now: float) -> None:
        for i, due in enumerate(self.next_heartbeat):
            if due <= now and i not in self.heartbeat_sent:
                msg = m.Heartbeat(node_id=_node_id(i), stage="simulated")
                self.dealers[i].send_multipart(encode(msg), flags=zmq.NOBLOCK)
                self.heartbeat_sent[i] = now
                self.next_heartbeat[i] = due + HEARTBEAT

    def _drain_dealer(self, sock: zmq.Socket) -> None:
        i = self.owner[sock]
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.monotonic()
            msg = decode(frames)
            if isinstance(msg, m.JoinAck):
                self.join_acked[i] = now
                self.state_endpoint = msg.state_endpoint
                sub = self.factory.sub(msg.state_endpoint)
                self.subs[sub] = i
                self.poller.register(sub, zmq.POLLIN)
            elif isinstance(msg, m.Ack) and i in self.heartbeat_sent:
                self.heartbeat_rtt.append(now - self.heartbeat_sent.pop(i))

    def _drain_sub(self, sock: zmq.Socket) -> None:
        bare = sock in self.bare_subs
        i = self.bare_subs[sock] if bare else self.subs[sock]
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            now = time.monotonic()
            while sock.getsockopt(zmq.RCVMORE):
                sock.recv(copy=False)
            data = frame.buffer
            self.received_messages += 1
            self.received_bytes += len(data)
            (self.bare_heard if bare else self.heard).add(i)
            marker = self.marker
            if (
                marker is not None
                and i not in self.seen_at
                and bare == marker.startswith(b"B")
                and marker in bytes(data[:MARKER_WINDOW])
            ):
                self.seen_at[i] = now

    # ------------------------------------------------------------------ steps

    def _join_all(self) -> None:
        for i in range(self.n):
            sock = self.factory.dealer(_node_id(i), self.control, immediate=False)
            self.dealers.append(sock)
            self.owner[sock] = i
            self.poller.register(sock, zmq.POLLIN)
        for i, sock in enumerate(self.dealers):
            join = m.Join(run_id=RUN_ID, node_id=_node_id(i), gossip_endpoint="tcp://127.0.0.1:1")
            self.join_sent[i] = time.monotonic()
            sock.send_multipart(encode(join))
        deadline = time.monotonic() + WAIT
        while any(t is None for t in self.join_acked) and time.monotonic() < deadline:
            self._poll(0.05)
        self.conn.send(("acked", self.join_sent, self.join_acked))
        start = time.monotonic()
        self.next_heartbeat = [start + HEARTBEAT * random.random() for _ in range(self.n)]

    def _wait(self, done: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + WAIT
        while not done() and time.monotonic() < deadline:
            self._poll(0.01)
        return done()

    def _command(self, cmd: tuple[Any, ...]) -> None:
        kind = cmd[0]
        if kind == "subscribed?":
            self.conn.send(("subscribed", len(self.heard)))
        elif kind == "arm":
            self.marker, self.seen_at = cmd[1], {}
            self.conn.send(("armed",))
            total = len(self.bare_subs) if cmd[1].startswith(b"B") else len(self.subs)
            self._wait(lambda: len(self.seen_at) == total)
            self.conn.send(("seen", dict(self.seen_at)))
            self.marker = None
        elif kind == "bare_connect":
            for i in range(self.n):
                sub = self.ctx.socket(zmq.SUB)
                sub.linger = 0
                sub.setsockopt(zmq.SUBSCRIBE, b"")
                sub.connect(cmd[1])
                self.bare_subs[sub] = i
                self.poller.register(sub, zmq.POLLIN)
            self.conn.send(("bare_connected",))
        elif kind == "bare_heard?":
            self.conn.send(("bare_heard", len(self.bare_heard)))
        elif kind == "bare_join":
            self.conn.send(("bare_join", _bare_join(self.ctx, cmd[1], self.n, cmd[2])))
        elif kind == "stop":
            self.conn.send(
                (
                    "stats",
                    {
                        "heartbeat_rtt": self.heartbeat_rtt,
                        "received_messages": self.received_messages,
                        "received_bytes": self.received_bytes,
                    },
                )
            )
            self.running = False


def _bare_join(ctx: zmq.Context, router: str, n: int, size: int) -> dict[str, float]:
    """N fresh DEALERs send one ``size``-byte request each to a bare ROUTER; time the replies."""
    socks = []
    for i in range(n):
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.setsockopt(zmq.ROUTING_ID, f"bare-{i}".encode())
        s.connect(router)
        socks.append(s)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    payload = b"x" * size
    sent = []
    for s in socks:
        sent.append(time.monotonic())
        s.send(payload)
    got: dict[zmq.Socket, float] = {}
    deadline = time.monotonic() + WAIT
    while len(got) < n and time.monotonic() < deadline:
        for s, _ in poller.poll(50):
            s.recv()
            got[s] = time.monotonic()
    lat = [got[s] - t for s, t in zip(socks, sent, strict=True) if s in got]
    out = {
        "all_s": max(got.values()) - min(sent),
        "median_s": statistics.median(lat),
        "answered": len(got),
    }
    for s in socks:
        s.close(linger=0)
    return out


def _node_id(i: int) -> str:
    return f"sim-{i:04d}"


def _client_main(conn: Connection, control: str, n: int) -> None:
    _Clients(conn, control, n).run()


# ============================================================================ the server side


def _config(n: int, run_dir: Path) -> Config:
    return Config(
        run_id=RUN_ID,
        server=ServerConfig(state_port=0, control_port=0),
        coordinator=CoordinatorConfig(
            init_min_clients=n + 1,  # never reached: the clients stay pending
            min_clients=2,
            witness_nodes=2,
            waiting_for_members_extra_time=0.0,
            heartbeat_interval=HEARTBEAT,
            health_timeout=600.0,
        ),
        checkpoint=CheckpointConfig(dir=run_dir / "checkpoints"),
    )


class _Pipe:
    """The parent's end of the pipe, awaited without blocking the server's loop."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def ask(self, *cmd: Any) -> tuple[Any, ...]:
        self.conn.send(cmd)
        return await self.get()

    async def get(self, timeout: float = WAIT + 10) -> tuple[Any, ...]:
        ready = await asyncio.to_thread(self.conn.poll, timeout)
        if not ready:
            raise TimeoutError("the client process did not answer")
        return self.conn.recv()


def _bare_router(ctx: zmq.Context, stop: threading.Event) -> tuple[str, threading.Thread]:
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.bind("tcp://127.0.0.1:0")
    address = endpoint(router)
    reply = b"y" * 100

    def serve() -> None:
        while not stop.is_set():
            if router.poll(50):
                identity, _ = router.recv_multipart()
                router.send_multipart([identity, reply])
        router.close(linger=0)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return address, thread


def _time_calls(fn: Callable[[], object], calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _health_loop_baseline(n: int) -> float:
    """Seconds for the least a health check can do: one comparison per client."""
    seen = {_node_id(i): float(i) for i in range(n)}

    def check() -> list[str]:
        return [c for c, t in seen.items() if 1e9 - t > 1e12]

    return statistics.median(_time_calls(check, 200))


async def _fanout(
    pipe: _Pipe, marker: bytes, trigger: Callable[[], object]
) -> tuple[float, float, int]:
    await pipe.ask("arm", marker)
    t0 = time.monotonic()
    trigger()
    _, seen = await pipe.get()
    if not seen:
        raise TimeoutError(f"no SUB saw {marker!r}")
    times = sorted(t - t0 for t in seen.values())
    return times[-1], statistics.median(times), len(times)


async def simulate(n: int, work: Path) -> dict[str, Any]:
    server = ConsoleServer(_config(n, work), run_dir=work / f"sim-{n}", tick_interval=3600.0)
    endpoints = server.start()
    spawn = mp.get_context("spawn")
    parent, child = spawn.Pipe()
    proc = spawn.Process(target=_client_main, args=(child, endpoints.control, n), daemon=True)
    bare_ctx = zmq.Context()
    stop_router = threading.Event()
    try:
        proc.start()
        pipe = _Pipe(parent)
        _, sent, acked = await pipe.get()
        if any(t is None for t in acked):
            raise TimeoutError(f"{sum(t is None for t in acked)} of {n} joins not acked")
        join_lat = sorted(a - s for s, a in zip(sent, acked, strict=True))
        join_all = max(acked) - min(sent)
        # Every SUB has connected once it heard a broadcast: prod until all have.
        deadline = time.monotonic() + WAIT
        while (await pipe.ask("subscribed?"))[1] < n:
            if time.monotonic() > deadline:
                raise TimeoutError("SUBs did not all connect")
            server._broadcast()
            await asyncio.sleep(0.05)
        snap_frame = encode(
            m.StateUpdate(seq=0, snapshot=server.coordinator.snapshot(server.clock()))
        )
        size = len(snap_frame[0])
        join_frame = size  # a join_ack carries the snapshot: the same order of size

        ours_all, ours_med = [], []
        for rep in range(FANOUT_REPS):
            marker, trigger = (
                (b'"state":"Paused"', server.pause)
                if rep % 2 == 0
                else (b'"state":"WaitingForMembers"', server.resume)
            )
            slowest, median, count = await _fanout(pipe, marker, trigger)
            if count < n:
                raise TimeoutError(f"only {count} of {n} SUBs saw the change")
            ours_all.append(slowest)
            ours_med.append(median)
            await asyncio.sleep(0.05)

        # Bare PUB -> the same process's N SUBs, a payload of the snapshot frame's size.
        pub = bare_ctx.socket(zmq.PUB)
        pub.linger = 0
        pub.bind("tcp://127.0.0.1:0")
        await pipe.ask("bare_connect", endpoint(pub))
        deadline = time.monotonic() + WAIT
        while (await pipe.ask("bare_heard?"))[1] < n:
            if time.monotonic() > deadline:
                raise TimeoutError("bare SUBs did not all connect")
            pub.send(b"hello")
            await asyncio.sleep(0.05)
        bare_all, bare_med = [], []
        for rep in range(FANOUT_REPS):
            marker = b"BARE%04d" % rep
            payload = marker + b"x" * (size - len(marker))
            slowest, median, _ = await _fanout(pipe, marker, lambda p=payload: pub.send(p))
            bare_all.append(slowest)
            bare_med.append(median)
            await asyncio.sleep(0.05)

        address, router_thread = _bare_router(bare_ctx, stop_router)
        _, bare_join = await pipe.ask("bare_join", address, len(encode(_join(0))[0]))

        # Tick and broadcast cost, in this process, with the N clients connected.
        coordinator = server.coordinator
        tick = statistics.median(_time_calls(lambda: coordinator.tick(server.clock()), 2000))
        health = _health_loop_baseline(n)
        broadcast = _time_calls(server._broadcast, 30)
        snap_dict = server.coordinator.snapshot(server.clock()).to_dict()

        def bare_broadcast() -> None:
            pub.send(json.dumps(snap_dict, separators=(",", ":")).encode())

        bare_bcast = _time_calls(bare_broadcast, 30)
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(20):
            server._broadcast()
        profile.disable()
        view = statistics.median(_time_calls(server.view, 10))
        _, stats = await pipe.ask("stop")
    finally:
        stop_router.set()
        if proc.is_alive():
            proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
        bare_ctx.destroy(linger=0)
        await server.stop()
    rtt = sorted(stats["heartbeat_rtt"])
    return {
        "clients": n,
        "snapshot_bytes": size,
        "join_all_s": join_all,
        "join_per_ms": 1e3 * join_all / n,
        "join_median_ms": 1e3 * statistics.median(join_lat),
        "join_p99_ms": 1e3 * join_lat[int(0.99 * (len(join_lat) - 1))],
        "join_reply_bytes": join_frame,
        "bare_join_all_s": bare_join["all_s"],
        "join_x_bare": join_all / bare_join["all_s"],
        "fanout_all_ms": 1e3 * statistics.median(ours_all),
        "fanout_median_ms": 1e3 * statistics.median(ours_med),
        "bare_fanout_all_ms": 1e3 * statistics.median(bare_all),
        "bare_fanout_median_ms": 1e3 * statistics.median(bare_med),
        "fanout_x_bare": statistics.median(ours_all) / statistics.median(bare_all),
        "tick_us": 1e6 * tick,
        "tick_x_health_loop": tick / health,
        "health_loop_us": 1e6 * health,
        "broadcast_ms": 1e3 * statistics.median(broadcast),
        "bare_broadcast_ms": 1e3 * statistics.median(bare_bcast),
        "broadcast_x_bare": statistics.median(broadcast) / statistics.median(bare_bcast),
        "view_ms": 1e3 * view,
        "tick_broadcast_mb_s": size * n / HEARTBEAT / 1e6,
        "heartbeat_rtt_median_ms": 1e3 * statistics.median(rtt) if rtt else None,
        "heartbeat_rtt_p99_ms": 1e3 * rtt[int(0.99 * (len(rtt) - 1))] if rtt else None,
        "heartbeats": len(rtt),
        "broadcast_profile": _top(profile, 12),
    }


def _join(i: int) -> m.Join:
    return m.Join(run_id=RUN_ID, node_id=_node_id(i), gossip_endpoint="tcp://127.0.0.1:1")


def _top(profile: cProfile.Profile, count: int) -> list[dict[str, Any]]:
    """The functions with the most own time in the profiled broadcasts (share of the total)."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    total = sum(v[2] for v in stats.stats.values()) or 1.0  # type: ignore[attr-defined]
    rows = []
    for (file, line, name), (_, calls, own, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{Path(file).name}:{line}({name})",
                "calls": calls,
                "own_share": own / total,
                "cum_ms_per_broadcast": 1e3 * cum / 20,
            }
        )
    rows.sort(key=lambda r: r["own_share"], reverse=True)
    return rows[:count]


# ============================================================================ fl-node processes


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def bare_torch_rss_kb() -> int:
    """Resident memory of a bare ``python -c 'import torch'`` (the floor of any node)."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, torch; print('ok', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        rss = _rss_kb(proc.pid) or 0
    finally:
        proc.kill()
        proc.wait(timeout=10)
    return rss


def node_run(n: int, work: Path) -> dict[str, Any]:
    from tests.e2e.child import descendants, kill_leftovers
    from tests.e2e.runs import HeadlessConsole
    from tests.factories import write_config

    config = write_config(
        work,
        coordinator={"init_min_clients": n, "total_rounds": 3, "warmup_time": 100.0},
        learning={"train_set_size": n},
        local={"spawn": n},
    )
    console = HeadlessConsole(config, work / "run", "--spawn", str(n))
    peaks: dict[int, int] = {}
    started = time.monotonic()
    finished = False
    reason = ""
    try:
        while console.process.poll() is None and time.monotonic() - started < NODE_RUN_LIMIT:
            for pid in descendants(console.pid):
                rss = _rss_kb(pid)
                if rss is not None:
                    peaks[pid] = max(peaks.get(pid, 0), rss)
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        code = console.process.poll()
        if code is None:
            reason = f"over {NODE_RUN_LIMIT:.0f}s"
        elif code != 0:
            reason = f"fl-console exited {code}"
        else:
            finished = True
    finally:
        console.reap()
        kill_leftovers(list(peaks))
    row: dict[str, Any] = {
        "nodes": n,
        "finished": finished,
        "reason": reason,
        "elapsed_s": elapsed,
        "rss_node_median_mb": statistics.median(peaks.values()) / 1024 if peaks else None,
        "rss_node_max_mb": max(peaks.values()) / 1024 if peaks else None,
        "rss_total_mb": sum(peaks.values()) / 1024 if peaks else None,
    }
    if finished:
        summary = console.read_summary()
        events = [e for e in console.events_seen() if e.get("kind") != "view"]
        durations = [r["duration"] for r in summary["rounds"] if r["duration"] is not None]
        t0 = events[0]["t"]
        first = min(e["t"] for e in events if e["kind"] == "round_started")
        row.update(
            {
                "wall_time_s": summary["wall_time"],
                "round_median_s": statistics.median(durations),
                "to_first_round_s": first - t0,
                "accepted_rounds": summary["accepted_rounds"],
            }
        )
    return row


# ============================================================================ entry points


def run(clients: tuple[int, ...] = CLIENTS, nodes: tuple[int, ...] = NODES) -> dict[str, Any]:
    """Measure the simulated clients and the node processes; return the figures."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="scale_bench-") as tmp:
        work = Path(tmp)
        sim = [asyncio.run(simulate(n, work)) for n in clients]
        torch_kb = bare_torch_rss_kb()
        rows: list[dict[str, Any]] = []
        for n in nodes:
            row = node_run(n, work / f"nodes-{n}")
            rows.append(row)
            if not row["finished"]:
                break
    base_round = rows[0].get("round_median_s") if rows else None
    for row in rows:
        if row.get("rss_node_median_mb") is not None:
            row["rss_x_bare_torch"] = row["rss_node_median_mb"] * 1024 / torch_kb
        if base_round and row.get("round_median_s"):
            row["round_x_4"] = row["round_median_s"] / base_round
    most = max((r["nodes"] for r in rows if r["finished"]), default=0)
    result = {
        "bench": "scale",
        "cores": os.cpu_count(),
        "load_average": (load_before, os.getloadavg()[0]),
        "simulated": sim,
        "bare_torch_rss_mb": torch_kb / 1024,
        "nodes": rows,
        "most_nodes_finished": most,
    }
    return result


SIM_COLUMNS = (  # (title, key, format)
    ("clients", "clients", "{:>7}"),
    ("snap KB", "snapshot_bytes", "{:>7.1f}"),
    ("join all s", "join_all_s", "{:>10.3f}"),
    ("per join ms", "join_per_ms", "{:>11.2f}"),
    ("join p50 ms", "join_median_ms", "{:>11.1f}"),
    ("x bare", "join_x_bare", "{:>6.1f}"),
    ("fan-out ms", "fanout_all_ms", "{:>10.2f}"),
    ("bare ms", "bare_fanout_all_ms", "{:>7.2f}"),
    ("x bare", "fanout_x_bare", "{:>6.2f}"),
    ("tick us", "tick_us", "{:>7.1f}"),
    ("bcast ms", "broadcast_ms", "{:>8.2f}"),
    ("bare ms", "bare_broadcast_ms", "{:>7.2f}"),
    ("x bare", "broadcast_x_bare", "{:>6.2f}"),
    ("hb p50 ms", "heartbeat_rtt_median_ms", "{:>9.2f}"),
)
NODE_COLUMNS = (
    ("nodes", "nodes", "{:>5}"),
    ("finished", "finished", "{!s:>8}"),
    ("wall s", "wall_time_s", "{:>6.1f}"),
    ("1st round s", "to_first_round_s", "{:>11.1f}"),
    ("round ms", "round_median_s", "{:>8.1f}"),
    ("x 4 nodes", "round_x_4", "{:>9.2f}"),
    ("RSS/node MB", "rss_node_median_mb", "{:>11.0f}"),
    ("max MB", "rss_node_max_mb", "{:>6.0f}"),
    ("total MB", "rss_total_mb", "{:>8.0f}"),
    ("x torch", "rss_x_bare_torch", "{:>7.2f}"),
)


def _cells(row: dict[str, Any], columns: tuple[tuple[str, str, str], ...]) -> str:
    out = []
    for title, key, fmt in columns:
        value = row.get(key)
        width = max(len(title), len(fmt.format(0) if "!s" not in fmt else fmt.format("False")))
        if value is None:
            out.append(f"{'-':>{width}}")
            continue
        if key == "snapshot_bytes":
            value /= 1024
        if key == "round_median_s":
            value *= 1e3
        out.append(f"{fmt.format(value):>{width}}")
    return " ".join(out)


def _head(columns: tuple[tuple[str, str, str], ...]) -> str:
    parts = []
    for title, _, fmt in columns:
        width = max(len(title), len(fmt.format(0) if "!s" not in fmt else fmt.format("False")))
        parts.append(f"{title:>{width}}")
    return " ".join(parts)


def table(result: dict[str, Any]) -> str:
    head = _head(SIM_COLUMNS)
    load = result["load_average"]
    lines = [
        f"{result['cores']} cores, load average {load[0]:.1f} -> {load[1]:.1f}",
        "simulated clients (one child process) against an in-process ConsoleServer; "
        "fan-out = pause/resume to the slowest SUB, median of reps",
        head,
        "-" * len(head),
    ]
    for row in result["simulated"]:
        lines.append(_cells(row, SIM_COLUMNS))
    for row in result["simulated"]:
        lines.append(
            f"  {row['clients']} clients: tick broadcasts would move "
            f"{row['tick_broadcast_mb_s']:.1f} MB/s at one per {HEARTBEAT}s; median SUB "
            f"{row['fanout_median_ms']:.2f} ms (bare {row['bare_fanout_median_ms']:.2f}); "
            f"view() {row['view_ms']:.2f} ms; heartbeat p99 {row['heartbeat_rtt_p99_ms'] or 0:.2f}"
            f" ms over {row['heartbeats']}; tick x health loop {row['tick_x_health_loop']:.1f}"
        )
    big = result["simulated"][-1] if result["simulated"] else {"broadcast_profile": []}
    if big["broadcast_profile"]:
        lines.append(f"  broadcast profile at {big['clients']} clients (own time share):")
    for fn in big["broadcast_profile"][:8]:
        lines.append(
            f"    {fn['own_share']:6.1%} {fn['calls']:>6} calls  {fn['function']}"
            f" (cum {fn['cum_ms_per_broadcast']:.2f} ms/broadcast)"
        )
    head = _head(NODE_COLUMNS)
    lines += [
        "",
        f"fl-node processes, default job, 3 rounds (bare python+torch RSS "
        f"{result['bare_torch_rss_mb']:.0f} MB)",
        head,
        "-" * len(head),
    ]
    for row in result["nodes"]:
        lines.append(_cells(row, NODE_COLUMNS) + (f"  ({row['reason']})" if row["reason"] else ""))
    lines.append(f"most nodes that finished: {result['most_nodes_finished']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = arguments(__doc__)
    parser.add_argument("--clients", type=int, nargs="*", default=list(CLIENTS))
    parser.add_argument("--nodes", type=int, nargs="*", default=list(NODES))
    args = parser.parse_args(argv)
    result = run(tuple(args.clients), tuple(args.nodes))
    publish("scale", result, table(result), args.json)
    return result


if __name__ == "__main__":
    main()
