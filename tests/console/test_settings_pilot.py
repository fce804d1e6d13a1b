"""The settings screen and the kick-and-ban choice drive the real server (App.run_test + Pilot):
a live backend on a data.toml in tmp_path; joins are handed to the server directly."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from console.app.app import ConsoleApp
from console.app.backend import LiveBackend
from console.app.screens import KickConfirm
from console.app.settings import SettingsScreen
from console.config import load_config
from tests.console.pilot import run_console
from tests.console.test_app_pilot import client_status, join
from tests.factories import write_config
from transport.state import ClientStatus, RunState

pytestmark = pytest.mark.timeout(60)


def live(tmp_path: Path) -> tuple[LiveBackend, ConsoleApp, Path]:
    path = write_config(
        tmp_path / "cfg",
        top={"run_id": "pilot-run"},
        coordinator={"init_min_clients": 3, "waiting_for_members_extra_time": 0.0,
                     "health_timeout": 30.0},
        local={"spawn": 0},
    )  # fmt: skip
    backend = LiveBackend(load_config(path), run_dir=tmp_path / "run")
    return backend, ConsoleApp(backend, refresh_hz=10), path


async def open_setting(pilot: Pilot, app: ConsoleApp, key: str) -> SettingsScreen:
    await pilot.press("o")
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, SettingsScreen)
    table = screen.query_one(DataTable)
    table.move_cursor(row=table.get_row_index(key))
    await pilot.pause()
    await pilot.press("enter")
    await pilot.pause()
    return screen


def test_the_settings_screen_changes_init_min_clients_live_and_in_the_file(
    tmp_path: Path,
) -> None:
    backend, app, path = live(tmp_path)

    async def scenario(pilot: Pilot) -> None:
        join(backend, "node-a")
        join(backend, "node-b")
        app.refresh_view()
        screen = await open_setting(pilot, app, "coordinator.init_min_clients")
        help_text = str(screen.query_one("#setting-help", Static).render())
        assert help_text.startswith("Clients that must have joined")
        box = screen.query_one(Input)
        assert screen.editing == "coordinator.init_min_clients" and box.value == "3"
        box.value = "2"
        await pilot.press("enter")
        await pilot.pause()
        result = str(screen.query_one("#setting-result", Static).render())
        assert result == "saved coordinator.init_min_clients 3 -> 2"
        assert backend.server is not None
        assert backend.server.coordinator.state is RunState.WARMUP
        table = screen.query_one(DataTable)
        assert table.get_cell("coordinator.init_min_clients", "value") == "2"
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, SettingsScreen)

    run_console(app, scenario)
    assert "init_min_clients = 2" in path.read_text()
    assert "init_min_clients = 3" in (path.parent / "data.toml.bak").read_text()


def test_a_bad_value_shows_the_rule_and_changes_nothing(tmp_path: Path) -> None:
    backend, app, path = live(tmp_path)
    before = path.read_text()

    async def scenario(pilot: Pilot) -> None:
        screen = await open_setting(pilot, app, "coordinator.min_clients")
        screen.query_one(Input).value = "9"
        await pilot.press("enter")
        await pilot.pause()
        result = str(screen.query_one("#setting-result", Static).render())
        assert result == "coordinator.min_clients = 9: must be <= coordinator.init_min_clients (3)"
        assert screen.editing == "coordinator.min_clients"  # still editing: fix it or escape
        await pilot.press("escape")
        assert screen.editing is None

    run_console(app, scenario)
    assert path.read_text() == before


def test_kick_and_ban_from_the_confirmation(tmp_path: Path) -> None:
    backend, app, _ = live(tmp_path)

    async def scenario(pilot: Pilot) -> None:
        join(backend, "node-a")
        app.refresh_view()
        await pilot.press("k")
        assert isinstance(app.screen, KickConfirm)
        await pilot.press("b")
        await pilot.pause()
        assert client_status(backend, "node-a") is ClientStatus.KICKED
        assert backend.server is not None
        assert backend.server.coordinator.bans == {"node-a": "banned by the operator (console)"}

    run_console(app, scenario)
