"""The operator's hand, end to end: kicks and bans against real spawned ``fl-node`` processes.

The console runs in-process (:class:`ServerThread`, real sockets on 127.0.0.1); its local nodes
are started exactly as ``[local] spawn`` starts them (:class:`LocalNodes`, forked from the fork
server), and the console reaps them.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from console.config import load_config
from console.server.spawn import LocalNodes
from tests.e2e.conftest import Consoles
from tests.e2e.helpers import ServerThread, status_of, wait_until
from tests.factories import write_config
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
        lambda e: e["kind"] == "process" and e.get("node") == name, 90, f"{name}'s exit"
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


def _config(tmp_path: Path, **coordinator: object) -> Path:
    return write_config(
        tmp_path / "cfg",
        coordinator={
            "waiting_for_members_extra_time": 0.0,
            "rounds_per_epoch": 1,
            "round_witness_time": 5.0,
            "cooldown_time": 10.0,
            "heartbeat_interval": 0.25,
            "health_timeout": 5.0,
            **coordinator,
        },
        learning={"train_set_size": 4},
        local={"spawn": 0},
    )


def test_a_run_stalled_by_a_kick_is_rescued_by_lowering_init_min_clients(
    consoles: Consoles, spawned: list[LocalNodes], tmp_path: Path
) -> None:
    """Issue 15's done-when: init_min_clients = 4, one node kicked, the run waits for a fourth
    member after the epoch; set_settings(init_min_clients=3) rescues it and it finishes; the
    file differs only in that value and data.toml.bak holds the old file."""
    path = _config(tmp_path, init_min_clients=4, min_clients=2, total_rounds=2)
    before = path.read_text()
    console = consoles.start(load_config(path), run_dir=tmp_path / "run")
    nodes = spawn(console, spawned, 4, tmp_path / "nodes")
    console.wait_for(lambda s: s.state is RunState.ROUND_TRAIN, 120, "round 1")
    assert console.call(lambda s: s.kick("node-3")).ok
    assert exit_event(console, "node-3")["code"] == ExitCode.REJECTED
    stalled = console.wait_for(
        lambda s: s.state is RunState.WAITING_FOR_MEMBERS and s.accepted_rounds == 1,
        120,
        "back to WaitingForMembers after epoch 0",
    )
    assert stalled.waiting_for == 1
    time.sleep(1.5)  # it stays there: nobody else is coming
    assert console.snapshot().state is RunState.WAITING_FOR_MEMBERS
    assert (
        "waiting for 1 more member; lower coordinator.init_min_clients"
        in console.call(lambda s: s.end_phase()).rejection.reason
    )  # type: ignore[union-attr]

    result = console.call(lambda s: s.set_settings({"coordinator.init_min_clients": "3"}))
    assert result.ok, result.message
    assert result.changed == (("coordinator.init_min_clients", "4", "3"),)
    console.wait_for(lambda s: s.state is RunState.FINISHED, 120, "Finished")
    assert console.snapshot().accepted_rounds == 2
    after = path.read_text()
    assert [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ] == ["-init_min_clients = 4", "+init_min_clients = 3"]
    assert (path.parent / "data.toml.bak").read_text() == before
    assert all(n.process.poll() is None or n.process.poll() in (0, 3) for n in nodes.nodes)


def test_a_banned_node_is_refused_before_and_after_a_restart_with_resume(
    consoles: Consoles, spawned: list[LocalNodes], tmp_path: Path
) -> None:
    path = _config(tmp_path, init_min_clients=2, min_clients=2, total_rounds=3)
    config = load_config(path)
    console = consoles.start(config, run_dir=tmp_path / "run")
    assert console.call(lambda s: s.kick("node-2", ban=True, who="test")).ok
    nodes = spawn(console, spawned, 3, tmp_path / "nodes")
    assert exit_event(console, "node-2")["code"] == ExitCode.REJECTED
    assert "join refused (banned)" in nodes.nodes[2].log_path.read_text()
    console.wait_for(lambda s: s.checkpoint is not None, 120, "round 1's checkpoint")
    lr = console.call(lambda s: s.set_settings({"learning.learning_rate": "0.02"}))
    assert lr.ok, lr.message
    nodes.stop()
    console.stop()

    # what `fl-console data.toml --resume` does: read the file again (the changed setting in it)
    config = load_config(path)
    again = consoles.start(config, run_dir=tmp_path / "run-2", resume=True)
    assert again.call(lambda s: s._run_spec().learning.learning_rate) == 0.02
    assert again.call(lambda s: s.coordinator.bans) == {"node-2": "banned by the operator (test)"}
    late = LocalNodes(
        run_id=config.run_id,
        control_endpoint=connect_address(again.endpoints.control),
        log_dir=tmp_path / "nodes-2",
        prefix="node",
    )
    spawned.append(late)
    again.call(lambda s: s.watch_children(late.reap))
    late.start_one("node-2")
    assert exit_event(again, "node-2")["code"] == ExitCode.REJECTED
    log = late.nodes[0].log_path.read_text()
    assert "join refused (banned): node-2 is banned: banned by the operator (test)" in log
    assert again.call(lambda s: s.unban("node-2")).ok
    late.start_one("node-2")
    again.wait_for(lambda s: status_of(s, "node-2") is ClientStatus.PENDING, 60, "node-2 joins")


def test_learning_settings_reach_the_nodes_at_the_next_warmup(
    consoles: Consoles, spawned: list[LocalNodes], tmp_path: Path
) -> None:
    path = _config(tmp_path, init_min_clients=2, min_clients=2, total_rounds=2)
    console = consoles.start(load_config(path), run_dir=tmp_path / "run")
    nodes = spawn(console, spawned, 2, tmp_path / "nodes")
    console.wait_for(lambda s: s.state is RunState.ROUND_TRAIN, 120, "round 1")
    changes = {"learning.learning_rate": "0.02", "learning.local_epochs": "2"}
    result = console.call(lambda s: s.set_settings(changes, who="test"))
    assert result.ok and "at the next Warmup" in result.message, result.message
    assert console.snapshot().spec_version == 0  # epoch 0 keeps the spec it started with
    console.wait_for(lambda s: s.state is RunState.FINISHED, 120, "Finished")
    assert console.snapshot().accepted_rounds == 2
    [spec] = console.events("spec_changed")
    assert spec["version"] == 1
    assert "learning.learning_rate 0.01 -> 0.02" in spec["text"]
    for node in nodes.nodes:
        log = node.log_path.read_text()
        assert "run spec v0 -> v1: learning.local_epochs 1 -> 2, learning.learning_rate" in log
