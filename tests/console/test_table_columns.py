"""Narrow terminals: the tables leave out their least important columns, and bring them back
(with their latest figures) when the terminal widens."""

from __future__ import annotations

from dataclasses import replace

import pytest
from textual.pilot import Pilot

from console.app.cells import CLIENT_COLUMNS, ROUND_COLUMNS
from console.app.columns import Column, column_width, columns_that_fit
from console.app.widgets import ClientsTable, RoundsTable
from tests.console.pilot import run_console, static_app
from tests.snapshots.fixtures import mid_round_view

pytestmark = pytest.mark.timeout(60)

COLUMNS = (
    Column("id", "id", 4),  # always shown: 6 cells with padding
    Column("a", "a", 8, priority=2),  # 10
    Column("b", "b", 2, priority=1),  # 4
    Column("c", "c", 3, priority=3),  # 5
    Column("note", "note", None),  # fit to content: counted as FIT_RESERVE + padding
)


def test_the_most_important_columns_that_fit_are_kept_in_their_declared_order() -> None:
    always = column_width(COLUMNS[0]) + column_width(COLUMNS[4])
    assert columns_that_fit(COLUMNS, always) == (0, 4)
    assert columns_that_fit(COLUMNS, always + 4) == (0, 2, 4)  # b first
    assert columns_that_fit(COLUMNS, always + 9) == (0, 2, 3, 4)  # a does not fit, c does
    assert columns_that_fit(COLUMNS, always + 19) == (0, 1, 2, 3, 4)
    assert columns_that_fit(COLUMNS, 3) == (0, 4)  # always-shown columns stay: it scrolls
    assert columns_that_fit(COLUMNS, 0) == (0, 1, 2, 3, 4)  # not laid out yet: all


def test_the_first_column_of_each_table_is_always_shown() -> None:
    # the rows are keyed (and sorted) by it
    assert CLIENT_COLUMNS[0].priority == 0 and ROUND_COLUMNS[0].priority == 0


def test_a_narrow_terminal_drops_columns_and_a_wide_one_brings_them_back() -> None:
    view = mid_round_view()
    backend, app = static_app(view)

    async def scenario(pilot: Pilot) -> None:
        clients = app.query_one(ClientsTable)
        rounds = app.query_one(RoundsTable)
        # 120 columns: every client column but the address; every round column but "train"
        assert {"round_bytes_up", "round_bytes_down", "compression_ratio", "note"} <= set(
            clients.shown_columns
        )
        assert "address" not in clients.shown_columns
        assert rounds.shown_columns[-1] == "busiest_uplink" and "train" not in rounds.shown_columns
        await pilot.press("down", "down")
        assert clients.cursor_key == "node-2"

        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        shown = ("id", "state", "role", "heartbeat", "loss", "round_bytes_up", "note")
        assert clients.shown_columns == shown
        assert len(clients.columns) == len(clients.shown_columns)
        assert clients.cursor_key == "node-2"  # the rebuilt table keeps the operator's row
        assert clients.get_cell("node-2", "round_bytes_up").plain == "6.8k"
        assert "busiest_uplink" in rounds.shown_columns

        # a hidden column's figure changes meanwhile: it is kept, and shown once it fits
        changed = [
            replace(c, compression_ratio=1.0) if c.id == "node-2" else c for c in view.clients
        ]
        backend.set_view(replace(view, clients=tuple(changed)))
        app.refresh_view()
        await pilot.pause()
        await pilot.resize_terminal(160, 40)
        await pilot.pause()
        assert clients.shown_columns == tuple(c.key for c in CLIENT_COLUMNS)
        assert clients.get_cell("node-2", "compression_ratio").plain == "1.0×"
        assert clients.get_cell("node-2", "address").plain == "127.0.0.1:41002"
        assert clients.cursor_key == "node-2"

    run_console(app, scenario, (120, 40))
