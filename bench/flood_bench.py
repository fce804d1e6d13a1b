"""A garbage flood against the console: what it costs the console, and whether it slows a run.

``python -m bench flood_bench`` or ``python -m bench.flood_bench [--rounds 60] [--repeats 2]``

Two measurements, each against a baseline taken in the same run:

- **cost per message**: an in-process :class:`ConsoleServer` (its log through Rich, as
  ``fl-console --headless`` has it) receives ``MESSAGES`` garbage messages from one flooding
  process, sent as fast as it can; figure: the console's CPU time per message (µs), with flood
  control off (``refusal_limit = 0``: every message refused and answered, its log line
  aggregated) and on (the default: answered until the limit, then dropped unread).
- **round period under a flood**: ``fl-console --headless --spawn 4`` on the default digits job
  (``--rounds`` rounds), once quiet and once while a flooder sends 10,000 garbage messages a
  second to the control port from round 1 to the end; figures: the median round period (from
  one ``round_started`` to the next), its ratio to the quiet run (target <= 1.2), the console's
  CPU (utime + stime from /proc over the run, as a share of one core), the messages the
  flooder sent and the log lines they cost.

The flooder is ``python -m bench.flood_bench --flood ENDPOINT RATE SECONDS COUNT`` (rate 0: as
fast as it can; count 0: no cap), a separate process so its CPU is not the console's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from bench.report import save_result
from tests.e2e.child import descendants, kill_leftovers
from tests.e2e.helpers import make_config, read_events
from tests.e2e.runs import HeadlessConsole
from tests.factories import REPO, write_config

RESULTS = Path(__file__).with_name("results.json")
MESSAGES = 20_000
FLOOD_RATE = 10_000  # messages a second, the target
PERIOD_TARGET = 1.2  # flooded period / quiet period
GARBAGE = [b"\xff garbage, not a header", b"x"]


# ----------------------------------------------------------------------------- the flooder


def flood(
    endpoint: str,
    rate: float,
    seconds: float,
    count: int = 0,
    stop: threading.Event | None = None,
) -> dict[str, float]:
    """Send garbage from one DEALER at ``rate`` messages a second (0: flat out) for ``seconds``
    (or until SIGTERM or ``stop`` is set), at most ``count`` messages (0: no cap); replies are
    read and counted. Returns what was sent and answered."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.ROUTING_ID, b"flooder")
    sock.connect(endpoint)
    sent = answered = 0
    codes: dict[str, int] = {}
    start = time.monotonic()
    batch = 100
    try:
        while time.monotonic() - start < seconds and not (stop is not None and stop.is_set()):
            if count and sent >= count:
                time.sleep(0.01)  # all sent: keep reading replies until told to stop
            for _ in range(batch if not count else min(batch, count - sent)):
                try:
                    sock.send_multipart(GARBAGE, flags=zmq.NOBLOCK)
                    sent += 1
                except zmq.Again:
                    break
            while sock.poll(0, zmq.POLLIN):
                reply = sock.recv_multipart()
                answered += 1
                code = json.loads(reply[0]).get("code", "?")
                codes[code] = codes.get(code, 0) + 1
            if rate:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
    except KeyboardInterrupt:
        pass
    finally:
        elapsed = time.monotonic() - start
        sock.close(linger=0)
        ctx.term()
    return {"sent": sent, "answered": answered, "seconds": elapsed, "rate": sent / elapsed, **codes}


def start_flooder(
    endpoint: str, rate: float, seconds: float, out: Path, count: int = 0
) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "bench.flood_bench", "--flood", endpoint, str(rate), str(seconds)]
    cmd += [str(count)]
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=out.open("w"), stderr=subprocess.STDOUT, text=True
    )


def flooder_result(proc: subprocess.Popen[str], out: Path, timeout: float) -> dict[str, Any]:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(10)
    lines = out.read_text().strip().splitlines()
    return json.loads(lines[-1]) if lines else {"error": "no output"}


# ----------------------------------------------------------------------------- cost per message


def cost_per_message(limit: int | None, messages: int = MESSAGES) -> dict[str, Any]:
    """The console's CPU per garbage message, its log through Rich to /dev/null."""
    from dataclasses import replace

    from rich.console import Console
    from rich.logging import RichHandler

    from console.server import ConsoleServer

    work = Path(tempfile.mkdtemp(prefix="flood-cost-"))
    config = make_config(work, init_min_clients=4)
    if limit is not None:
        config = replace(config, server=replace(config.server, refusal_limit=limit))
    null = open(os.devnull, "w")  # noqa: SIM115 - closed below
    handler = RichHandler(console=Console(file=null, width=120), show_path=False)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)

    async def scenario() -> dict[str, Any]:
        server = ConsoleServer(config, run_dir=work / "run")
        endpoints = server.start()
        out = work / "flooder.out"
        proc = start_flooder(endpoints.control, 0, 600, out, count=messages)
        cpu0, t0 = time.process_time(), time.monotonic()
        deadline = t0 + 120
        handled = 0
        while time.monotonic() < deadline:
            # getattr: this function also measures the console as it was before flood control
            dropped = getattr(getattr(server, "flood", None), "dropped", 0)
            handled = server.rejected_messages + dropped
            if handled >= messages:
                break
            await asyncio.sleep(0.01)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        proc.terminate()
        sent = flooder_result(proc, out, 10)
        lines = sum(1 for _ in (work / "run" / "events.jsonl").open())
        await server.stop()
        return {
            "limit": limit,
            "handled": handled,
            "cpu_s": round(cpu, 3),
            "wall_s": round(wall, 3),
            "us_per_message": round(cpu / max(handled, 1) * 1e6, 1),
            "log_lines": lines,
            "flooder": sent,
        }

    try:
        return asyncio.run(scenario())
    finally:
        root.removeHandler(handler)
        null.close()


