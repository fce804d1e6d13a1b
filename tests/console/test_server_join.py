"""What a node's join over a real socket tells the run: the data server's address (with
[data] serve = true), and where peers reach the node's gossip socket.

``fl-node --gossip-host 0.0.0.0`` binds its gossip ROUTER on every interface and announces
``tcp://0.0.0.0:PORT``, which no peer can connect to: every push then times out and no round
ever reaches quorum. The console passes on, instead, the address the node's join came from.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio

from console.config import CheckpointConfig, Config, ServerConfig
from console.server import ConsoleServer
from transport import messages as m
from transport.codec import decode, encode
from transport.spec import RunSpec
from transport.state import RunSnapshot


def _config(tmp_path: Path, run_id: str, data_port: int, **fields: Any) -> Config:
    """Loopback on free ports (the data server's port fixed), checkpoints under ``tmp_path``."""
    return replace(
        Config(),
        run_id=run_id,
        server=ServerConfig(host="127.0.0.1", state_port=0, control_port=0, data_port=data_port),
        checkpoint=CheckpointConfig(dir=tmp_path / "checkpoints"),
        **fields,
    )


@dataclass
class Joined:
    """A console that node ``n1`` joined: the server, its JoinAck, and its broadcasts."""

    server: ConsoleServer
    ack: m.JoinAck
    sub: zmq.asyncio.Socket

    async def next_state(self) -> RunSnapshot:
        """The next broadcast (a tick's, every 0.05 s)."""
        state = decode(await asyncio.wait_for(self.sub.recv_multipart(), 10))
        assert isinstance(state, m.StateUpdate), state
        return state.snapshot


@asynccontextmanager
async def _joined(config: Config, run_dir: Path, gossip: str) -> AsyncIterator[Joined]:
    """A console (stopped at the end) that ``n1`` joined over real sockets with ``gossip``."""
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
        join = m.Join(run_id=config.run_id, node_id="n1", gossip_endpoint=gossip)
        await dealer.send_multipart(encode(join))
        ack = decode(await asyncio.wait_for(dealer.recv_multipart(), 10))
        assert isinstance(ack, m.JoinAck), ack
        yield Joined(server, ack, sub)
    finally:
        await server.stop()
        ctx.destroy(linger=0)


async def _data_address(config: Config, run_dir: Path) -> tuple[RunSpec, RunSnapshot]:
    async with _joined(config, run_dir, "tcp://127.0.0.1:9") as joined:
        return joined.ack.spec, await joined.next_state()


@pytest.mark.parametrize("serve", [True, False])
def test_join_reply_and_broadcast_carry_the_data_servers_address(
    tmp_path: Path, serve: bool
) -> None:
    config = _config(
        tmp_path, "data-address", 7123, data=msgspec.structs.replace(Config().data, serve=serve)
    )
    spec, snap = asyncio.run(_data_address(config, tmp_path / "run"))
    expected = "tcp://127.0.0.1:7123" if serve else ""
    assert spec.data.serve is serve
    assert spec.data_endpoint == expected
    assert snap.data_server == (expected or None)


async def _announced(config: Config, run_dir: Path, gossip: str) -> tuple[str, str]:
    """Join with ``gossip``: (endpoint in the broadcast, in the records)."""
    async with _joined(config, run_dir, gossip) as joined:
        for _ in range(50):  # bounded: a tick broadcasts every 0.05 s
            client = (await joined.next_state()).client("n1")
            if client is not None:
                return client.gossip_endpoint, joined.server.records.clients["n1"].address
        raise AssertionError("n1 never appeared in the broadcast")


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
    config = _config(tmp_path, "gossip-address", 7124)
    seen, recorded = asyncio.run(_announced(config, tmp_path / "run", announced))
    assert seen == broadcast
    assert recorded == broadcast
