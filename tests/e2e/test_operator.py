"""The operator's hand, end to end: kicks and bans against real spawned ``fl-node`` processes.

The console runs in-process (:class:`ServerThread`, real sockets on 127.0.0.1); its local nodes
are started exactly as ``[local] spawn`` starts them (:class:`LocalNodes`, forked from the fork
server), and the console reaps them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from console.server.spawn import LocalNodes
from tests.e2e.conftest import Consoles
from tests.e2e.helpers import ServerThread, status_of, wait_until
from transport.exit_codes import ExitCode
from transport.net import connect_address
from transport.state import ClientStatus, RunState


@pytest.fixture
def spawned(tmp_path: Path) -> Iterator[list[LocalNodes]]:
    made: list[LocalNodes] = []
    yield made
    for nodes in made:
        nodes.stop()


def spawn(console: ServerThread, made: list[LocalNodes], count: int, log_dir: Path) -> LocalNodes:
    nodes = LocalNodes(
        run_id=console.config.run_id,
        control_endpoint=connect_address(console.endpoints.control),
        log_dir=log_dir,
    )
    made.append(nodes)
    console.call(lambda s: s.watch_children(nodes.reap))
    nodes.start(count)
    return nodes


def exit_event(console: ServerThread, name: str) -> dict:
    return console.wait_for_event(
        lambda e: e["kind"] == "process" and e.get("node") == name, 20, f"{name}'s exit"
    )


def test_a_kicked_node_exits_3_and_is_reaped_and_a_banned_one_too(
    consoles: Consoles, spawned: list[LocalNodes], tmp_path: Path
) -> None:
    console = consoles.start(consoles.config(init_min_clients=3, health_timeout=60.0))
    nodes = spawn(console, spawned, 2, tmp_path / "nodes")
    console.wait_for(
        lambda s: all(status_of(s, f"node-{i}") is ClientStatus.PENDING for i in range(2)),
        60,
        "two pending nodes",
    )
    assert console.call(lambda s: s.kick("node-0")).ok
    event = exit_event(console, "node-0")
    assert event["code"] == ExitCode.REJECTED, event
    assert nodes.nodes[0].process.poll() == ExitCode.REJECTED
    # it stopped heartbeating: no refusals pile up once it is gone
    rejected = console.call(lambda s: s.rejected_messages)
    time.sleep(1.0)
    assert console.call(lambda s: s.rejected_messages) == rejected
    assert "removed from the run by the console" in nodes.nodes[0].log_path.read_text()

    outcome = console.call(lambda s: s.kick("node-1", ban=True, who="test"))
    assert outcome.ok
    assert exit_event(console, "node-1")["code"] == ExitCode.REJECTED
    log = nodes.nodes[1].log_path.read_text()
    assert "banned" in log and "banned by the operator (test)" in log
    assert console.snapshot().state is RunState.WAITING_FOR_MEMBERS
    operator = [e["text"] for e in console.events("operator")]
    assert operator == ["operator: kick node-0", "operator (test): ban node-1"]


def test_a_banned_id_is_refused_at_join_with_exit_3(
    consoles: Consoles, spawned: list[LocalNodes], tmp_path: Path
) -> None:
    console = consoles.start(consoles.config(init_min_clients=3, health_timeout=60.0))
    assert console.call(lambda s: s.kick("node-0", ban=True)).ok  # before it ever joined
    nodes = spawn(console, spawned, 1, tmp_path / "nodes")
    assert exit_event(console, "node-0")["code"] == ExitCode.REJECTED
    assert "join refused (banned): node-0 is banned" in nodes.nodes[0].log_path.read_text()
    assert console.call(lambda s: s.unban("node-0")).ok
    again = LocalNodes(
        run_id=console.config.run_id,
        control_endpoint=connect_address(console.endpoints.control),
        log_dir=tmp_path / "again",
    )
    spawned.append(again)
    again.start(1)
    console.wait_for(lambda s: status_of(s, "node-0") is ClientStatus.PENDING, 60, "node-0 back")
    wait_until(lambda: again.nodes[0].alive, 1, "node-0 alive")
