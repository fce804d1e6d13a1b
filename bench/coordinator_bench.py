"""Coordinator cost per call at 10, 100 and 1,000 clients (target: < 1 ms at 1,000).

``python -m bench.coordinator_bench [--clients 10 100 1000] [--trials N] [--json PATH]``

The coordinator runs inside the console's event loop: every heartbeat, message and tick
goes through it, so its per-call cost bounds how many nodes one console can serve. Measured
with a fake clock, in a run kept in RoundTrain (``train_set_size`` = ``witness_nodes`` =
min(n, 32)):

- **tick**: health check and deadline check, nobody due (the steady state).
- **heartbeat**: one client's heartbeat (the most frequent message: n / heartbeat_interval
  per second).
- **vote**: one vote of three candidates (the running tally is kept here, so a round start
  only ranks).
- **witness**: a witness report that is not the last one of its round.
- **round end**: the last witness report: decides the round (every trainer against every
  witness), tallies n votes and elects the next round's committee, all in that one call.
- **snapshot**: ``snapshot(now)`` after one heartbeat (one client view rebuilt), what the
  server does on every broadcast; **snapshot cold**: after an epoch start, every view
  rebuilt. **encode** (``transport.codec``, not the coordinator) is shown because the server
  pays it on every broadcast too: the snapshot in a ``state`` message, written by msgspec.

Each figure is the median of many calls, taken over several trials; the machine is shared,
so every figure is also given as a ratio to a baseline measured in the same run: one
``ClientView`` construction (a frozen 7-field dataclass, the unit of work of a snapshot).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.report import arguments, publish
from console.config import CoordinatorConfig
from console.coordinator import Coordinator
from transport import messages as m
from transport.codec import encode
from transport.state import ClientStatus, ClientView, ResultRef, RunState

CLIENTS = (10, 100, 1000)
TARGET_MS = 1.0
RUN = "bench"
FAR = 1e9  # deadlines and health timeouts nobody reaches during a measurement


class _Clock:
    """A strictly increasing fake clock: each call moves it by one microsecond."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1e-6
        return self.t


def _coordinator_cfg(n: int, now: float = 0.0) -> Coordinator:
    k = min(n, 32)
    cfg = CoordinatorConfig(
        init_min_clients=n,
        min_clients=2,
        witness_nodes=k,
        waiting_for_members_extra_time=0.0,
        warmup_time=FAR,
        max_round_train_time=FAR,
        round_witness_time=FAR,
        cooldown_time=FAR,
        rounds_per_epoch=1_000_000,
        total_rounds=1_000_000,
        health_timeout=FAR,
    )
    return Coordinator(cfg, run_id=RUN, seed=1, train_set_size=k, now=now)


def _coordinator(n: int, clock: _Clock) -> tuple[Coordinator, list[str]]:
    """A run of n clients, in RoundTrain of round 1, every trainer committed."""
    ids = [f"node-{i:04d}" for i in range(n)]
    c = _coordinator_cfg(n, clock())
    for cid in ids:
        c.join(cid, RUN, clock(), gossip_endpoint=f"tcp://10.0.0.1:{cid[-4:]}")
    assert c.state is RunState.WARMUP
    _vote_all(c, ids, clock)
    for cid in ids:
        c.warmed_up(cid, clock(), model_hash="init")
    assert c.state is RunState.ROUND_TRAIN
    _commit_all(c, clock)
    return c, ids


def _vote_all(
    c: Coordinator, ids: list[str], clock: _Clock, times: list[float] | None = None
) -> None:
    """Every client votes for itself and its next two neighbours (three candidates)."""
    r = c.snapshot(clock()).round + 1
    for i, cid in enumerate(ids):
        picks = [(ids[(i + j) % len(ids)], 1) for j in range(min(3, len(ids)))]
        t0 = time.perf_counter()
        out = c.vote(cid, r, picks, clock())
        if times is not None:
            times.append(time.perf_counter() - t0)
        assert out.ok


def _commit_all(c: Coordinator, clock: _Clock) -> None:
    cur = c.snapshot(clock()).current
    assert cur is not None
    for t in cur.train_set:
        assert c.commit(t, cur.round, ResultRef(f"h-{t}-{cur.round}", 100), clock()).ok


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def _time_calls(fn: Callable[[], object], calls: int) -> list[float]:
    out = []
    pc = time.perf_counter
    for _ in range(calls):
        t0 = pc()
        fn()
        out.append(pc() - t0)
    return out


def _baseline(calls: int = 20_000) -> float:
    """Seconds for one ClientView construction, the unit every figure is divided by."""

    def make() -> ClientView:
        return ClientView(
            id="node-0001",
            status=ClientStatus.ACTIVE,
            gossip_endpoint="tcp://x",
            warmed_up=True,
            last_seen=1.0,
            joined_at=0.0,
            drop_reason="",
        )

    _time_calls(make, 2000)
    return statistics.median(_time_calls(make, calls))


