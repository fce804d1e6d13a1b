"""A link that resets its DEALER again and again (every request that times out does) gets a
new handshake watch each time; making one must never fail."""

from __future__ import annotations

import zmq
import zmq.asyncio

from transport.sockets import HandshakeWatch


def test_a_new_watch_right_after_closing_the_previous_one_never_collides() -> None:
    ctx = zmq.asyncio.Context()
    try:
        sock: zmq.Socket | None = None
        watch: HandshakeWatch | None = None
        for _ in range(300):  # as ConsoleLink._reset_dealer does after each timeout
            if watch is not None:
                watch.close()
            if sock is not None:
                sock.close(linger=0)
            sock = ctx.socket(zmq.DEALER)
            watch = HandshakeWatch(sock)  # raised "Address already in use" (id() reused)
            sock.connect("tcp://127.0.0.1:9")
        assert watch is not None and watch.drain() is not None
        watch.close()
        assert sock is not None
        sock.close(linger=0)
    finally:
        ctx.destroy(linger=0)
