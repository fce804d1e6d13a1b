"""CURVE at the socket level: who gets in, what a refusal looks like, what the wire shows.

Real sockets on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import select
import socket
import threading
import time

import numpy as np
import pytest
import zmq

from transport import messages as m
from transport.codec import decode
from transport.keys import KeyAllowlist
from transport.sockets import (
    CurveConfig,
    Handshake,
    HandshakeWatch,
    SocketFactory,
    endpoint,
    peer_key,
    recv_from_sync,
    recv_sync,
    send_sync,
    send_to_sync,
)
from transport.tensors import TensorPayload, model_hash

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")

LOCAL = "tcp://127.0.0.1:0"
WAIT_S = 5.0  # generous bound for a loaded 2-core machine; success returns at once
SILENCE_MS = 400  # how long "nothing arrives" is watched


class Keys:
    def __init__(self) -> None:
        self.public, self.secret = zmq.curve_keypair()

    def client_of(self, server: Keys) -> CurveConfig:
        return CurveConfig(server.public, client_public=self.public, client_secret=self.secret)


def server_config(
    server: Keys, allowed: KeyAllowlist, refused: list[tuple[str, bytes]] | None = None
) -> CurveConfig:
    return CurveConfig(
        server.public,
        server_secret=server.secret,
        allowlist=allowed,
        on_refused=None if refused is None else lambda address, key: refused.append((address, key)),
    )


def wait_handshakes(watch: HandshakeWatch, until: set[str]) -> list[Handshake]:
    """The handshakes seen until one with an outcome in ``until`` (bounded)."""
    seen: list[Handshake] = []
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        seen += watch.drain()
        if any(h.outcome in until for h in seen):
            return seen
        time.sleep(0.02)
    return seen


def test_unlisted_key_is_refused_and_reported_with_its_address_and_key(ctx: zmq.Context) -> None:
    console, member, stranger = Keys(), Keys(), Keys()
    refused: list[tuple[str, bytes]] = []
    with SocketFactory(
        ctx, security=server_config(console, KeyAllowlist([member.public]), refused)
    ) as f:
        router = f.router(LOCAL)
        watches: list[HandshakeWatch] = []
        intruder = SocketFactory(ctx, security=stranger.client_of(console)).dealer(
            "intruder",
            endpoint(router),
            immediate=False,
            before_connect=lambda sock: watches.append(HandshakeWatch(sock)),
        )
        [watch] = watches
        send_sync(intruder, m.Heartbeat(node_id="intruder"))

        shakes = wait_handshakes(watch, {"refused"})

        assert Handshake("refused", 400) in shakes  # the node can tell it was refused
        assert refused == [("127.0.0.1", stranger.public)]  # the console can say who and why
        assert recv_from_sync(router, SILENCE_MS) is None  # and nothing got through
        watch.close()


def test_listed_key_gets_in_and_its_frames_carry_that_key(ctx: zmq.Context) -> None:
    console, member = Keys(), Keys()
    with SocketFactory(ctx, security=server_config(console, KeyAllowlist([member.public]))) as f:
        router = f.router(LOCAL)
        dealer = SocketFactory(ctx, security=member.client_of(console)).dealer(
            "member", endpoint(router)
        )
        send_sync(dealer, m.Heartbeat(node_id="member"))

        got = recv_from_sync(router, int(WAIT_S * 1000))

        assert got is not None and got[0] == b"member"
        assert peer_key(got[1][0]) == member.public.decode()
        assert router.curve_server and dealer.mechanism == zmq.CURVE


def test_allowlist_that_grows_admits_the_new_key_on_its_next_connection(ctx: zmq.Context) -> None:
    console, late = Keys(), Keys()
    allowed = KeyAllowlist()
    with SocketFactory(ctx, security=server_config(console, allowed)) as f:
        router = f.router(LOCAL)
        client = SocketFactory(ctx, security=late.client_of(console))
        first = client.dealer("late", endpoint(router), immediate=False)
        send_sync(first, m.Heartbeat(node_id="late"))
        assert recv_from_sync(router, SILENCE_MS) is None
        first.close(linger=0)

        allowed.add(late.public)
        second = client.dealer("late", endpoint(router), immediate=False)
        send_sync(second, m.Heartbeat(node_id="late"))

        got = recv_from_sync(router, int(WAIT_S * 1000))
        assert got is not None and got[0] == b"late"


def test_failed_handshakes_say_whether_curve_or_the_server_key_is_wrong(ctx: zmq.Context) -> None:
    console, member = Keys(), Keys()
    with SocketFactory(ctx, security=server_config(console, KeyAllowlist([member.public]))) as f:
        router = f.router(LOCAL)
        server_watch = HandshakeWatch(router)

        plain = SocketFactory(ctx).dealer("plain", endpoint(router), immediate=False)
        assert {"mechanism"} & {h.outcome for h in wait_handshakes(server_watch, {"mechanism"})}
        plain.close(linger=0)

        wrong = CurveConfig(Keys().public, client_public=member.public, client_secret=member.secret)
        watches: list[HandshakeWatch] = []
        SocketFactory(ctx, security=wrong).dealer(
            "confused", endpoint(router), before_connect=lambda s: watches.append(HandshakeWatch(s))
        )
        [client_watch] = watches
        assert {"crypto"} & {h.outcome for h in wait_handshakes(server_watch, {"crypto"})}
        assert {"failed"} & {h.outcome for h in wait_handshakes(client_watch, {"failed"})}
        client_watch.close()
        server_watch.close()


# ----------------------------------------------------------------------------- node to node


def model_push(marker: str) -> m.ModelPush:
    weights = np.frombuffer((marker * 64).encode(), dtype=np.uint8).copy()
    t = TensorPayload("w", "uint8", weights.shape, memoryview(weights))
    return m.ModelPush(
        run_id=marker,
        sender="a",
        round=1,
        trainer="a",
        hash=model_hash([t]),
        samples=1,
        tensors=(t,),
    )


def test_gossip_router_answers_curve_peers_only(ctx: zmq.Context) -> None:
    receiver, pusher = Keys(), Keys()
    gossip = CurveConfig(
        receiver.public,
        server_secret=receiver.secret,
        allowlist=KeyAllowlist([pusher.public]),
    )
    with SocketFactory(ctx, security=gossip) as f:
        router = f.model_router(LOCAL)
        raw = SocketFactory(ctx).model_dealer("raw", endpoint(router))
        with pytest.raises(zmq.Again):  # IMMEDIATE: no connection, so nothing can even be queued
            send_sync(raw, model_push("r"), flags=zmq.NOBLOCK)
        # Its own keys only: a model DEALER is given its peer's key when it is made.
        mine = CurveConfig(b"\0" * 40, client_public=pusher.public, client_secret=pusher.secret)
        peer = SocketFactory(ctx, security=mine).model_dealer(
            "peer", endpoint(router), server_key=receiver.public
        )
        push = model_push("r")
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:  # IMMEDIATE: wait for the handshake
            try:
                send_sync(peer, push, flags=zmq.NOBLOCK)
                break
            except zmq.Again:
                time.sleep(0.02)
        got = recv_from_sync(router, int(WAIT_S * 1000))
        assert got is not None and got[0] == b"peer"
        send_to_sync(router, got[0], m.ModelAck(round=1, trainer="a", hash=push.hash))
        reply = recv_sync(peer, int(WAIT_S * 1000))

        assert reply is not None and isinstance(decode(reply), m.ModelAck)
        assert router.curve_server and peer.mechanism == zmq.CURVE
        assert recv_from_sync(router, SILENCE_MS) is None  # the raw DEALER never got in


class Wiretap:
    """A TCP relay on 127.0.0.1 that forwards to ``port`` and keeps every byte it carries."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.captured = bytearray()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        other: dict[socket.socket, socket.socket] = {}
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([self._listener, *other], [], [], 0.05)
                for sock in readable:
                    if sock is self._listener:
                        client, _ = self._listener.accept()
                        upstream = socket.create_connection(("127.0.0.1", self.target))
                        other[client], other[upstream] = upstream, client
                        continue
                    data = sock.recv(1 << 16) if sock in other else b""
                    if not data:  # one side closed: close the pair
                        peer = other.pop(sock, None)
                        sock.close()
                        if peer is not None:
                            other.pop(peer, None)
                            peer.close()
                        continue
                    self.captured += data
                    other[sock].sendall(data)
        finally:
            for sock in other:
                sock.close()
            self._listener.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT_S)