def _trial(n: int, rounds: int) -> dict[str, list[float]]:
    clock = _Clock()
    c, ids = _coordinator(n, clock)
    samples: dict[str, list[float]] = {k: [] for k in SERIES}

    samples["tick"] = _time_calls(lambda: c.tick(clock()), 2000)
    it = iter(range(10**9))
    samples["heartbeat"] = _time_calls(
        lambda: c.heartbeat(ids[next(it) % n], clock()), max(2000, 4 * n)
    )

    def snap_after_heartbeat() -> float:
        c.heartbeat(ids[next(it) % n], clock())
        t0 = time.perf_counter()
        c.snapshot(clock())
        return time.perf_counter() - t0

    samples["snapshot"] = [snap_after_heartbeat() for _ in range(300)]
    snap = c.snapshot(clock())
    update = m.StateUpdate(seq=1, snapshot=snap)
    samples["encode"] = _time_calls(lambda: encode(update), 30 if n >= 1000 else 200)

    for _ in range(rounds):
        cur = c.snapshot(clock()).current
        assert cur is not None and c.state is RunState.ROUND_TRAIN
        att = {t: f"h-{t}-{cur.round}" for t in cur.train_set}
        # Everyone has voted: the last witness rolls the round on.
        _vote_all(c, ids, clock, samples["vote"])
        *firsts, last = cur.witnesses
        for w in firsts:
            t0 = time.perf_counter()
            out = c.witness(w, cur.round, att, clock())
            samples["witness"].append(time.perf_counter() - t0)
            assert out.ok
        t0 = time.perf_counter()
        out = c.witness(last, cur.round, att, clock())
        samples["round_end"].append(time.perf_counter() - t0)
        assert out.ok and c.state is RunState.ROUND_TRAIN, out
        _commit_all(c, clock)

    # Cold snapshot: the join that starts an epoch turns every client active, so the next
    # snapshot rebuilds every view.
    for _ in range(5):
        cold, cold_clock = _coordinator_cfg(n), _Clock()
        for cid in ids:
            cold.join(cid, RUN, cold_clock())
        assert cold.state is RunState.WARMUP
        t0 = time.perf_counter()
        cold.snapshot(cold_clock())
        samples["snapshot_cold"].append(time.perf_counter() - t0)
    return samples


SERIES = (
    "tick",
    "heartbeat",
    "vote",
    "witness",
    "round_end",
    "snapshot",
    "snapshot_cold",
    "encode",
)
OURS = SERIES[:-1]


def measure(n: int, trials: int, rounds: int, baseline_s: float) -> dict[str, Any]:
    merged: dict[str, list[float]] = {k: [] for k in SERIES}
    for _ in range(trials):
        for k, v in _trial(n, rounds).items():
            merged[k].extend(v)
    row: dict[str, Any] = {"clients": n, "witnesses": min(n, 32), "trainers": min(n, 32)}
    for k in SERIES:
        row[f"{k}_us"] = _median_us(merged[k])
        row[f"{k}_x"] = statistics.median(merged[k]) / baseline_s
        row[f"{k}_n"] = len(merged[k])
    row["max_ours_ms"] = max(row[f"{k}_us"] for k in OURS) / 1000
    return row


def run(clients: tuple[int, ...] = CLIENTS, trials: int = 3, rounds: int = 20) -> dict[str, Any]:
    baseline_s = _baseline()
    rows = [measure(n, trials, rounds, baseline_s) for n in clients]
    return {
        "bench": "coordinator",
        "baseline": "one ClientView construction",
        "baseline_us": baseline_s * 1e6,
        "rows": rows,
        "target_ms": TARGET_MS,
        "max_ms_at_largest": rows[-1]["max_ours_ms"],
        "meets_target": all(r["max_ours_ms"] < TARGET_MS for r in rows),
    }


def table(result: dict[str, Any]) -> str:
    head = f"{'clients':>7} " + " ".join(f"{k:>15}" for k in SERIES)
    lines = [
        f"median us per call (x baseline = {result['baseline_us']:.2f} us, {result['baseline']})",
        head,
        "-" * len(head),
    ]
    for row in result["rows"]:
        cells = " ".join(f"{row[f'{k}_us']:>8.1f} ({row[f'{k}_x']:>4.0f}x)" for k in SERIES)
        lines.append(f"{row['clients']:>7} {cells}")
    lines.append(
        f"slowest coordinator call at {result['rows'][-1]['clients']} clients: "
        f"{result['max_ms_at_largest']:.3f} ms (target < {result['target_ms']} ms); "
        "encode is the state message's encoding, paid by the server per broadcast"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = arguments(__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20, help="rounds timed per trial")
    args = parser.parse_args(argv)
    result = run(tuple(args.clients), args.trials, args.rounds)
    publish("coordinator", result, table(result), args.json)
    return result


if __name__ == "__main__":
    main()
