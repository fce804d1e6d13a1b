"""A node whose gossip socket listens on every interface is announced where peers can reach it.

``fl-node --gossip-host 0.0.0.0`` binds its gossip ROUTER on every interface and announces
``tcp://0.0.0.0:PORT``, which no peer can connect to: every push then times out and no round
ever reaches quorum. The console passes on, instead, the address the node's join came from.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from console.config import CheckpointConfig, Config, ServerConfig
from console.server import ConsoleServer
from transport import messages as m
from transport.codec import decode, encode


def _config(tmp_path: Path) -> Config:
    return replace(
        Config(),
        run_id="gossip-address",
        server=ServerConfig(host="127.0.0.1", state_port=0, control_port=0, data_port=7124),
        checkpoint=CheckpointConfig(dir=tmp_path / "checkpoints"),
    )


async def _announced(config: Config, run_dir: Path, gossip: str) -> tuple[str, str]:
    """Join with ``gossip`` over a real socket: (endpoint in the broadcast, in the records)."""
    server = ConsoleServer(config, run_dir=run_dir, tick_interval=0.05)
    endpoints = server.start()
    ctx = zmq.asyncio.Context()
    try:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoints.state)
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.ROUTING_ID, b"n1")
        dealer.connect(endpoints.control)
        await dealer.send_multipart(
            encode(m.Join(run_id=config.run_id, node_id="n1", gossip_endpoint=gossip))
        )
        ack = decode(await asyncio.wait_for(dealer.recv_multipart(), 10))
        assert isinstance(ack, m.JoinAck), ack
        for _ in range(50):  # bounded: a tick broadcasts every 0.05 s
            state = decode(await asyncio.wait_for(sub.recv_multipart(), 10))
            assert isinstance(state, m.StateUpdate)
            client = state.snapshot.client("n1")
            if client is not None:
                return client.gossip_endpoint, server.records.clients["n1"].address
        raise AssertionError("n1 never appeared in the broadcast")
    finally:
        await server.stop()
        ctx.destroy(linger=0)


@pytest.mark.parametrize(
    ("announced", "broadcast"),
    [
        ("tcp://0.0.0.0:9", "tcp://127.0.0.1:9"),  # every interface: where the join came from
        ("tcp://127.0.0.1:9", "tcp://127.0.0.1:9"),
        ("tcp://10.1.2.3:9", "tcp://10.1.2.3:9"),  # a given address is passed on as it is
    ],
)
def test_a_gossip_endpoint_on_every_interface_is_announced_at_the_joins_address(
    tmp_path: Path, announced: str, broadcast: str
) -> None:
    seen, recorded = asyncio.run(_announced(_config(tmp_path), tmp_path / "run", announced))
    assert seen == broadcast
    assert recorded == broadcast
