"""The chaos run: a long run of real processes under a seeded storm of faults, then its books.

``python -m bench chaos`` (or ``make soak``; ``python -m bench.chaos --rounds 40`` for a short
one) starts a headless console (``--spawn 0``) and six ``fl-node`` processes on loopback, all
children of this driver, so it can kill and restart any of them. Every few seconds the driver
draws a fault from its seeded generator:

- **sigkill**: SIGKILL a node and start it again, under the same name, a few seconds later;
- **sigstop**: SIGSTOP a node and SIGCONT it after 0.5 to 4 s (past ``health_timeout`` the
  console drops it and it joins again: counted as ``sigstop_long``);
- **restart**: SIGTERM a node, wait for it to exit and start it again at once;
- **flood**: a burst of hostile control messages (random bytes, cut-short and malformed
  frames, requests only members may send; :mod:`tests.e2e.hostile`) from a DEALER on the
  control port.

Every console process is also flooded once as soon as it has started a round (a hostile peer
that reconnects to a restarted console); the RSS jump across that flood is reported. At most two
nodes are out at a time. At a fifth and at two fifths of the rounds the console is
SIGKILLed and started again with ``--resume``. Meanwhile the console's RSS (``VmRSS``), open
file descriptors and the run directory's size are sampled against the round number. The fault
draws are seeded; when they land depends on the machine, so two runs differ in detail.

At the end :mod:`bench.chaos_checks` checks and reports what must hold after any such run.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import zmq

from bench.chaos_checks import check_run, table
from tests.e2e.fault_runs import ControlledRun, fault_config
from tests.e2e.hostile import control_messages

NODES = 6
MAX_OUT = 2  # nodes out (killed, stopped, restarting) at one time
HEALTH_TIMEOUT = 2.0
CONSOLE_KILLS = (0.2, 0.4)  # at these fractions of the rounds the console is SIGKILLed


def chaos_config(directory: Path, rounds: int, seed: int) -> Path:
    """Six nodes, fast rounds on the digits (a small MLP), short phase limits so that a fault
    costs seconds, epochs of ten rounds (five in a short run) so restarted nodes are back soon."""
    return fault_config(
        directory,
        top={"run_id": "chaos", "seed": seed},
        coordinator={
            "init_min_clients": 4,
            "min_clients": 2,
            "witness_nodes": 2,
            "waiting_for_members_extra_time": 1.0,
            "warmup_time": 20.0,
            "max_round_train_time": 10.0,
            "round_witness_time": 3.0,
            "cooldown_time": 5.0,
            "rounds_per_epoch": 10 if rounds >= 100 else 5,
            "total_rounds": rounds,
            "heartbeat_interval": 0.3,
            "health_timeout": HEALTH_TIMEOUT,
        },
        learning={"train_set_size": 3, "local_epochs": 1, "optimizer": "adam"},
        model={"hidden": [32]},
        data={"source": "digits", "partition": "iid"},
    )


# ----------------------------------------------------------------------------- sampling


def proc_rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_fds(pid: int) -> int | None:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return None


def tree_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass  # replaced while we walked
    return total


# ----------------------------------------------------------------------------- floods


def flood(endpoint: str, run_id: str, rng: random.Random, count: int) -> dict[str, int]:
    """``count`` hostile control messages in one burst from a fresh DEALER; the replies that
    came back within 2 s are counted (a throttled peer may get fewer)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    identity = f"chaos-flood-{rng.randrange(10**6)}"
    sock.setsockopt(zmq.ROUTING_ID, identity.encode())
    try:
        sock.connect(endpoint)
        stream = control_messages(random.Random(rng.random()), identity, run_id)
        for _ in range(count):
            sock.send_multipart(next(stream).frames)
        answered = 0
        deadline = time.monotonic() + 2.0
        while answered < count and time.monotonic() < deadline:
            if sock.poll(50):
                sock.recv_multipart()
                answered += 1
        return {"sent": count, "answered": answered}
    finally:
        sock.close(0)
        ctx.term()


# ----------------------------------------------------------------------------- the driver


