"""How the server ends: a Finished run waits (bounded) for the last round's aggregate reports,
and a broadcast after the sockets closed is dropped without an error printed at exit.

The coordinator is replaced by a fixed fake state (Finished after an accepted round 2 with two
live clients); the server's sockets are real, on loopback.
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from console.config import CheckpointConfig, Config, ServerConfig
from console.server import ConsoleServer
from tests.factories import round_view, run_snapshot
from transport.state import ClientStatus, ClientView, RoundOutcome, RunSnapshot, RunState


class _FinishedRun:
    """What the server reads of a coordinator, frozen at the end of a 2-round run."""

    state = RunState.FINISHED

    def __init__(self) -> None:
        clients = tuple(ClientView(id=c, status=ClientStatus.ACTIVE) for c in ("a", "b"))
        last = round_view(round=2, outcome=RoundOutcome.ACCEPTED)
        self.snap = run_snapshot(state=RunState.FINISHED, round=2, current=last, clients=clients)

    def snapshot(self, now: float) -> RunSnapshot:
        return self.snap


def _server(tmp_path: Path, *, finished: bool = True) -> ConsoleServer:
    config = replace(
        Config(),
        run_id="finish",
        server=ServerConfig(host="127.0.0.1", state_port=0, control_port=0),
        checkpoint=CheckpointConfig(dir=tmp_path / "checkpoints"),
    )
    server = ConsoleServer(config, run_dir=tmp_path / "run")
    if finished:
        server.coordinator = _FinishedRun()  # type: ignore[assignment]
        server._finished.set()
    return server


async def _serve(server: ConsoleServer, late: float | None, settle: float) -> float:
    """Serve the Finished run while client ``b`` reports ``late`` seconds in (``a`` already
    has); the seconds serve() took."""
    server.records.aggregated("a", 2, "ab" * 32, {})
    if late is not None:
        asyncio.get_running_loop().call_later(
            late, server.records.aggregated, "b", 2, "ab" * 32, {}
        )
    started = time.monotonic()
    await server.serve(settle=settle)
    return time.monotonic() - started


def test_a_finished_run_is_served_until_every_live_client_reported_the_last_round(
    tmp_path: Path,
) -> None:
    server = _server(tmp_path)
    assert server.final_reports_missing() == {"a", "b"}
    took = asyncio.run(_serve(server, late=0.3, settle=20.0))
    assert server.final_reports_missing() == set()
    assert 0.3 <= took < 5.0  # it waited for b, not for the whole grace


def test_a_client_that_never_reports_holds_the_end_only_for_the_grace(tmp_path: Path) -> None:
    server = _server(tmp_path)
    took = asyncio.run(_serve(server, late=None, settle=0.4))
    assert server.final_reports_missing() == {"b"}
    assert 0.4 <= took < 5.0


async def _broadcast_after_stop(server: ConsoleServer) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    server.start()
    server._broadcast_soon()  # a coalesced broadcast pending when the console stops
    await server.stop()
    server._broadcast()  # a listener or callback broadcasting after the sockets closed
    await asyncio.sleep(0.05)
    gc.collect()  # an unretrieved future reports its exception when it is collected
    await asyncio.sleep(0)
    return errors


def test_a_broadcast_after_stop_is_dropped_without_an_error(tmp_path: Path) -> None:
    server = _server(tmp_path, finished=False)  # a real coordinator: a broadcast reads it all
    assert asyncio.run(_broadcast_after_stop(server)) == []
