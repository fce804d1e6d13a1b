"""bench/netlab.py: nodes in their own namespaces reach each other by address, links hold their
rate, and nothing of a lab outlives it (an exception, a signal, a crashed earlier run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bench.netlab import (
    TBF_MIN_BURST,
    LabError,
    NetLab,
    cleanup_stale,
    lab_unavailable,
    namespaces,
    tbf_args,
)
from bench.throughput import measure_mbit
from tests.factories import REPO


@pytest.fixture
def needs_lab() -> None:
    why = lab_unavailable()
    if why is not None:
        pytest.skip(why)
    cleanup_stale()  # namespaces of an earlier run that was killed before it could tear down


@pytest.fixture
def lab(needs_lab: None) -> Iterator[NetLab]:
    with NetLab(3) as made:
        yield made


def test_tbf_bucket_holds_a_gso_packet_and_a_timer_tick_of_traffic() -> None:
    for rate in (1.0, 20.0, 100.0, 1000.0):
        args = dict(zip(tbf_args(rate)[::2], tbf_args(rate)[1::2], strict=True))
        assert args["rate"] == f"{int(rate * 1000)}kbit"
        burst = int(args["burst"])
        assert burst >= TBF_MIN_BURST
        assert burst >= rate * 1e6 / 8 / 250  # what the link sends in one tick at HZ=250
    with pytest.raises(ValueError):
        tbf_args(0)


_LISTEN = """
import socket, sys
server = socket.create_server((sys.argv[1], 0))
server.settimeout(20)
print(server.getsockname()[1], flush=True)
peers = []
for _ in range(int(sys.argv[2])):
    conn, (peer, _) = server.accept()
    peers.append(peer)
    conn.close()
print(" ".join(sorted(peers)), flush=True)
"""

_CONNECT = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=10).close()
"""


