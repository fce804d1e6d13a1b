"""TCP throughput between two network namespaces of a lab, measured with plain Python sockets.

:func:`measure_mbit` starts a receiver in one namespace and a sender in another (each a tiny
``python -c`` script, so nothing but the standard library runs in the namespaces), streams for
a bounded time and byte count, and reports the receiver's Mbit/s of TCP payload. It is how
``python -m bench.netlab`` and tests/bench/test_netlab.py check the lab's tc settings.
"""

from __future__ import annotations

import select
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, Protocol

REAP_TIMEOUT = 3.0
"""Seconds a stuck receiver gets to go after SIGKILL."""


class Lab(Protocol):
    """What a measurement needs of a lab (bench.netlab.NetLab): start programs in a namespace."""

    def popen(self, ns: str, args: Sequence[str], **kw: Any) -> subprocess.Popen[Any]: ...

    def run(self, ns: str, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]: ...


class ThroughputError(RuntimeError):
    """The sender or the receiver failed: what it said."""


_SINK = """
import socket, sys, time
address, timeout = sys.argv[1], float(sys.argv[2])
server = socket.create_server((address, 0))
server.settimeout(timeout)
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
conn.settimeout(timeout)
first = last = None
counted = 0
while True:
    chunk = conn.recv(1 << 20)
    if not chunk:
        break
    last = time.monotonic()
    if first is None:
        first = last  # the clock starts with the first chunk, which is not counted
    else:
        counted += len(chunk)
print(counted, (last or 0.0) - (first or 0.0), flush=True)
"""

_SOURCE = """
import socket, sys, time
address, port, seconds, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
block = b"x" * (1 << 16)
sent = 0
with socket.create_connection((address, port), timeout=seconds + 10) as conn:
    end = time.monotonic() + seconds
    while sent < limit and time.monotonic() < end:
        conn.sendall(block)
        sent += len(block)
"""


def measure_mbit(
    lab: Lab,
    source_ns: str,
    sink_ns: str,
    sink_address: str,
    *,
    seconds: float = 3.0,
    max_bytes: int = 2 << 30,
) -> float:
    """TCP throughput ``source_ns`` -> ``sink_address`` (in ``sink_ns``), in Mbit/s.

    A plain Python sender streams for ``seconds`` (at most ``max_bytes``); the receiver times
    from its first chunk to the last. Every wait is bounded; both processes are reaped.
    """
    timeout = seconds + 20.0
    sink = lab.popen(
        sink_ns,
        [sys.executable, "-c", _SINK, sink_address, str(timeout)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None
        ready, _, _ = select.select([sink.stdout], [], [], 20.0)
        line = sink.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            sink.kill()
            _, err = sink.communicate(timeout=REAP_TIMEOUT)
            raise ThroughputError(f"throughput sink did not start: {err.strip()[-500:]}")
        source = lab.run(
            source_ns,
            [sys.executable, "-c", _SOURCE, sink_address, line.strip(), str(seconds)]
            + [str(max_bytes)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if source.returncode != 0:
            raise ThroughputError(f"throughput source failed: {source.stderr.strip()[-500:]}")
        out, err = sink.communicate(timeout=timeout)
        if sink.returncode != 0:
            raise ThroughputError(f"throughput sink failed: {err.strip()[-500:]}")
        counted, elapsed = out.split()
        if float(elapsed) <= 0:
            raise ThroughputError("throughput sink received too little to time")
        return int(counted) * 8 / float(elapsed) / 1e6
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait(timeout=REAP_TIMEOUT)
