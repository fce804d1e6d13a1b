"""With [data] serve = true the console tells nodes where the data server is."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

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


def _config(tmp_path: Path, serve: bool) -> Config:
    base = Config()
    return replace(
        base,
        run_id="data-address",
        server=ServerConfig(host="127.0.0.1", state_port=0, control_port=0, data_port=7123),
        data=msgspec.structs.replace(base.data, serve=serve),
        checkpoint=CheckpointConfig(dir=tmp_path / "checkpoints"),
    )


async def _join_and_listen(config: Config, run_dir: Path) -> tuple[RunSpec, RunSnapshot]:
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
        join = m.Join(run_id=config.run_id, node_id="n1", gossip_endpoint="tcp://127.0.0.1:9")
        await dealer.send_multipart(encode(join))
        ack = decode(await asyncio.wait_for(dealer.recv_multipart(), 10))
        state = decode(await asyncio.wait_for(sub.recv_multipart(), 10))  # a tick's broadcast
        assert isinstance(ack, m.JoinAck) and isinstance(state, m.StateUpdate)
        return ack.spec, state.snapshot
    finally:
        await server.stop()
        ctx.destroy(linger=0)


@pytest.mark.parametrize("serve", [True, False])
def test_join_reply_and_broadcast_carry_the_data_servers_address(
    tmp_path: Path, serve: bool
) -> None:
    spec, snap = asyncio.run(_join_and_listen(_config(tmp_path, serve), tmp_path / "run"))
    expected = "tcp://127.0.0.1:7123" if serve else ""
    assert spec.data.serve is serve
    assert spec.data_endpoint == expected
    assert snap.data_server == (expected or None)
