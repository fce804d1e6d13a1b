"""The console's header shows what the operator must know at a glance: peers rate-limited by
flood control, messages dropped unread, and a stalled wait for members."""

from __future__ import annotations

from dataclasses import replace

from console.app.widgets.header import render_header
from console.record.eventlog import LogLine
from tests.snapshots.fixtures import waiting_view


def test_the_header_names_rate_limited_peers_and_dropped_messages() -> None:
    view = replace(
        waiting_view(),
        rejected_messages=201,
        dropped_messages=19_800,
        throttled_peers=("10.0.0.7", "10.0.0.8", "10.0.0.9"),
    )
    text = render_header(view).plain
    assert "201 rejected messages" in text
    assert "rate-limited: 10.0.0.7, 10.0.0.8…" in text
    assert "19800 dropped" in text
    assert "rate-limited" not in render_header(waiting_view()).plain


def test_the_header_says_a_stall_and_the_log_pane_labels_it() -> None:
    from console.app.widgets.eventlog import _LABEL

    view = replace(
        waiting_view(),
        notes={"stalled": "missing n2 for 30 s; lower coordinator.init_min_clients to continue"},
        log=(LogLine(1.0, "stall", "stalled: ...", "warning"),),
    )
    text = render_header(view).plain
    assert "stalled: missing n2 for 30 s" in text
    assert _LABEL["stall"] == "stall" and _LABEL["rate_limited"] == "flood"
