"""``fl-console data.toml --headless``: the same run with no screen.

Server and coordinator on ``asyncio.run``, the spawned local nodes as child processes,
state changes logged through ``logging`` + Rich, a progress bar of accepted rounds, and a
JSON summary at the end. Exit 0 when the run is Finished.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from console.config import Config
from console.record.export import metrics_rows, write_metrics_csv
from console.server import ConsoleServer
from console.server.spawn import DataServerProcess, LocalNodes, start_data_server
from transport.exit_codes import ExitCode
from transport.net import connect_address
from transport.state import RunState

log = logging.getLogger(__name__)


def build_summary(
    server: ConsoleServer, wall_time: float, nodes: LocalNodes | None
) -> dict[str, Any]:
    coordinator = server.coordinator
    snap = coordinator.snapshot(server.clock())
    rounds = server.records.summary_rounds(coordinator.rounds)
    accepted = [r for r in rounds if r["outcome"] == "accepted" and r["metrics"]]
    final = accepted[-1]["metrics"] if accepted else {}
    clients = server.records.summary_clients(snap)
    durations = [r["duration"] for r in rounds if r["duration"] is not None]
    return {
        "run_id": snap.run_id,
        "final_state": snap.state.value,
        "epoch": snap.epoch,
        "accepted_rounds": snap.accepted_rounds,
        "total_rounds": snap.total_rounds,
        "wall_time": wall_time,
        "mean_round_time": sum(durations) / len(durations) if durations else None,
        "final_metrics": final,
        "checkpoint": msgspec.to_builtins(snap.checkpoint),
        "rejected_messages": server.rejected_messages,
        "refused_connections": server.security.refused if server.security is not None else 0,
        "rounds": rounds,
        "clients": clients,
        "privacy": privacy_summary(server),
        "spawned_pids": nodes.pids if nodes else [],
    }


def final_accuracy(server: ConsoleServer) -> float | None:
    """The mean accuracy of the newest round any node reported an aggregate for."""
    for view in reversed(server.coordinator.rounds_after(0)):
        metrics = server.records.record(view.round)
        if metrics.aggregates:
            return metrics.global_metrics().get("accuracy")
    return None


def privacy_summary(server: ConsoleServer) -> dict[str, Any] | None:
    """[privacy] dp: the worst epsilon any node spent, at the run's delta (None: DP off)."""
    privacy = server.config.privacy
    if not privacy.dp:
        return None
    return {
        "epsilon": server.records.worst_epsilon(),
        "delta": privacy.delta,
        "noise_multiplier": privacy.noise_multiplier,
        "max_grad_norm": privacy.max_grad_norm,
        "target_epsilon": privacy.target_epsilon,
    }


async def run_headless(
    config: Config,
    *,
    spawn: int,
    run_dir: Path,
    summary_path: Path | None = None,
    metrics_csv: Path | None = None,
    resume: bool = False,
    console: Console | None = None,
    nodes: LocalNodes | None = None,
) -> int:
    """``nodes``: the local nodes to start ``spawn`` of, perhaps already prepared (their fork
    server importing torch while the console starts); new ones otherwise."""
    console = console or Console(stderr=True)
    started = time.monotonic()
    if nodes is None:
        nodes = LocalNodes(run_id=config.run_id, control_endpoint="", log_dir=run_dir / "nodes")
    if spawn:
        nodes.prepare()  # the fork server imports torch while the console binds its sockets
    try:
        server = ConsoleServer(config, run_dir=run_dir, resume=resume)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        endpoints = server.start()
    except BaseException:
        nodes.stop()
        raise
    data_server: DataServerProcess | None = None
    try:
        nodes.control_endpoint = connect_address(endpoints.control)
        nodes.node_args = server.spawn_args
        server.watch_children(nodes.reap)
        if config.data.serve:
            data_server = start_data_server(
                config.run_spec(),
                state_endpoint=connect_address(endpoints.state),
                bind=config.server.endpoint(config.server.data_port),
                log_dir=run_dir,
            )
        if spawn:
            nodes.start(spawn)
        if data_server is not None:  # nodes start meanwhile: both pay torch's import at once
            server.data_server = await asyncio.to_thread(data_server.wait_ready)
        with Progress(
            TextColumn("[bold]{task.fields[state]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rounds"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
            console=console,
            transient=False,
            disable=not console.is_terminal,
        ) as progress:
            task = progress.add_task(
                "run", total=config.coordinator.total_rounds, state="", detail=""
            )

            def update() -> None:
                snap = server.coordinator.snapshot(server.clock())
                detail = (
                    f"epoch {snap.epoch} · round {snap.round} · {len(snap.live_clients)} clients"
                )
                progress.update(
                    task, completed=snap.accepted_rounds, state=snap.state.value, detail=detail
                )

            server.listeners.append(update)
            finished = asyncio.create_task(server.serve())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({finished, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for t in (finished, stopping):
                t.cancel()
            update()
        final = server.coordinator.state
        if stop.is_set():
            console.print("[yellow]stopped on signal[/]")
        wall = time.monotonic() - started
        if summary_path is not None:
            summary = build_summary(server, wall, nodes)
            summary_path.parent.mkdir(parents=True, exist_ok=True)
            summary_path.write_text(json.dumps(summary, indent=2, default=str))
            console.print(f"summary written to {summary_path}")
        if metrics_csv is not None:
            rows = metrics_rows(server.records, server.coordinator.rounds)
            count = write_metrics_csv(metrics_csv, rows)
            console.print(f"metrics of {count} client rounds written to {metrics_csv}")
        accuracy = final_accuracy(server)
        console.print(
            f"run {config.run_id}: {final.value}, {server.coordinator.snapshot(server.clock()).accepted_rounds}"
            f" accepted rounds in {wall:.1f}s"
            + (f", accuracy {accuracy:.4f}" if accuracy is not None else "")
        )
        return ExitCode.OK if final is RunState.FINISHED else ExitCode.RUN_FAILED
    finally:
        nodes.stop()
        if data_server is not None:
            data_server.stop()
        await server.stop()
