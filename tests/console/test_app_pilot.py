"""The console's keys drive the real server: pause, kick, quit (App.run_test + Pilot).

Each test runs a real ConsoleServer bound to free ports on 127.0.0.1 inside the app's loop
(LiveBackend); fake clients join by handing the server encoded ``join`` requests directly.
The quit test spawns real child processes and checks that they are reaped.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from textual.coordinate import Coordinate
from textual.pilot import Pilot

from console.app.app import ConsoleApp
from console.app.backend import LiveBackend
from console.app.screens import HelpScreen, KickConfirm
from console.app.widgets import ClientsTable, EventLogView, RunHeader
from console.app.widgets.eventlog import MAX_LINES as EVENT_LINES
from console.config import CheckpointConfig, Config, CoordinatorConfig, ServerConfig
from console.record.eventlog import LogLine
from console.server.spawn import LocalNode, LocalNodes
from tests.console.pilot import run_console, static_app
from tests.snapshots.fixtures import mid_round_view
from transport import messages as m
from transport.codec import encode
from transport.state import ClientStatus, RunState

pytestmark = pytest.mark.timeout(60)


def make_config(tmp_path: Path) -> Config:
    return Config(
        run_id="pilot-run",
        server=ServerConfig(host="127.0.0.1", state_port=0, control_port=0),
        coordinator=CoordinatorConfig(
            init_min_clients=3,
            min_clients=2,
            witness_nodes=1,
            waiting_for_members_extra_time=30.0,
            heartbeat_interval=0.5,
            health_timeout=30.0,
            total_rounds=2,
            rounds_per_epoch=2,
        ),
        checkpoint=CheckpointConfig(dir=tmp_path / "checkpoints"),
    )


def live_app(tmp_path: Path, spawn: int = 0) -> tuple[LiveBackend, ConsoleApp]:
    """The console app on a live backend; ``spawn`` children, harmless sleepers, when asked."""

    def nodes(control: str) -> LocalNodes:
        return SleepingNodes(run_id="pilot-run", control_endpoint=control, log_dir=tmp_path / "n")

    extra: dict[str, Any] = {"spawn": spawn, "nodes_factory": nodes} if spawn else {}
    backend = LiveBackend(make_config(tmp_path), run_dir=tmp_path / "run", **extra)
    return backend, ConsoleApp(backend, refresh_hz=10)


def _kill(children: list[subprocess.Popen[bytes]]) -> None:
    """Kill and reap what the console under test left running."""
    for p in children:
        if p.poll() is None:
            p.kill()
            p.wait()


class SleepingNodes(LocalNodes):
    """LocalNodes whose children are harmless sleepers instead of fl-node processes."""

    def start_one(self, name: str, *, extra_args: tuple[str, ...] = ()) -> LocalNode:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter
            [sys.executable, "-c", "import time; time.sleep(60)"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        node = LocalNode(name, process, self.log_dir / f"{name}.log")
        self.nodes.append(node)
        return node


def join(backend: LiveBackend, node_id: str) -> None:
    server = backend.server
    assert server is not None
    frames = encode(
        m.Join(run_id="pilot-run", node_id=node_id, gossip_endpoint=f"tcp://127.0.0.1:{node_id}")
    )
    replies = server.handle(node_id.encode(), frames, sum(len(f) for f in frames))
    assert isinstance(replies[0], m.JoinAck), replies


def client_status(backend: LiveBackend, client_id: str) -> ClientStatus:
    assert backend.server is not None
    view = backend.server.coordinator.snapshot(backend.server.clock()).client(client_id)
    assert view is not None
    return view.status


def test_pause_key_reaches_the_coordinator_and_resume_key_undoes_it(tmp_path: Path) -> None:
    backend, app = live_app(tmp_path)

    async def scenario(pilot: Pilot) -> None:
        join(backend, "node-a")
        await pilot.press("p")
        await pilot.pause()
        assert backend.server is not None
        assert backend.server.coordinator.state is RunState.PAUSED
        assert "PAUSED" in str(app.query_one(RunHeader).render())
        assert any(line.text == "operator: pause" for line in backend.view().log)
        assert app.check_action("pause", ()) is False  # the footer now offers resume
        await pilot.press("r")
        await pilot.pause()
        assert backend.server.coordinator.state is RunState.WAITING_FOR_MEMBERS

    run_console(app, scenario)


def test_kick_key_with_confirmation_kicks_the_selected_client(tmp_path: Path) -> None:
    backend, app = live_app(tmp_path)

    async def scenario(pilot: Pilot) -> None:
        join(backend, "node-a")
        join(backend, "node-b")
        app.refresh_view()
        await pilot.press("down")  # node-a -> node-b
        assert app.query_one(ClientsTable).cursor_key == "node-b"
        await pilot.press("k")
        assert isinstance(app.screen, KickConfirm)
        assert app.screen.client.id == "node-b"
        await pilot.press("y")
        await pilot.pause()
        assert not isinstance(app.screen, KickConfirm)
        assert client_status(backend, "node-b") is ClientStatus.KICKED
        assert client_status(backend, "node-a") is ClientStatus.PENDING
        table = app.query_one(ClientsTable)
        assert table.get_cell("node-b", "state").plain == "kicked"
        assert table.cursor_key == "node-b"  # the cursor stays on the row it was on

    run_console(app, scenario)


def test_kick_cancelled_in_the_confirmation_kicks_nobody(tmp_path: Path) -> None:
    backend, app = live_app(tmp_path)

    async def scenario(pilot: Pilot) -> None:
        join(backend, "node-a")
        app.refresh_view()
        await pilot.press("k")
        assert isinstance(app.screen, KickConfirm)
        await pilot.press("escape")
        await pilot.pause()
        assert client_status(backend, "node-a") is ClientStatus.PENDING

    run_console(app, scenario)


def _port_free(endpoint: str) -> bool:
    port = int(endpoint.rsplit(":", 1)[1])
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_quit_stops_the_spawned_children_and_the_server(tmp_path: Path) -> None:
    backend, app = live_app(tmp_path, spawn=2)
    children: list[subprocess.Popen[bytes]] = []
    endpoints: list[str] = []

    async def scenario(pilot: Pilot) -> None:
        assert backend.nodes is not None and backend.server is not None
        children.extend(node.process for node in backend.nodes.nodes)
        endpoints.append(backend.server.endpoints.control)
        assert len(children) == 2 and all(p.poll() is None for p in children)
        await pilot.press("q")
        await pilot.pause()

    try:
        run_console(app, scenario)
        assert app.return_code == 0
        assert all(p.returncode is not None for p in children), "a child was not reaped"
        assert _port_free(endpoints[0]), "the control socket is still bound"
    finally:
        _kill(children)


def test_any_exit_stops_the_children(tmp_path: Path) -> None:
    backend, app = live_app(tmp_path, spawn=1)
    children: list[subprocess.Popen[bytes]] = []

    async def scenario(pilot: Pilot) -> None:
        assert backend.nodes is not None
        children.extend(node.process for node in backend.nodes.nodes)
        app.exit()  # not the quit key: e.g. ctrl+q or an error

    try:
        run_console(app, scenario)
        assert children and all(p.returncode is not None for p in children)
    finally:
        _kill(children)


def test_a_server_that_cannot_start_exits_with_2(tmp_path: Path) -> None:
    backend = LiveBackend(make_config(tmp_path), run_dir=tmp_path / "run", resume=True)
    app = ConsoleApp(backend)

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause()

    run_console(app, scenario)
    assert app.return_code == 2  # --resume without a checkpoint


def test_a_refused_action_is_shown_not_raised() -> None:
    backend, app = static_app(mid_round_view(), refuse="the run is finished")

    async def scenario(pilot: Pilot) -> None:
        await pilot.press("e")
        await pilot.pause()
        assert backend.calls == [("end_phase",)]
        assert any("refused" in n.message for n in app._notifications)

    run_console(app, scenario)


def test_help_key_opens_the_help_and_escape_closes_it() -> None:
    _, app = static_app(mid_round_view())

    async def scenario(pilot: Pilot) -> None:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("p")  # operator keys do nothing behind a modal
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        assert app.backend.calls == []  # type: ignore[attr-defined]

    run_console(app, scenario)


def test_operator_commands_are_in_the_palette() -> None:
    _, app = static_app(mid_round_view())

    async def scenario(pilot: Pilot) -> None:
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"pause")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert app.backend.calls == [("pause",)]  # type: ignore[attr-defined]

    run_console(app, scenario)


def test_a_refresh_updates_cells_in_place_and_keeps_the_cursor() -> None:
    view = mid_round_view()
    backend, app = static_app(view)

    async def scenario(pilot: Pilot) -> None:
        table = app.query_one(ClientsTable)
        await pilot.press("down", "down", "down")
        assert table.cursor_key == "node-3"
        newcomer = replace(view.clients[0], id="a-node", heartbeat_age=0.1)
        clients = [replace(c, heartbeat_age=9.9) if c.id == "node-3" else c for c in view.clients]
        backend.set_view(replace(view, clients=(newcomer, *clients)))
        app.refresh_view()
        await pilot.pause()
        assert table.cells_written == len(table.columns) + 1  # the new row, one heartbeat
        assert table.get_cell("node-3", "heartbeat").plain == "9.9s"
        assert table.coordinate_to_cell_key(Coordinate(0, 0)).row_key.value == "a-node"
        assert table.cursor_key == "node-3"  # the row moved down; the cursor went with it

    run_console(app, scenario)


def test_the_event_log_pane_is_bounded() -> None:
    lines = tuple(LogLine(float(i), "state_changed", f"line {i}") for i in range(EVENT_LINES + 100))
    _, app = static_app(replace(mid_round_view(), log=lines))

    async def scenario(pilot: Pilot) -> None:
        pane = app.query_one(EventLogView)
        assert len(pane.lines) == EVENT_LINES
        assert pane.lines[-1].text.endswith(f"line {EVENT_LINES + 99}")

    run_console(app, scenario)