def test_every_namespace_reaches_every_other_by_its_own_address(lab: NetLab) -> None:
    everyone = list(zip(lab.namespaces, [lab.hub_address, *lab.node_address], strict=True))
    listeners = {
        ns: lab.popen(
            ns,
            [sys.executable, "-c", _LISTEN, address, str(len(everyone) - 1)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for ns, address in everyone
    }
    ports = {ns: int(p.stdout.readline()) for ns, p in listeners.items()}  # type: ignore[union-attr]
    for ns, _ in everyone:
        targets = [f"{a}:{ports[other]}" for other, a in everyone if other != ns]
        done = lab.run(ns, [sys.executable, "-c", _CONNECT, *targets], capture_output=True)
        assert done.returncode == 0, done.stderr
    for ns, address in everyone:
        seen = listeners[ns].communicate(timeout=20)[0].split()
        # every other namespace came from its own address, and from no other
        assert seen == sorted(a for other, a in everyone if other != ns), (ns, address)
    # the root namespace holds no address of the lab
    root = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True)
    assert f" {lab.subnet}." not in root.stdout


@pytest.mark.slow
def test_a_20_mbit_link_measures_near_20_mbit_each_way(needs_lab: None) -> None:
    with NetLab(2, rate_mbit=20.0) as lab:
        # node 0's uplink and node 1's downlink
        across = measure_mbit(lab, lab.node_ns[0], lab.node_ns[1], lab.node_address[1], seconds=2)
        # the hub -> node 0: its downlink only
        down = measure_mbit(lab, lab.hub_ns, lab.node_ns[0], lab.node_address[0], seconds=2)
        lab.set_rate(None)
        free = measure_mbit(lab, lab.node_ns[0], lab.node_ns[1], lab.node_address[1], seconds=1)
    assert 12 <= across <= 22, across
    assert 12 <= down <= 22, down
    assert free > 100, free  # the limit was the tbf, and lifting it works


def test_two_labs_coexist_on_different_subnets(needs_lab: None) -> None:
    with NetLab(1) as a, NetLab(1) as b:
        assert a.subnet != b.subnet
        assert not set(a.namespaces) & set(b.namespaces)
        assert set(a.namespaces + b.namespaces) <= set(namespaces())
        assert "no added latency" in a.describe()


def test_teardown_removes_every_namespace_and_process_even_when_the_body_raises(
    needs_lab: None,
) -> None:
    with pytest.raises(RuntimeError, match="the body failed"), NetLab(2, rate_mbit=50) as lab:
        names = lab.namespaces
        sleeper = lab.popen(lab.node_ns[1], ["sleep", "60"])
        assert set(names) <= set(namespaces())
        raise RuntimeError("the body failed")
    assert not set(names) & set(namespaces())
    assert sleeper.returncode is not None  # reaped
    lab.teardown()  # idempotent
    with pytest.raises(LabError):
        lab.exec_args(lab.hub_ns)


def test_exec_args_refuses_a_namespace_that_is_not_the_labs(lab: NetLab) -> None:
    assert lab.exec_args(lab.node_ns[0]) == ["ip", "netns", "exec", lab.node_ns[0]]
    with pytest.raises(ValueError):
        lab.exec_args("some-other-ns")


@contextmanager
def _child_with_a_lab(
    prelude: str = "",
) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:
    """A Python child that builds a lab and sleeps: (child, a process in the lab, its names);
    killed and reaped at the end, and any lab it left behind removed."""
    script = textwrap.dedent(
        """
        import signal, time
        from bench.netlab import NetLab
        PRELUDE
        lab = NetLab(2, rate_mbit=10)
        sleeper = lab.popen(lab.node_ns[0], ["sleep", "60"])
        print(sleeper.pid, *lab.namespaces, flush=True)
        time.sleep(60)
        """
    ).replace("PRELUDE", prelude)
    child = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        pid, *names = child.stdout.readline().split()
        yield child, pid, names
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        cleanup_stale()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_tears_the_lab_down_then_acts_as_before(needs_lab: None, sig: int) -> None:
    with _child_with_a_lab() as (child, pid, names):
        assert names and set(names) <= set(namespaces())
        child.send_signal(sig)
        assert child.wait(timeout=30) == -sig  # the previous handler's way out, after teardown
        assert not set(names) & set(namespaces())
        assert not os.path.exists(f"/proc/{pid}")


def test_an_ignored_sigint_stays_ignored_and_sigterm_still_tears_down(needs_lab: None) -> None:
    # a background job of a shell starts with SIGINT ignored: the lab must not change that
    with _child_with_a_lab("signal.signal(signal.SIGINT, signal.SIG_IGN)") as (child, pid, names):
        child.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)
        assert set(names) <= set(namespaces())
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == -signal.SIGTERM
        assert not set(names) & set(namespaces())
        assert not os.path.exists(f"/proc/{pid}")


def _dead_pid() -> int:
    for pid in range(4_000_000, 3_999_000, -1):  # bounded: pids this high are rarely in use
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
    raise AssertionError("no free pid found")


def test_cleanup_stale_deletes_only_dead_labs_namespaces(needs_lab: None) -> None:
    stale = [f"flnl{_dead_pid()}x0-hub", f"flnl{_dead_pid()}x0-n0"]
    kept = [f"flnl{os.getpid()}x999-hub", "flnlnotalab"]  # a live owner; not a lab's name
    try:
        for ns in stale + kept:
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=20)
        with NetLab(1) as live:
            removed = cleanup_stale()
            left = set(namespaces())
            assert set(live.namespaces) <= left
        assert sorted(removed) == sorted(stale)
        assert set(kept) <= left and not set(stale) & left
        with pytest.raises(ValueError):
            cleanup_stale("x")
    finally:
        for ns in stale + kept:
            if ns in namespaces():
                subprocess.run(["ip", "netns", "del", ns], timeout=20)


def test_lab_unavailable_says_why_when_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    lab_unavailable.cache_clear()
    try:
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        why = lab_unavailable()
        assert why is not None and "root" in why
    finally:
        monkeypatch.undo()
        lab_unavailable.cache_clear()  # the next test probes the real machine again