@pytest.mark.parametrize("curve", [False, True])
def test_model_push_is_unreadable_on_the_wire_with_curve(ctx: zmq.Context, curve: bool) -> None:
    receiver, pusher = Keys(), Keys()
    server_side = client_side = None
    if curve:
        server_side = CurveConfig(
            receiver.public, server_secret=receiver.secret, allowlist=KeyAllowlist([pusher.public])
        )
        client_side = pusher.client_of(receiver)
    marker = "wiretap-marker-7f3a"
    with SocketFactory(ctx, security=server_side) as f:
        router = f.model_router(LOCAL)
        tap = Wiretap(int(endpoint(router).rsplit(":", 1)[1]))
        try:
            dealer = SocketFactory(ctx, security=client_side).dealer(
                "pusher", f"tcp://127.0.0.1:{tap.port}", immediate=False
            )
            push = model_push(marker)
            send_sync(dealer, push)
            got = recv_from_sync(router, int(WAIT_S * 1000))
            assert got is not None and decode(got[1]) == push  # it did go through the tap
            send_to_sync(router, got[0], m.ModelAck(round=1, trainer="a", hash=push.hash))
            assert recv_sync(dealer, int(WAIT_S * 1000)) is not None
        finally:
            tap.close()

    wire = bytes(tap.captured)
    assert len(wire) > len(marker) * 64  # the model crossed the tap
    assert (marker.encode() in wire) is (not curve)
    assert (b"model_push" in wire) is (not curve)
