"""A node started again under its name while the console still counts the old process.

The console (in-process, real sockets on 127.0.0.1) runs an epoch with two members; one of
them, a raw DEALER, goes silent as if its process had died, long before ``health_timeout``
drops it. A new ``ConsoleLink`` under that id joins: it must give up the old membership (the
epoch stops waiting for it at once) and take part only in an epoch that begins afterwards.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import zmq.asyncio

from node.link import ConsoleLink, ConsoleUnreachable
from tests.e2e.helpers import RawClients, ServerThread, make_config
from transport import messages as m
from transport.state import ClientStatus, RunState


def node_x_link(
    run_id: str, control: str, ctx: zmq.asyncio.Context, **options: float
) -> ConsoleLink:
    """A ConsoleLink as node-x (its gossip endpoint only announced: nothing gossips here)."""
    return ConsoleLink(
        node_id="node-x",
        run_id=run_id,
        control_endpoint=control,
        gossip_endpoint="tcp://127.0.0.1:2",
        context=ctx,
        **options,
    )


def test_a_restarted_node_leaves_its_dead_process_membership_and_joins_the_next_epoch(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, init_min_clients=2, health_timeout=30.0)
    console = ServerThread(config, tmp_path / "run")
    raw = RawClients()
    try:
        endpoints = console.start()
        for name in ("node-x", "node-y"):
            raw(endpoints.control, name).join(config.run_id)
        snap = console.wait_for(lambda s: s.state is RunState.WARMUP, 5, "Warmup")
        assert snap.client("node-x").status is ClientStatus.ACTIVE  # type: ignore[union-attr]

        async def restart() -> float:
            ctx = zmq.asyncio.Context()
            link = node_x_link(config.run_id, endpoints.control, ctx)
            started = time.monotonic()
            try:
                await asyncio.wait_for(link.start(), 20)
                return time.monotonic() - started
            finally:
                await link.close(leave=False)
                ctx.destroy(linger=0)

        took = asyncio.run(restart())
        left = console.events("client_left")
        epochs = console.events("epoch_started")
        snap = console.snapshot()
    finally:
        console.stop()
        raw.close()

    assert [e["client_id"] for e in left] == ["node-x"]
    assert took < 5.0  # at once, not after health_timeout
    # the epoch stopped counting on the dead process (below min_clients it was abandoned);
    # the new process is a member only of an epoch that began after it joined
    assert len(epochs) == 2 and epochs[1]["t"] >= left[0]["t"]
    me = snap.client("node-x")
    assert me is not None and me.joined_at >= left[0]["t"] and not me.warmed_up


def test_a_request_to_a_console_that_died_gives_up_when_its_broadcasts_stop(
    tmp_path: Path,
) -> None:
    """The console is gone mid-run: a request stops waiting once the state broadcasts have
    been silent for several ticks (about 2 s here), not after ``request_timeout`` (30 s)."""
    config = make_config(tmp_path, init_min_clients=2, heartbeat_interval=0.25)
    console = ServerThread(config, tmp_path / "run")
    endpoints = console.start()

    async def request_after_the_console_died() -> tuple[float, str]:
        ctx = zmq.asyncio.Context()
        link = node_x_link(config.run_id, endpoints.control, ctx, request_timeout=30.0)
        try:
            await asyncio.wait_for(link.start(), 20)
            await asyncio.sleep(0.5)  # following its broadcasts
            console.stop()
            started = time.monotonic()
            try:
                await link.request(m.Metrics(node_id="node-x", round=1, metrics={}))
            except ConsoleUnreachable as exc:
                return time.monotonic() - started, str(exc)
            raise AssertionError("a dead console answered")
        finally:
            await link.close(leave=False)
            ctx.destroy(linger=0)

    try:
        took, why = asyncio.run(request_after_the_console_died())
    finally:
        console.stop()

    assert "broadcast nothing" in why
    assert took < 15.0  # well before request_timeout, even behind a heartbeat's own attempt
