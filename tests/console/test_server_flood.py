"""The control loop yields to the event loop after every message, so a flood already queued on
the control socket cannot hold up the ticks (or the end of a Finished run) behind it.

Found by the chaos run (``bench/chaos.py``): during a 2,000-message garbage burst a call onto
the console's loop waited up to 1.4 s, and a Finished console went on refusing the burst for
9 s instead of ending. The socket here is a fake with every message already waiting: a
receive that completes at once does not yield, which is what a real queued flood does.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import zmq

from console.config import CheckpointConfig, Config, ServerConfig
from console.server import ConsoleServer


class _QueuedFlood:
    """A control ROUTER with ``count`` garbage messages waiting, then silent for good."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.replies = 0

    async def recv_multipart(self, copy: bool = True) -> list[zmq.Frame]:
        if self.left == 0:
            await asyncio.Event().wait()
        self.left -= 1
        return [zmq.Frame(b"flooder"), zmq.Frame(b"\xff not a message")]

    async def send_multipart(self, frames: list[Any], copy: bool = True) -> None:
        self.replies += 1


def test_a_queued_flood_does_not_hold_the_event_loop(tmp_path: Path) -> None:
    config = replace(
        Config(),
        run_id="flood",
        server=ServerConfig(host="127.0.0.1", state_port=0, control_port=0),
        checkpoint=CheckpointConfig(dir=tmp_path / "checkpoints"),
    )
    server = ConsoleServer(config, run_dir=tmp_path / "run")
    flood = _QueuedFlood(500)

    async def scenario() -> tuple[int, int]:
        server._control = flood  # type: ignore[assignment]
        loop = asyncio.create_task(server._control_loop())
        handled = []
        for _ in range(3):  # three turns of everything else on the loop
            await asyncio.sleep(0)
            handled.append(500 - flood.left)
        while flood.left:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        loop.cancel()
        return handled[-1], flood.replies

    handled, replies = asyncio.run(scenario())
    server.events.close()
    assert handled <= 5, f"{handled} messages handled before anything else could run"
    assert replies == 500  # every one was still answered (malformed)
