"""A node keeps following the console's broadcasts while it checks whether the console is
silent: the check must not touch the SUB socket (a read of ZMQ_EVENTS on a zmq.asyncio socket
stalls its pending recv for good; a node once froze at round 16 while the run went on)."""

from __future__ import annotations

import asyncio
import time

import zmq
import zmq.asyncio

from node.link import ConsoleLink
from tests.factories import run_snapshot
from transport import messages as m
from transport.codec import encode
from transport.spec import RunSpec

BROADCASTS = 3000


def test_checking_for_a_silent_console_does_not_stop_the_node_following_it() -> None:
    async def scenario() -> int:
        ctx = zmq.asyncio.Context()
        pub = ctx.socket(zmq.PUB)
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        link = ConsoleLink(
            node_id="n1",
            run_id="r",
            control_endpoint="tcp://127.0.0.1:1",
            gossip_endpoint="tcp://127.0.0.1:2",
            context=ctx,
        )
        link.spec = RunSpec(run_id="r", seed=1)
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"tcp://127.0.0.1:{port}")
        link._sub = sub
        follow = asyncio.create_task(link._follow())
        stop = asyncio.Event()

        async def check_silence() -> None:  # what a waiting request does every REPLY_CHECK
            while not stop.is_set():
                link._console_silence(time.monotonic())
                await asyncio.sleep(0.0003)

        checker = asyncio.create_task(check_silence())
        try:
            await asyncio.sleep(0.3)  # the SUB has connected
            snapshot = run_snapshot()
            for seq in range(1, BROADCASTS + 1):
                await pub.send_multipart(encode(m.StateUpdate(seq=seq, snapshot=snapshot)))
                if seq % 3 == 0:
                    await asyncio.sleep(0.0005)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if link.latest is not None and link.latest.seq == BROADCASTS:
                    break
                await asyncio.sleep(0.05)
            return 0 if link.latest is None else link.latest.seq
        finally:
            stop.set()
            for task in (follow, checker):
                task.cancel()
            await asyncio.gather(follow, checker, return_exceptions=True)
            ctx.destroy(linger=0)

    assert asyncio.run(scenario()) == BROADCASTS