# ----------------------------------------------------------------------------- round period


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def round_run(flooded: bool, rounds: int, work: Path) -> dict[str, Any]:
    """One headless run of the default job; with ``flooded``, a 10,000 msg/s flood from round 1."""
    config = write_config(
        work,
        local={"spawn": 4},
        coordinator={"total_rounds": rounds, "rounds_per_epoch": rounds},
    )
    control = f"tcp://127.0.0.1:{_control_port(config)}"
    console = HeadlessConsole(config, work / "run", "--spawn", "4")
    pids: list[int] = []
    flooder = None
    out: dict[str, Any] = {"flooded": flooded}
    try:
        console.wait_for_event(lambda e: e.get("kind") == "round_started", 180)
        pids = descendants(console.pid)
        cpu0, t0 = _cpu_seconds(console.pid), time.monotonic()
        if flooded:
            flooder = start_flooder(control, FLOOD_RATE, 600, work / "flooder.out")
        while console.process.poll() is None and time.monotonic() - t0 < 600:
            cpu1, t1 = _cpu_seconds(console.pid), time.monotonic()
            time.sleep(0.2)
        out["console_cpu"] = round((cpu1 - cpu0) / max(t1 - t0, 1e-9), 3)
        if flooder is not None:
            flooder.terminate()
            out["flooder"] = flooder_result(flooder, work / "flooder.out", 10)
        code = console.wait(60)
        if code != 0:
            out["error"] = f"fl-console exited {code}: {console.output()[-2000:]}"
            return out
        summary = console.read_summary()
        events = read_events(console.events)
        starts = [e["t"] for e in events if e.get("kind") == "round_started"]
        periods = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        out.update(
            period=round(statistics.median(periods), 3),
            accepted=summary["accepted_rounds"],
            outcomes=sorted({r["outcome"] for r in summary["rounds"]}),
            reject_lines=sum(1 for e in events if e.get("kind") == "reject"),
            rate_limited_lines=sum(1 for e in events if e.get("kind") == "rate_limited"),
            rejected_messages=summary.get("rejected_messages"),
        )
        return out
    finally:
        if flooder is not None and flooder.poll() is None:
            flooder.kill()
            flooder.wait(10)
        console.reap()
        kill_leftovers(pids)


def _control_port(config: Path) -> int:
    import tomlkit

    return int(tomlkit.parse(config.read_text())["server"]["control_port"])  # type: ignore[index,arg-type]


# ----------------------------------------------------------------------------- the benchmark


def run(rounds: int = 60, repeats: int = 2) -> dict[str, Any]:
    result: dict[str, Any] = {
        "cost_off": cost_per_message(0),
        "cost_on": cost_per_message(None),
        "runs": [],
    }
    for i in range(repeats):
        for flooded in (False, True):
            work = Path(tempfile.mkdtemp(prefix=f"flood-run-{i}-{int(flooded)}-"))
            result["runs"].append(round_run(flooded, rounds, work))
    quiet = [r["period"] for r in result["runs"] if not r["flooded"] and "period" in r]
    loud = [r["period"] for r in result["runs"] if r["flooded"] and "period" in r]
    if quiet and loud:
        result["period_quiet"] = statistics.median(quiet)
        result["period_flooded"] = statistics.median(loud)
        result["period_ratio"] = round(result["period_flooded"] / result["period_quiet"], 3)
        result["period_target_met"] = result["period_ratio"] <= PERIOD_TARGET
    save_result("flood_bench", result, RESULTS)
    return result


def table(result: dict[str, Any]) -> str:
    lines = ["console CPU per garbage message (Rich logging on, one flooding peer):"]
    for key, what in (("cost_off", "flood control off (limit 0)"), ("cost_on", "default limit")):
        c = result[key]
        lines.append(
            f"  {what:32} {c['us_per_message']:8.1f} µs/msg  {c['handled']:,} messages, "
            f"{c['log_lines']} log lines, flooder {c['flooder'].get('rate', 0):,.0f} msg/s"
        )
    lines.append("round period, default job, 4 nodes:")
    for r in result["runs"]:
        if "error" in r:
            lines.append(f"  {'flooded' if r['flooded'] else 'quiet':8} ERROR {r['error'][:200]}")
            continue
        sent = r.get("flooder", {})
        lines.append(
            f"  {'flooded' if r['flooded'] else 'quiet':8} period {r['period']:.3f} s  "
            f"accepted {r['accepted']}  console CPU {r['console_cpu']:.0%} of a core  "
            f"reject lines {r['reject_lines']}"
            + (
                f"  flood {sent.get('rate', 0):,.0f} msg/s ({sent.get('sent', 0):,} sent)"
                if sent
                else ""
            )
        )
    if "period_ratio" in result:
        met = "met" if result["period_target_met"] else "MISSED"
        lines.append(
            f"  flooded / quiet = {result['period_ratio']:.2f} (target <= {PERIOD_TARGET}: {met})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.flood_bench")
    p.add_argument("--flood", nargs=4, metavar=("ENDPOINT", "RATE", "SECONDS", "COUNT"))
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cost-only", action="store_true")
    args = p.parse_args(argv)
    if args.flood:
        import signal

        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        endpoint, rate, seconds, count = args.flood
        print(json.dumps(flood(endpoint, float(rate), float(seconds), int(count))), flush=True)
        return
    if args.cost_only:
        for limit in (0, None):
            print(json.dumps(cost_per_message(limit)))
        return
    result = run(args.rounds, args.repeats)
    print(table(result))


if __name__ == "__main__":
    main()
