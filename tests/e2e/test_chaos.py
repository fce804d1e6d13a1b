"""The short chaos run: 40 rounds of six real ``fl-node`` processes under a seeded storm of
faults (SIGKILL, SIGSTOP/SIGCONT, restart, garbage floods on the control port) and two
console SIGKILLs with ``--resume``; the books must balance at the end (:mod:`bench.chaos`,
whose long version is ``make soak``). Every process it started is reaped even when it fails
(:meth:`tests.e2e.fault_runs.ControlledRun.close`, and the leftover check).

And the bug the chaos run found: a burst of big garbage messages left the console's memory
high for good (:func:`console.server.server.return_big_buffers`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from bench import chaos
from bench.chaos_checks import table
from tests.e2e.fault_runs import controlled_run, fault_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_short_chaos_run_finishes_with_every_round_accounted_for_and_nothing_leaking(
    tmp_path: Path,
) -> None:
    result = chaos.run(rounds=40, seed=5, directory=tmp_path, interval=(1.0, 2.5), time_limit=150.0)
    print(table(result))
    kinds = result["faults_by_kind"]
    # the storm happened: nodes killed or stopped, and the console killed twice
    assert kinds.get("console_sigkill") == 2, kinds
    assert result["consoles"] == 3
    assert sum(kinds.get(k, 0) for k in ("sigkill", "sigstop", "sigstop_long", "restart")) >= 3
    failed = {name: c["detail"] for name, c in result["checks"].items() if not c["ok"]}
    assert failed == {}, table(result)


def _big_burst(endpoint: str, console: Any, count: int, size: int) -> int:
    """``count`` big headers (``size`` bytes each) from one DEALER, its replies read for 3 s;
    returns the console's peak RSS (kB) meanwhile. The console is stopped (SIGSTOP) while the
    burst is sent and continued once it is queued, so the whole burst lands at once: its
    memory is then held for as long as the console takes to parse it, however fast it is."""
    pid = console.pid
    header = json.dumps({"v": 1, "type": "heartbeat", "node_id": "x", "stage": "x" * size})
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    peak = 0
    try:
        sock.connect(endpoint)
        time.sleep(0.2)  # connected before the console stops
        console.stop()
        try:
            for _ in range(count):
                sock.send(header.encode())
            time.sleep(0.2)
        finally:
            console.cont()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            if sock.poll(50):
                sock.recv_multipart()
            peak = max(peak, chaos.proc_rss_kb(pid) or 0)
    finally:
        sock.close(0)
        ctx.term()
    return peak


def test_a_burst_of_big_garbage_messages_costs_the_console_no_lasting_memory(
    tmp_path: Path,
) -> None:
    """Before the fix: 45 MB, then 109, 153 and 166 MB after three bursts of 200 x 1 MB.

    Flood control off (``refusal_limit = 0``): every message is read and refused, as from
    a member, whose garbage is never dropped unread."""
    config = fault_config(tmp_path, top={"run_id": "burst"}, server={"refusal_limit": 0})
    with controlled_run(tmp_path, config) as run:
        console = run.start_console()
        console.wait_for(lambda e: e.get("kind") == "server", 60, "the console serving")
        time.sleep(1.0)
        base = chaos.proc_rss_kb(console.pid) or 0
        peaks, settled = [], []
        for _ in range(3):
            # headers just under the 1 MiB limit: each is parsed, not refused by its size alone
            peaks.append(_big_burst(run.control, console, count=200, size=(1 << 20) - 4096))
            time.sleep(1.0)
            settled.append(chaos.proc_rss_kb(console.pid) or 0)
        assert console.alive
    mb = [round(x / 1024) for x in (base, *peaks, *settled)]
    print(f"console RSS MB: base {mb[0]}, burst peaks {mb[1:4]}, after each burst {mb[4:]}")
    assert max(peaks) > base + 20 * 1024, "the bursts never reached the console"
    assert max(settled) < base * 1.2, f"memory kept after the bursts: {mb}"
