"""Flood control on a node's gossip ROUTER: a stranger flooding garbage is answered
``rate_limited`` once, then ignored; a live member's pushes are still taken meanwhile.
Real GossipService sockets on 127.0.0.1; every wait bounded."""

from __future__ import annotations

import asyncio
import logging

import pytest
import zmq
import zmq.asyncio

from node.gossip import GossipService
from tests.node.gossip.test_receive import REFERENCE, RUN, payloads, push
from transport import messages as m
from transport.codec import decode, encode
from transport.flood import FloodGuard

LIMIT = 20


async def _replies(sock: zmq.asyncio.Socket, within: float) -> list[m.Message]:
    out = []
    while await sock.poll(int(within * 1000), zmq.POLLIN):
        out.append(decode(await sock.recv_multipart()))
    return out


def test_a_flooding_stranger_is_rate_limited_and_a_members_push_still_lands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> tuple[list[m.Message], m.Message, set[str]]:
        ctx = zmq.asyncio.Context()
        receiver = GossipService(node_id="me", run_id=RUN, context=ctx)
        # one interval for the whole test: its aggregated line comes when the socket closes
        receiver.flood = FloodGuard(limit=LIMIT, backoff=30.0, report_every=60.0)
        receiver.reference = REFERENCE
        receiver.expects = lambda r, t: None
        receiver.is_live = lambda peer: peer == "node-1"
        socks = []
        try:
            where = receiver.start()
            for identity in ("stranger", "node-1"):
                sock = ctx.socket(zmq.DEALER)
                sock.linger = 0
                sock.setsockopt(zmq.ROUTING_ID, identity.encode())
                sock.connect(where)
                socks.append(sock)
            stranger, member = socks
            for _ in range(1000):
                await stranger.send_multipart([b"garbage"])
            flood = await _replies(stranger, 1.0)
            await member.send_multipart(encode(push("node-1", "node-1", payloads(1.0))))
            taken = decode(await asyncio.wait_for(member.recv_multipart(), 10))
            return flood, taken, set(receiver.inbox.get(1, {}))
        finally:
            for sock in socks:
                sock.close(linger=0)
            await receiver.close()
            ctx.destroy(linger=0)

    with caplog.at_level(logging.WARNING, logger="node.gossip.receive"):
        flood, taken, kept = asyncio.run(asyncio.wait_for(scenario(), 30))
    codes = [r.code for r in flood if isinstance(r, m.Error)]
    assert len(codes) == len(flood) == LIMIT + 1
    assert set(codes[:LIMIT]) == {"malformed"} and codes[-1] == "rate_limited"
    assert isinstance(taken, m.ModelAck) and kept == {"node-1"}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines  # the first in full, rate-limited, one aggregated line
    assert sum("rate-limited: " in line and "stranger" in line for line in lines) == 1
    assert any("979 dropped while rate-limited" in line for line in lines), lines
