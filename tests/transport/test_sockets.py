from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
import zmq
import zmq.asyncio

from tests.transport.strategies import snapshot
from transport import messages as m
from transport.codec import decode
from transport.sockets import (
    CurveConfig,
    PeerUnreachable,
    SocketFactory,
    endpoint,
    recv,
    recv_from,
    recv_from_sync,
    recv_sync,
    send,
    send_sync,
    send_to,
    send_to_sync,
)
from transport.tensors import TensorPayload, model_hash

LOCAL = "tcp://127.0.0.1:0"
WAIT_MS = 5000  # generous bound for a loaded 2-core machine; success returns at once
SILENCE_MS = 400  # how long "nothing arrives" is watched


@pytest.fixture
def factory(ctx: zmq.Context) -> Iterator[SocketFactory]:
    with SocketFactory(ctx) as f:
        yield f


def big_tensor(mb: int = 10) -> TensorPayload:
    a = np.random.default_rng(0).standard_normal(mb * (1 << 20) // 4).astype(np.float32)
    return TensorPayload("w", "float32", a.shape, memoryview(a).cast("B"))


def test_binding_port_zero_reports_the_real_endpoint(factory: SocketFactory) -> None:
    router = factory.router(LOCAL)
    ep = endpoint(router)
    assert ep.startswith("tcp://127.0.0.1:") and not ep.endswith(":0")
    with pytest.raises(zmq.ZMQError):
        factory.router(ep)  # in use: raises, and the failed socket is closed, not leaked


def test_sockets_get_safe_options(ctx: zmq.Context) -> None:
    f = SocketFactory(ctx, control_max_bytes=1 << 20, model_max_bytes=2 << 30, model_hwm=3)
    router = f.router(LOCAL)
    gossip = f.model_router(LOCAL)
    dealer = f.model_dealer("n1", endpoint(gossip))
    sub = f.sub(endpoint(f.pub(LOCAL)))
    assert router.getsockopt(zmq.LINGER) == 0 and sub.getsockopt(zmq.LINGER) == 0
    assert router.getsockopt(zmq.MAXMSGSIZE) == 1 << 20
    assert gossip.getsockopt(zmq.MAXMSGSIZE) == 2 << 30
    assert gossip.getsockopt(zmq.SNDHWM) == 3 and dealer.getsockopt(zmq.RCVHWM) == 3
    assert dealer.getsockopt(zmq.ROUTING_ID) == b"n1" and dealer.getsockopt(zmq.IMMEDIATE) == 1
    with pytest.raises(ValueError):
        SocketFactory(ctx, model_max_bytes=(2 << 30) + 1)
    with pytest.raises(m.MessageError):
        f.dealer("not a node id", endpoint(router))


def test_router_dealer_request_reply_with_10mb_tensor(factory: SocketFactory) -> None:
    router = factory.router(LOCAL)
    dealer = factory.dealer("node-1", endpoint(router))
    t = big_tensor(10)
    upload = m.CheckpointUpload(
        node_id="node-1", epoch=1, round=4, hash=model_hash([t]), tensors=(t,)
    )
    assert send_sync(dealer, upload) > 10 * (1 << 20)
    got = recv_from_sync(router, WAIT_MS)
    assert got is not None
    identity, frames = got
    msg = decode(frames)
    assert identity == b"node-1" and msg == upload
    assert isinstance(msg, m.CheckpointUpload) and msg.tensors[0].data.obj is frames[1]
    assert model_hash(msg.tensors) == upload.hash
    send_to_sync(router, identity, m.Ack(ref=msg.TYPE, seq=9))
    reply = recv_sync(dealer, WAIT_MS)
    assert reply is not None and decode(reply) == m.Ack(ref="checkpoint_upload", seq=9)


def test_model_gossip_pair_pushes_and_acks(factory: SocketFactory) -> None:
    gossip = factory.model_router(LOCAL)
    peer = factory.model_dealer("peer-2", endpoint(gossip))
    t = big_tensor(1)
    h = model_hash([t])
    send_sync(
        peer,
        m.ModelPush(
            run_id="r", sender="peer-2", round=1, trainer="peer-2", hash=h, samples=5, tensors=(t,)
        ),
    )
    got = recv_from_sync(gossip, WAIT_MS)
    assert got is not None
    push = decode(got[1])
    assert isinstance(push, m.ModelPush) and model_hash(push.tensors) == h
    send_to_sync(gossip, got[0], m.ModelAck(round=1, trainer="peer-2", hash=h))
    ack = recv_sync(peer, WAIT_MS)
    assert ack is not None and decode(ack) == m.ModelAck(round=1, trainer="peer-2", hash=h)


def test_pub_sub_delivers_state(factory: SocketFactory) -> None:
    pub = factory.pub(LOCAL)
    sub = factory.sub(endpoint(pub))
    update = m.StateUpdate(seq=1, snapshot=snapshot())
    got = None
    for _ in range(WAIT_MS // 50):  # slow joiner: the first sends may be missed
        send_sync(pub, update)
        got = recv_sync(sub, 50)
        if got is not None:
            break
    assert got is not None and decode(got) == update


def test_router_mandatory_raises_for_unknown_peer(factory: SocketFactory) -> None:
    router = factory.router(LOCAL)
    with pytest.raises(PeerUnreachable) as info:
        send_to_sync(router, "gone-node", m.Ack(ref="heartbeat"))
    assert info.value.identity == b"gone-node"
    lax = factory.router(LOCAL, mandatory=False)
    send_to_sync(lax, "gone-node", m.Ack(ref="heartbeat"))  # silently dropped


def test_maxmsgsize_drops_an_oversized_peer(ctx: zmq.Context, factory: SocketFactory) -> None:
    small = SocketFactory(ctx, control_max_bytes=4096)
    router = small.router(LOCAL)
    flooder = factory.dealer("flooder", endpoint(router))
    t = TensorPayload("x", "uint8", (8192,), b"\1" * 8192)
    send_sync(flooder, m.DataReply(epoch=0, tensors=(t,)))
    assert recv_from_sync(router, SILENCE_MS) is None
    honest = factory.dealer("honest", endpoint(router))
    send_sync(honest, m.Heartbeat(node_id="honest"))
    got = recv_from_sync(router, WAIT_MS)
    assert got is not None and got[0] == b"honest"


def test_asyncio_context_round_trip() -> None:
    async def scenario() -> tuple[bytes, m.Message, m.Message]:
        context = zmq.asyncio.Context()
        try:
            f = SocketFactory(context)
            router = f.router(LOCAL)
            dealer = f.dealer("a1", endpoint(router))
            assert isinstance(router, zmq.asyncio.Socket)
            await asyncio.wait_for(send(dealer, m.ModelRequest(node_id="a1", epoch=2)), 5)
            identity, frames = await asyncio.wait_for(recv_from(router), 5)
            request = decode(frames)
            await send_to(
                router,
                identity,
                m.Error(ref=request.TYPE, code="unavailable", reason="no checkpoint"),
            )
            reply = decode(await asyncio.wait_for(recv(dealer), 5))
            with pytest.raises(PeerUnreachable):
                await send_to(router, b"nobody", reply)
            return identity, request, reply
        finally:
            context.destroy(linger=0)

    identity, request, reply = asyncio.run(scenario())
    assert identity == b"a1" and request == m.ModelRequest(node_id="a1", epoch=2)
    assert reply == m.Error(ref="model_request", code="unavailable", reason="no checkpoint")


def curve_keys() -> tuple[CurveConfig, CurveConfig, CurveConfig]:
    """(server with an allowlist of one key, the listed client, an unlisted client)."""
    server_pub, server_sec = zmq.curve_keypair()
    good_pub, good_sec = zmq.curve_keypair()
    bad_pub, bad_sec = zmq.curve_keypair()
    server = CurveConfig(server_pub, server_secret=server_sec, allowlist=frozenset({good_pub}))
    good = CurveConfig(server_pub, client_public=good_pub, client_secret=good_sec)
    bad = CurveConfig(server_pub, client_public=bad_pub, client_secret=bad_sec)
    return server, good, bad


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_curve_allowlist_admits_listed_keys_only(ctx: zmq.Context) -> None:
    server_keys, good_keys, bad_keys = curve_keys()
    with SocketFactory(ctx, security=server_keys) as server:
        router = server.router(LOCAL)
        intruder = SocketFactory(ctx, security=bad_keys).dealer("intruder", endpoint(router))
        member = SocketFactory(ctx, security=good_keys).dealer("member", endpoint(router))
        send_sync(member, m.Heartbeat(node_id="member"))
        got = recv_from_sync(router, WAIT_MS)
        assert got is not None and got[0] == b"member"
        # The intruder's handshake is refused: with IMMEDIATE it cannot even queue a message.
        assert not intruder.poll(SILENCE_MS, zmq.POLLOUT)
        assert recv_from_sync(router, 0) is None
        with pytest.raises(ValueError, match="client_public"):
            server.dealer("x", endpoint(router))


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_curve_allowlist_works_on_an_asyncio_context() -> None:
    server_keys, good_keys, _ = curve_keys()

    async def scenario() -> bytes:
        context = zmq.asyncio.Context()
        try:
            with SocketFactory(context, security=server_keys) as server:
                router = server.router(LOCAL)
                member = SocketFactory(context, security=good_keys).dealer(
                    "member", endpoint(router)
                )
                await asyncio.wait_for(send(member, m.Heartbeat(node_id="member")), 5)
                identity, _ = await asyncio.wait_for(recv_from(router), 5)
                return identity
        finally:
            context.destroy(linger=0)

    assert asyncio.run(scenario()) == b"member"
