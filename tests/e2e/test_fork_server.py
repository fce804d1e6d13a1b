"""Local nodes forked by ``node.forkserver``: real processes with their own pids, reachable by
signal, reported when they end, and never left behind when the console goes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from console.server.forkserver import ForkedProcess
from console.server.spawn import LocalNodes
from tests.e2e.child import children_of, is_running
from tests.factories import REPO, free_ports

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="Linux only")]


def _nowhere() -> str:
    return f"tcp://127.0.0.1:{free_ports(1)[0]}"  # nothing listens: a node waits to join


def _nodes(tmp_path: Path, *, join_timeout: float = 60.0) -> LocalNodes:
    return LocalNodes(
        run_id="fork-run",
        control_endpoint=_nowhere(),
        log_dir=tmp_path / "nodes",
        node_args=lambda _name: ("--join-timeout", str(join_timeout)),
        fork_server=True,
    )


def _catches(pid: int, sig: signal.Signals, within: float = 30.0) -> bool:
    """Wait until the node ``pid`` has its own handler for ``sig`` (its ``SigCgt`` mask in
    /proc, once it is named fl-node: before, the fork server's handlers are copies)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if Path(f"/proc/{pid}/comm").read_text().strip() == "fl-node":
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("SigCgt:") and int(line.split()[1], 16) >> (sig - 1) & 1:
                    return True
        time.sleep(0.05)
    return False


def _wait_gone(pids: list[int], within: float) -> list[int]:
    deadline = time.monotonic() + within
    alive = [p for p in pids if is_running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in pids if is_running(p)]
    return alive


def test_forked_nodes_are_real_processes_of_the_fork_server_with_their_own_pids(
    tmp_path: Path,
) -> None:
    nodes = _nodes(tmp_path)
    try:
        started = nodes.start(3)
        pids = [n.process.pid for n in started]
        server = nodes.fork_server
        assert server is not None and server.process is not None
        assert len(set(pids)) == 3 and os.getpid() not in pids
        assert set(pids) <= children_of(server.process.pid)
        assert all(is_running(p) for p in pids)
        # each node is named fl-node in ps (the server keeps its own) and runs fl-node's main
        assert all(_catches(p, signal.SIGTERM) for p in pids)
        assert Path(f"/proc/{server.process.pid}/comm").read_text().strip() != "fl-node"
        assert all(n.alive for n in started)
        assert nodes.pids == pids
        assert server.ready is not None and server.ready["threads"] == 1, server.ready
    finally:
        nodes.stop(timeout=5)
    assert _wait_gone(pids, 5) == []
    assert all(n.process.returncode is not None for n in started)


def test_a_signal_sent_to_a_forked_node_reaches_it_and_its_end_is_reported(
    tmp_path: Path,
) -> None:
    nodes = _nodes(tmp_path)
    try:
        calm, killed = nodes.start(2)
        assert _catches(calm.process.pid, signal.SIGTERM), "the node never set up its handlers"
        calm.process.send_signal(signal.SIGTERM)  # a node stops cleanly on SIGTERM: exit 0
        assert calm.process.wait(timeout=15) == 0
        killed.process.send_signal(signal.SIGKILL)
        assert killed.process.wait(timeout=15) == -signal.SIGKILL
        assert not calm.alive and not killed.alive
    finally:
        nodes.stop(timeout=5)


def test_a_node_that_fails_is_reported_with_its_exit_code_and_its_log(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path, join_timeout=0.5)
    try:
        (bad,) = nodes.start(1, extra_args=("--no-such-option",))
        (unreachable,) = nodes.start(1)
        assert bad.process.wait(timeout=15) == 2  # argparse's usage error
        assert "--no-such-option" in bad.log_path.read_text()
        assert unreachable.process.wait(timeout=30) == 4  # EXIT_UNREACHABLE
        # the server keeps forking after a child failed
        (later,) = nodes.start(1)
        assert later.process.pid not in (bad.process.pid, unreachable.process.pid)
        assert later.alive
    finally:
        nodes.stop(timeout=5)


def test_a_killed_console_leaves_no_fork_server_and_no_node_behind(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from console.server.spawn import LocalNodes
        nodes = LocalNodes(run_id="fork-run", control_endpoint={_nowhere()!r},
                           log_dir=Path({str(tmp_path / "nodes")!r}), fork_server=True,
                           node_args=lambda _n: ("--join-timeout", "120"))
        started = nodes.start(2)
        print(nodes.fork_server.process.pid, *[n.process.pid for n in started], flush=True)
        time.sleep(120)
        """
    )
    console = subprocess.Popen(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert console.stdout is not None
        pids = [int(p) for p in console.stdout.readline().split()]
        assert len(pids) == 3 and all(is_running(p) for p in pids)
        console.kill()  # SIGKILL: no clean-up code runs in the console
        console.wait(timeout=10)
        assert _wait_gone(pids, 15) == [], "a fork server or node outlived its console"
    finally:
        if console.poll() is None:
            console.kill()
            console.wait()


def test_stopping_before_the_fork_server_is_ready_forks_nothing_and_hangs_nothing(
    tmp_path: Path,
) -> None:
    nodes = _nodes(tmp_path)
    started = nodes.start(2)  # the server is still importing torch
    begun = time.monotonic()
    nodes.stop(timeout=5)
    assert time.monotonic() - begun < 10
    server = nodes.fork_server
    assert server is not None and server.process is not None
    assert server.process.returncode is not None
    for node in started:
        process = node.process
        assert isinstance(process, ForkedProcess)
        assert process.wait(timeout=5) is not None
        if process.started:
            assert not is_running(process.pid)


def test_a_sigterm_sent_the_moment_a_node_is_forked_still_stops_it(tmp_path: Path) -> None:
    """Not swallowed by the fork server's own SIGTERM handler, which the child inherits until it
    resets its handlers (the signal is blocked across the fork)."""
    nodes = _nodes(tmp_path)
    try:
        started = nodes.start(3)
        for node in started:
            node.process.send_signal(signal.SIGTERM)  # as soon as its pid is known
        for node in started:
            assert node.process.wait(timeout=15) in (0, -signal.SIGTERM)
    finally:
        nodes.stop(timeout=5)
