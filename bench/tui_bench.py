"""One refresh of the operator console with 1,000 clients: is it under 50 ms?

``python -m bench.tui_bench [--clients 1000] [--rounds 50] [--reps 15] [--json PATH]``
(JSON to ``runs/tui_bench.json`` by default; exit 1 when a refresh misses the target).

The app runs headless (``App.run_test``, 120x40) on a StaticBackend whose snapshot the bench
swaps between refreshes. For each scenario it times ``refresh_view()`` (read the snapshot,
diff it, write the changed cells: the console's own work) and the whole frame: from the
start of the refresh until Textual has composed and written the screen, as wall time and as
this process's CPU time (the wall time also holds Textual's frame timer, up to 1/60 s of
idle waiting, which the CPU time leaves out). Scenarios:

- **first**: the empty app gets the full snapshot (1,000 rows added);
- **unchanged**: an equal snapshot, new objects (every row compared, nothing written);
- **heartbeats**: every live client's heartbeat age moves, as it does on every live refresh;
- **10% cells**: heartbeats plus 25 clients changing stage, rounds, loss and accuracy
  (about 10% of the table's cells), a new log line and a new seq.

The baseline is the same scenario with 8 clients, in the same run; the ratio says what the
other 992 cost. Medians of ``--reps`` refreshes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from console.app.app import ConsoleApp
from console.app.backend import StaticBackend
from console.app.widgets import ClientsTable
from console.record.eventlog import LogLine
from console.record.view import ClientRow, ConsoleView, RoundRow, WitnessRow
from tests.factories import run_snapshot
from transport.state import ClientStatus, ClientView, RoundOutcome

RESULTS = Path(__file__).resolve().parents[1] / "runs" / "tui_bench.json"  # runs/ is ignored
TARGET_MS = 50.0
SIZE = (120, 40)
STAGES = ("training", "waiting", "gossiping", "done", "voting")


def build_view(clients: int = 1000, rounds: int = 50) -> ConsoleView:
    """A run in RoundTrain with ``clients`` clients (2% dropped) and ``rounds`` rounds."""
    now = 10_000.0
    ids = [f"node-{i:04d}" for i in range(clients)]
    train = tuple(ids[:10])
    witnesses = tuple(ids[10:13])
    rows, views = [], []
    for i, cid in enumerate(ids):
        dropped = i % 50 == 49
        role = "trainer" if cid in train else "witness" if cid in witnesses else ""
        rows.append(
            ClientRow(
                id=cid,
                address=f"tcp://10.0.{i // 250}.{i % 250}:4{i:04d}",
                status="dropped" if dropped else "active",
                stage="dropped" if dropped else STAGES[i % len(STAGES)],
                role="" if dropped else role,
                heartbeat_age=None if dropped else (i % 7) / 10,
                rounds_trained=i % 40,
                last_loss=0.5 + (i % 97) / 1000,
                last_accuracy=0.8 + (i % 89) / 1000,
                bytes_in=1_000_000 + i * 4096,
                bytes_out=2_000_000 + i * 2048,
                drop_reason="no heartbeat for 3.1s" if dropped else "",
            )
        )
        views.append(
            ClientView(
                cid,
                ClientStatus.DROPPED if dropped else ClientStatus.ACTIVE,
                rows[-1].address,
                True,
                now - 0.3,
            )
        )
    hashes = {t: f"{abs(hash(t)):016x}" for t in train}
    round_rows = tuple(
        RoundRow(
            round=n,
            epoch=(n - 1) // 5 + 1,
            train_set=train,
            witnesses_elected=3,
            witnesses_reported=3 if n < rounds else 1,
            quorum=2,
            accepted=train if n < rounds else (),
            rejected=(),
            outcome=RoundOutcome.ACCEPTED if n < rounds else RoundOutcome.OPEN,
            duration=9.5 + n % 3 if n < rounds else None,
            loss=2.0 / n if n < rounds else None,
            accuracy=0.5 + 0.4 * (1 - 1 / n) if n < rounds else None,
            aggregate_hashes=1,
            witness_rows=tuple(WitnessRow(w, True, dict(hashes), True) for w in witnesses),
            commits=dict(hashes),
        )
        for n in range(1, rounds + 1)
    )
    run = run_snapshot(
        run_id="bench",
        now=now,
        phase_started=now - 3.0,
        deadline=now + 57.0,
        epoch=(rounds - 1) // 5 + 1,
        round=rounds,
        epoch_rounds=(rounds - 1) % 5 + 1,
        accepted_rounds=rounds - 1,
        total_rounds=rounds + 50,
        rounds_per_epoch=5,
        init_min_clients=4,
        clients=tuple(views),
    )
    log = tuple(LogLine(now - 100 + i / 10, "state", f"event {i}") for i in range(500))
    return ConsoleView(run, "tcp://127.0.0.1:5556", 1, tuple(rows), round_rows, log)


def _copy(view: ConsoleView) -> ConsoleView:
    """An equal snapshot made of new objects (what a server builds on every call)."""
    return replace(view, clients=tuple(replace(c) for c in view.clients))


def _heartbeats(view: ConsoleView, step: int) -> ConsoleView:
    clients = tuple(
        c if c.heartbeat_age is None else replace(c, heartbeat_age=((i + step) % 9) / 10)
        for i, c in enumerate(view.clients)
    )
    return replace(view, clients=clients, seq=view.seq + 1)


def _ten_percent(view: ConsoleView, step: int) -> ConsoleView:
    view = _heartbeats(view, step)
    clients = list(view.clients)
    for k in range(25):
        i = (step * 37 + k * 40) % len(clients)
        c = clients[i]
        clients[i] = replace(
            c,
            stage=STAGES[(i + step) % len(STAGES)] if c.heartbeat_age is not None else c.stage,
            rounds_trained=c.rounds_trained + 1,
            last_loss=(c.last_loss or 1.0) * 0.99,
            last_accuracy=min(1.0, (c.last_accuracy or 0.5) + 0.001),
        )
    line = LogLine(view.run.now + step, "round", f"round {step} accepted")
    return replace(view, clients=tuple(clients), log=(*view.log[1:], line))


class _FrameProbe:
    """Notes when the screen writes a frame (wraps the screen's compositor refresh)."""

    def __init__(self, app: ConsoleApp) -> None:
        self.frames = 0
        screen = app.screen
        original = screen._compositor_refresh

        def wrapped() -> None:
            original()
            self.frames += 1

        screen._compositor_refresh = wrapped  # type: ignore[method-assign]


async def _measure(
    app: ConsoleApp, backend: StaticBackend, pilot: Any, view: ConsoleView, probe: _FrameProbe
) -> tuple[float, float, float, int]:
    backend.set_view(view)
    frames = probe.frames
    wall0, cpu0 = time.perf_counter(), time.process_time()
    app.refresh_view()
    update = time.perf_counter() - wall0
    for _ in range(200):
        await pilot.pause()
        if probe.frames > frames:
            break
        await asyncio.sleep(0.001)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if probe.frames == frames:  # nothing changed on screen: no frame to time
        wall = cpu = update
    written = app.query_one(ClientsTable).cells_written
    return update * 1000, wall * 1000, cpu * 1000, written


async def _scenarios(clients: int, rounds: int, reps: int) -> dict[str, dict[str, float]]:
    base = build_view(clients, rounds)
    makers: dict[str, Callable[[ConsoleView, int], ConsoleView]] = {
        "unchanged": lambda v, step: _copy(v),
        "heartbeats": _heartbeats,
        "10% cells": _ten_percent,
    }
    out: dict[str, dict[str, float]] = {}
    firsts: list[tuple[float, float, float, int]] = []
    for _ in range(max(3, reps // 3)):
        backend = StaticBackend(build_view(0, 0))
        app = ConsoleApp(backend, refresh_hz=0)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            probe = _FrameProbe(app)
            firsts.append(await _measure(app, backend, pilot, base, probe))
    out["first"] = _summary(firsts, clients)
    backend = StaticBackend(base)
    app = ConsoleApp(backend, refresh_hz=0)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        probe = _FrameProbe(app)
        for name, make in makers.items():
            samples = []
            view = base
            for step in range(1, reps + 1):
                view = make(view, step)
                samples.append(await _measure(app, backend, pilot, view, probe))
            out[name] = _summary(samples, clients)
    return out


def _summary(samples: list[tuple[float, float, float, int]], clients: int) -> dict[str, float]:
    return {
        "clients": clients,
        "update_ms": statistics.median(s[0] for s in samples),
        "frame_wall_ms": statistics.median(s[1] for s in samples),
        "frame_cpu_ms": statistics.median(s[2] for s in samples),
        "cells_written": statistics.median(s[3] for s in samples),
    }


def run(clients: int = 1000, rounds: int = 50, reps: int = 15) -> dict[str, Any]:
    """Measure, return ``{"scenarios": {name: figures}, "baseline": {...}, ...}``."""
    baseline = asyncio.run(_scenarios(8, 8, reps))
    measured = asyncio.run(_scenarios(clients, rounds, reps))
    for name, figures in measured.items():
        base = baseline[name]
        figures["ratio_cpu_vs_8_clients"] = figures["frame_cpu_ms"] / max(
            base["frame_cpu_ms"], 1e-6
        )
        figures["under_target"] = max(figures["update_ms"], figures["frame_cpu_ms"]) < TARGET_MS
    return {
        "clients": clients,
        "rounds": rounds,
        "reps": reps,
        "terminal": list(SIZE),
        "target_ms": TARGET_MS,
        "scenarios": measured,
        "baseline_8_clients": baseline,
    }


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"console refresh, {result['clients']} clients, {result['rounds']} rounds, "
        f"{result['terminal'][0]}x{result['terminal'][1]} (median of {result['reps']})"
    )
    for label in ("scenario", "cells written", "update ms", "frame CPU ms", "frame wall ms"):
        table.add_column(label, justify="left" if label == "scenario" else "right", no_wrap=True)
    table.add_column("8 clients CPU ms", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column(f"< {result['target_ms']:.0f} ms", justify="center")
    for name, f in result["scenarios"].items():
        base = result["baseline_8_clients"][name]
        table.add_row(
            name,
            f"{f['cells_written']:.0f}",
            f"{f['update_ms']:.1f}",
            f"{f['frame_cpu_ms']:.1f}",
            f"{f['frame_wall_ms']:.1f}",
            f"{base['frame_cpu_ms']:.1f}",
            f"{f['ratio_cpu_vs_8_clients']:.1f}x",
            "yes" if f["under_target"] else "NO",
        )
    Console(width=110).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args.clients, args.rounds, args.reps)
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"written to {args.json}")
    return 0 if all(f["under_target"] for f in result["scenarios"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
