"""Flood control on the console's control ROUTER, over real sockets on loopback.

A stranger's DEALER floods the console with garbage: past ``[server] refusal_limit`` refusals a
second it is answered ``rate_limited`` once and then nothing, while a member on the same address
(loopback) keeps getting every answer. The refusals are logged as a few aggregated lines, not
one line each, and the throttled peer shows in the console's view.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
import zmq

from tests.e2e.helpers import RawClients, ServerThread, make_config, wait_until
from transport import messages as m
from transport.codec import decode

pytestmark = pytest.mark.timeout(60)

LIMIT = 50
GARBAGE = [b"\xff not json", b"x"]


@pytest.fixture
def raw() -> Iterator[RawClients]:
    with closing(RawClients()) as made:
        yield made


def _server(tmp_path: Path, limit: int = LIMIT, backoff: float = 3.0) -> ServerThread:
    config = make_config(tmp_path, init_min_clients=5, heartbeat_interval=0.1, health_timeout=5.0)
    config = replace(
        config, server=replace(config.server, refusal_limit=limit, refusal_backoff=backoff)
    )
    return ServerThread(config, tmp_path / "run")


def _drain(sock: zmq.Socket, within: float) -> list[m.Message]:
    out = []
    deadline = time.monotonic() + within
    while sock.poll(max(0, int((deadline - time.monotonic()) * 1000)), zmq.POLLIN):
        out.append(decode(sock.recv_multipart(copy=False)))
    return out


def test_a_flooding_stranger_is_rate_limited_then_ignored_and_members_are_not(
    tmp_path: Path, raw: RawClients
) -> None:
    server = _server(tmp_path)
    endpoints = server.start()
    try:
        member = raw(endpoints.control, "node-1")
        assert isinstance(member.join("e2e-run"), m.JoinAck)
        flooder = raw(endpoints.control, "hostile")
        for _ in range(2000):
            flooder.send_frames(GARBAGE)
        heartbeats = 0
        for _ in range(20):  # the member, meanwhile, on the same address
            reply = member.request(m.Heartbeat(node_id="node-1", stage="idle"))
            assert isinstance(reply, m.Ack), reply
            heartbeats += 1
        replies = _drain(flooder.sock, 2.0)
        codes = [r.code for r in replies if isinstance(r, m.Error)]
        assert len(codes) == len(replies) == LIMIT + 1, (len(replies), codes[-3:])
        assert codes[:LIMIT] == ["malformed"] * LIMIT and codes[-1] == "rate_limited"
        # ignored for the back-off: no reply at all, not even to a new routing id
        stranger = raw(endpoints.control, "hostile-2")
        stranger.send_frames(GARBAGE)
        flooder.send_frames(GARBAGE)
        assert _drain(flooder.sock, 0.5) == [] and _drain(stranger.sock, 0.1) == []
        view = server.call(lambda s: s.view())
        assert view.throttled_peers == ("127.0.0.1",) and view.dropped_messages >= 1900
        # a member's own refusals during the back-off are still answered
        wrong = member.request(m.Vote(node_id="node-1", round=99, candidates=()))
        assert isinstance(wrong, m.Error) and wrong.code != "rate_limited", wrong
        # once the back-off is over, the stranger is heard again
        time.sleep(3.1)
        flooder.send_frames(GARBAGE)
        (again,) = _drain(flooder.sock, 1.0)
        assert isinstance(again, m.Error) and again.code == "malformed"

        wait_until(lambda: server.events("reject")[1:], 5.0, "an aggregated line")
    finally:
        server.stop()  # and the last interval's line
    rejects = server.events("reject")
    lines = [e for e in rejects if e.get("code") == "flood"]
    limited = server.events("rate_limited")
    assert heartbeats == 20
    assert len(limited) == 1 and limited[0]["peer"] == "127.0.0.1"
    # ~2,000 refused or dropped messages: a handful of lines, each counting many
    assert len(rejects) <= 6, [e["text"] for e in rejects]
    assert sum(e["count"] for e in lines) >= 1990
    assert "hostile" in lines[0]["text"] and "dropped while rate-limited" in lines[0]["text"]


def test_with_no_limit_every_refusal_is_answered_and_logged_in_aggregate(
    tmp_path: Path, raw: RawClients
) -> None:
    server = _server(tmp_path, limit=0)
    endpoints = server.start()
    try:
        flooder = raw(endpoints.control, "fuzzer")
        for _ in range(1000):
            flooder.send_frames(GARBAGE)
        replies = _drain(flooder.sock, 2.0)
        rejected = server.call(lambda s: s.rejected_messages)
    finally:
        server.stop()  # the last interval's line
    rejects = server.events("reject")
    assert len(replies) == 1000 and {r.code for r in replies} == {"malformed"}
    assert rejected == 1000
    # the first in full, then one line per 2 s interval (one, unless the machine is slow);
    # the first interval's line counts the one logged in full too
    assert 2 <= len(rejects) <= 4, [e["text"] for e in rejects]
    assert sum(e["count"] for e in rejects[1:]) == 1000
    assert "1,000 refused (1,000 malformed)" in rejects[1]["text"] or len(rejects) > 2