class ChaosDriver:
    """Drives one chaos run; :meth:`drive` returns when the console exits or time is up."""

    def __init__(
        self,
        run: ControlledRun,
        rounds: int,
        seed: int,
        interval: tuple[float, float],
        floods: bool = True,
        bursts: tuple[int, ...] = (200, 500, 2000),
    ):
        self.with_floods = floods
        self.bursts = bursts
        self.run = run
        self.rounds = rounds
        self.rng = random.Random(seed)
        self.interval = interval
        self.names = [f"node-{i}" for i in range(NODES)]
        self.out: dict[str, float] = {}  # node -> when it is due back (cont / restart)
        self.actions: list[tuple[float, str, str]] = []  # (due, action, node)
        self.faults: list[dict[str, Any]] = []
        self.floods: list[dict[str, int]] = []
        self.samples: list[dict[str, Any]] = []
        self.console_kills = [max(2, round(f * rounds)) for f in CONSOLE_KILLS]
        self.round = 0  # the last round started, as the current console logged it
        # no faults and no restarts from here: a node started now might miss the end
        self.calm_from = rounds - max(2, rounds // 30)
        self.console_down_until: float | None = None
        self.flood_threads: list[threading.Thread] = []
        self.flooded: set[int] = set()  # consoles flooded once they served a round
        self.lingering: list[dict[str, Any]] = []  # nodes still running after the end

    # -- bookkeeping

    def _note(self, kind: str, node: str = "", **extra: Any) -> None:
        entry = {
            "kind": kind,
            "node": node,
            "t": time.monotonic(),
            "round": self.round,
            "console": self.run.console.number,
            **extra,
        }
        self.faults.append(entry)
        print(f"[chaos] round {self.round:>4}: {kind} {node}".rstrip(), flush=True)

    def _current_round(self) -> int:
        started = self.run.console.log.of("round_started")
        if started:
            self.round = max(self.round, int(started[-1]["round"]))
        return self.round

    def _sample(self, with_disk: bool) -> None:
        console = self.run.console
        if not console.alive or not console.log.of("server"):
            return  # not serving yet (the first samples would be of the exec)
        rss, fds = proc_rss_kb(console.pid), proc_fds(console.pid)
        if not rss or fds is None:  # already gone
            return
        if console.log.of("state_changed", new="Finished"):
            return  # shutting down: not the run's steady state
        sample = {
            "t": time.monotonic(),
            "incarnation": console.number,
            "pid": console.pid,
            "round": self.round,
            "rss_kb": rss,
            "fds": fds,
        }
        if with_disk:
            sample["disk_bytes"] = tree_bytes(self.run.directory)
            sample["checkpoint_bytes"] = tree_bytes(self.run.checkpoint_dir)
            sample["node_log_bytes"] = tree_bytes(self.run.directory / "nodes")
        self.samples.append(sample)

    # -- faults

    def _up(self) -> list[str]:
        return [n for n in self.names if n not in self.out]

    def _fault(self) -> None:
        kind = self.rng.choices(["sigkill", "sigstop", "restart", "flood"], [3, 3, 2, 2])[0]
        up = self._up()
        if kind != "flood" and (len(self.out) >= MAX_OUT or not up):
            kind = "flood"
        if kind == "flood" and not self.with_floods:
            return
        self._inject(kind, up)

    def _inject(self, kind: str, up: list[str]) -> None:
        now = time.monotonic()
        if kind == "flood":
            # In a thread: a burst waits 2 s for its replies, and rounds are faster than that;
            # the driver keeps sampling and injecting meanwhile.
            count = self.rng.choice(self.bursts)
            rng = random.Random(self.rng.random())
            self._note("flood", sent=count)
            burst = threading.Thread(
                target=lambda: self.floods.append(
                    flood(self.run.control, self.run.run_id, rng, count)
                ),
                name="chaos-flood",
                daemon=True,
            )
            burst.start()
            self.flood_threads.append(burst)
            return
        name = self.rng.choice(up)
        node = self.run.nodes[name]
        if kind == "sigkill":
            node.kill()
            back = now + self.rng.uniform(1.0, 6.0)
            self.out[name] = back
            self.actions.append((back, "start", name))
            self._note("sigkill", name)
        elif kind == "sigstop":
            pause = self.rng.uniform(0.5, 4.0)
            node.stop()
            self.out[name] = now + pause
            self.actions.append((now + pause, "cont", name))
            self._note("sigstop_long" if pause > HEALTH_TIMEOUT else "sigstop", name, pause=pause)
        else:  # restart: a clean stop, then the same name again
            node.signal(signal.SIGTERM)
            try:
                node.wait(15)
            except subprocess.TimeoutExpired:
                node.kill()
            self.run.start_node(name)
            self._note("restart", name)

    def _due_actions(self) -> None:
        now = time.monotonic()
        due = [a for a in self.actions if a[0] <= now]
        self.actions = [a for a in self.actions if a[0] > now]
        for _, action, name in due:
            if action == "cont":
                self.run.nodes[name].cont()
            elif action == "start" and self.round < self.calm_from:
                self.run.start_node(name)  # not in the last rounds: it would miss the end
            elif action == "console":
                self.run.start_console(resume=True)
                self.console_down_until = None
                print(f"[chaos] console {self.run.console.number} started with --resume")
                continue
            self.out.pop(name, None)

    def _maybe_kill_console(self) -> None:
        if not self.console_kills or self.console_down_until is not None:
            return
        if self._current_round() < self.console_kills[0]:
            return
        self.console_kills.pop(0)
        self.run.console.kill()
        self._note("console_sigkill", f"console-{self.run.console.number}")
        back = time.monotonic() + self.rng.uniform(0.5, 2.0)
        self.console_down_until = back
        self.actions.append((back, "console", ""))

    # -- the run

    def drive(self, deadline: float) -> str | None:
        """Until the console exits (None when it exited 0) or ``deadline``; why it failed."""
        run = self.run
        run.start_console()
        for name in self.names:
            run.start_node(name)
        next_fault: float | None = None
        next_disk = 0.0
        while True:
            now = time.monotonic()
            if now > deadline:
                return f"no end within the time limit (round {self.round})"
            self._due_actions()
            console = run.console
            if self.console_down_until is None and not console.alive:
                code = console.process.returncode
                console.log.poll()
                return None if code == 0 else f"console {console.number} exited {code}"
            if self.console_down_until is None:
                self._current_round()
                self._maybe_kill_console()
            if next_fault is None and self.round >= 1:
                next_fault = now + self.rng.uniform(*self.interval)
            calm = self.round >= self.calm_from  # the last rounds: let the run end cleanly
            if (
                next_fault is not None
                and now >= next_fault
                and self.console_down_until is None
                and not calm
            ):
                self._fault()
                next_fault = time.monotonic() + self.rng.uniform(*self.interval)
            if (
                self.with_floods
                and self.console_down_until is None
                and console.number not in self.flooded
            ):
                sampled = any(x["incarnation"] == console.number for x in self.samples)
                if sampled and console.log.of("round_started"):  # serving, its nodes back
                    self.flooded.add(console.number)
                    self._inject("flood", [])
            self._sample(with_disk=now >= next_disk)
            if now >= next_disk:
                next_disk = now + 1.0
            time.sleep(0.25)

    def wind_down(self) -> dict[str, int | None]:
        """After the console's end: every stopped node continued, exits collected; a node
        still running 10 s later is noted with its age and its log's last lines."""
        ended = time.monotonic()
        for burst in self.flood_threads:
            burst.join(timeout=10.0)
        for name, node in self.run.nodes.items():
            if node.stopped:
                node.cont()
            self.out.pop(name, None)
        exits = self.run.node_exits(10)
        for name, code in exits.items():
            if code is None:
                node = self.run.nodes[name]
                tail = node.output().strip().splitlines()[-3:]
                self.lingering.append(
                    {"node": name, "started_s_before_end": ended - node.started, "log": tail}
                )
        return exits


def run(
    rounds: int = 300,
    seed: int = 17,
    directory: Path | None = None,
    interval: tuple[float, float] = (1.5, 4.0),
    time_limit: float = 3600.0,
    floods: bool = True,
    bursts: tuple[int, ...] = (200, 500, 2000),
) -> dict[str, Any]:
    """One chaos run in ``directory`` (a fresh temporary one when None); its figures."""
    import tempfile

    keep = directory is not None
    base = directory or Path(tempfile.mkdtemp(prefix="chaos-"))
    base.mkdir(parents=True, exist_ok=True)
    config = chaos_config(base, rounds, seed)
    run_ = ControlledRun(base, config)
    driver = ChaosDriver(run_, rounds, seed, interval, floods, bursts)
    started = time.monotonic()
    failure: str | None = None
    exits: dict[str, int | None] = {}
    leftover: list[str] = []
    try:
        failure = driver.drive(started + time_limit)
        exits = driver.wind_down()
    finally:
        wall = time.monotonic() - started
        try:
            run_.close()
        except AssertionError as exc:
            leftover.append(str(exc))
    result = check_run(
        run_,
        rounds=rounds,
        samples=driver.samples,
        faults=driver.faults,
        floods=driver.floods,
        failure=failure,
        node_exits=exits,
        leftover=leftover,
    )
    result.update(
        seed=seed,
        wall_s=wall,
        directory=str(base) if keep else None,
        faults_by_kind=dict(Counter(f["kind"] for f in driver.faults)),
        lingering_nodes=driver.lingering,
        samples=driver.samples,
    )
    if not keep:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="total rounds (>= 10)")
    parser.add_argument("--seed", type=int, default=17, help="seeds the fault draws")
    parser.add_argument("--dir", type=Path, help="keep the run here (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--time-limit", type=float, default=3600.0, help="seconds")
    parser.add_argument(
        "--no-floods", action="store_true", help="no garbage floods (tells their memory apart)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 10:
        parser.error(f"--rounds must be >= 10, got {args.rounds}")
    result = run(
        args.rounds, args.seed, args.dir, time_limit=args.time_limit, floods=not args.no_floods
    )
    print(table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
