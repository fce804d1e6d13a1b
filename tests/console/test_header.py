"""The run header packs its fields into lines: at 80 and 120 columns nothing is cut, the last
field (rejected messages, live clients, the checkpoint) included."""

from __future__ import annotations

import pytest

from console.app.widgets import RunHeader
from console.app.widgets.header import render_header
from tests.console.pilot import run_console, static_app
from tests.snapshots.fixtures import finished_view, mid_round_view, waiting_view

LAST_FIELDS = {
    "waiting": ("seq 7", "2 live"),
    "mid": ("1 rejected messages", "7 live"),
    "finished": ("seq 903", "checkpoint e2 r6 244363"),
}
VIEWS = {"waiting": waiting_view, "mid": mid_round_view, "finished": finished_view}


@pytest.mark.parametrize("width", [78, 118])  # 80 and 120 columns less the header's padding
@pytest.mark.parametrize("name", sorted(VIEWS))
def test_every_line_fits_and_every_field_is_whole(name: str, width: int) -> None:
    text = render_header(VIEWS[name](), width).plain
    lines = text.split("\n")
    assert all(len(line) <= width for line in lines), lines
    for field in LAST_FIELDS[name]:
        assert any(field in line for line in lines), (field, lines)
    assert len(lines) >= 2


def test_two_lines_when_the_terminal_is_wide_enough() -> None:
    assert render_header(mid_round_view(), 200).plain.count("\n") == 1


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_the_header_widget_shows_the_last_field_at_80_and_120_columns(
    size: tuple[int, int],
) -> None:
    _, app = static_app(mid_round_view())

    async def scenario(pilot: object) -> None:
        header = app.query_one(RunHeader)
        shown = str(header.render())
        assert "1 rejected messages" in shown and "7 live" in shown
        assert header.size.height == shown.count("\n") + 1

    run_console(app, scenario, size=size)
