"""``fl-console data.toml --headless --spawn N``: runs to the end, stops on Ctrl+C, leaves
no process behind.

The console is a child in its own session, so every process it starts (its nodes, anything
they start) can be found by session id after it exits.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.child import Child, console_command, is_running, session_members, spawned_nodes
from tests.e2e.conftest import Processes
from tests.e2e.helpers import read_events
from tests.factories import write_config

pytestmark = pytest.mark.slow


def _headless(processes: Processes, config: Path, run_dir: Path, spawn: int) -> Child:
    """The console in its own session (as a terminal starts it), so Ctrl+C reaches its group."""
    return processes.start("fl-console", console_command(config, run_dir, "--spawn", str(spawn)))


def _watch_children(console: Child, until: float) -> set[int]:
    """The console's fl-node processes, scanned from /proc until it exits or ``until``."""
    seen: set[int] = set()
    while console.alive and time.monotonic() < until:
        seen |= spawned_nodes(console.pid)
        time.sleep(0.05)
    return seen


def _no_traceback(run_dir: Path, console: Child) -> None:
    assert "Traceback" not in console.output(), console.output()[-3000:]
    logs = sorted((run_dir / "nodes").glob("*.log"))
    assert logs, "no node logs"
    for log in logs:
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, f"{log}:\n{text[-3000:]}"


def test_headless_spawn_4_runs_to_finished_exits_0_and_leaves_no_process_behind(
    tmp_path: Path, processes: Processes
) -> None:
    config = write_config(tmp_path, coordinator={"total_rounds": 2, "rounds_per_epoch": 1})
    run_dir = tmp_path / "run"
    console = _headless(processes, config, run_dir, spawn=4)
    children = _watch_children(console, until=time.monotonic() + 90)
    assert console.wait(timeout=10) == 0, console.output()[-3000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_state"] == "Finished"
    assert summary["accepted_rounds"] == 2
    assert len(summary["spawned_pids"]) == 4
    assert children == set(summary["spawned_pids"])
    for client in summary["clients"]:  # every reply the console sent a node is counted
        assert client["bytes_in"] > 0 and client["bytes_out"] > 0, client
    # a clean run refuses nothing: not even the heartbeats and last metrics that race the end
    refused = [e["text"] for e in read_events(run_dir / "events.jsonl") if e["kind"] == "reject"]
    assert summary["rejected_messages"] == 0, refused
    assert "run_finished" in [e["kind"] for e in read_events(run_dir / "events.jsonl")]
    _no_traceback(run_dir, console)
    assert [pid for pid in children if is_running(pid)] == []
    assert session_members(console.pid) == set()


@pytest.mark.parametrize("to", ["console", "process group"])
def test_ctrl_c_stops_a_headless_run_and_its_nodes_mid_run(
    tmp_path: Path, processes: Processes, to: str
) -> None:
    config = write_config(
        tmp_path,
        coordinator={"init_min_clients": 2, "total_rounds": 50, "rounds_per_epoch": 25},
    )
    run_dir = tmp_path / "run"
    console = _headless(processes, config, run_dir, spawn=2)
    deadline = time.monotonic() + 60
    children: set[int] = set()
    while not any(e["kind"] == "round_started" for e in read_events(run_dir / "events.jsonl")):
        assert console.alive, console.output()[-3000:]
        assert time.monotonic() < deadline, "the run did not reach its first round"
        children |= spawned_nodes(console.pid)
        time.sleep(0.05)
    children |= spawned_nodes(console.pid)
    assert len(children) == 2

    if to == "console":
        console.signal(signal.SIGINT)
    else:  # what a terminal's Ctrl+C does: the console leads its own process group
        os.killpg(console.pid, signal.SIGINT)
    code = console.wait(timeout=20)
    assert code > 0, f"exit {code}: not a clean stop\n{console.output()[-3000:]}"
    assert "stopped on signal" in console.output()
    _no_traceback(run_dir, console)
    assert [pid for pid in children if is_running(pid)] == []
    assert session_members(console.pid) == set()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_state"] != "Finished"
    assert set(summary["spawned_pids"]) == children
