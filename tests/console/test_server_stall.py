"""A stalled run says who is missing and how to continue: the event log (and so the headless
log and the console's log pane) and the header's status notes. Real sockets on loopback."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.e2e.helpers import RawClients, ServerThread, make_config
from transport import messages as m
from transport.state import RunState

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def raw() -> Iterator[RawClients]:
    with closing(RawClients()) as made:
        yield made


def test_a_stalled_run_logs_who_is_missing_and_how_to_continue(
    tmp_path: Path, raw: RawClients, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(
        tmp_path,
        init_min_clients=2,
        min_clients=2,
        witness_nodes=1,
        heartbeat_interval=0.1,
        health_timeout=5.0,
        stall_warning_after=0.5,
    )
    server = ServerThread(config, tmp_path / "run")
    endpoints = server.start()
    try:
        nodes = [raw(endpoints.control, f"n{i}") for i in (1, 2)]
        for node in nodes:
            assert isinstance(node.join(config.run_id), m.JoinAck)
        server.wait_for(lambda s: s.state is RunState.WARMUP, 5, "an epoch")
        with caplog.at_level(logging.WARNING, logger="fl.events"):
            assert isinstance(nodes[1].request(m.Leave(node_id="n2")), m.Ack)
            server.wait_for(lambda s: s.state is RunState.WAITING_FOR_MEMBERS, 5, "the wait")
            assert server.call(lambda s: s.view().notes) == {}  # not yet
            stall = server.wait_for_event(lambda e: e["kind"] == "stall", 5, "a stall")
            notes = server.call(lambda s: s.view().notes)
            time.sleep(1.2)  # said again, at most once per stall_warning_after
            stalls = server.events("stall")
            assert isinstance(nodes[1].join(config.run_id), m.JoinAck)  # back: the run goes on
            server.wait_for(lambda s: s.state is RunState.WARMUP, 5, "the next epoch")
            after = server.call(lambda s: s.view().notes)
    finally:
        server.stop()
    assert stall["missing"] == ["n2"] and stall["pending"] == ["n1"] and stall["needed"] == 2
    assert stall["level"] == "warning"
    text = stall["text"]
    assert "n2" in text and "1 of 2" in text
    assert "fl-console ctl data.toml set" in text and "coordinator.init_min_clients" in text
    assert "press o (Settings)" in text
    assert "missing n2" in notes["stalled"]
    assert 2 <= len(stalls) <= 4
    gaps = [b["t"] - a["t"] for a, b in zip(stalls, stalls[1:], strict=False)]
    assert all(g >= 0.5 for g in gaps), gaps
    assert after == {}
    # what the headless console prints: the same line, through the fl.events logger
    assert any("missing since the last epoch: n2" in r.getMessage() for r in caplog.records)
