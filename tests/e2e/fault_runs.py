"""A run the test drives process by process: fault injection for the robustness tests.

The console runs headless with ``--spawn 0`` and the test starts every ``fl-node`` itself, so
it can SIGKILL, SIGSTOP and SIGCONT any of them, start one again under the same name, and
SIGKILL the console and start it again with ``--resume`` while the nodes live on. Each console
process (an *incarnation*) gets its own run directory; its ``events.jsonl`` is followed
incrementally. Event times (``t``) are the console's ``time.monotonic()``, which on Linux is
the same clock as this process's, so the phase the console was in when a fault was injected
is read back from the log (:meth:`Incarnation.phase_at`) instead of being assumed.

Everything started here is reaped by :meth:`ControlledRun.close`, whatever the test did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit

from tests.e2e.runs import node_pids_alive
from tests.factories import REPO, write_config

Event = dict[str, Any]

# A slowed job: synthetic data and many local epochs, so a round lasts long enough (about a
# second on a loaded 2-core machine) for a fault to land inside RoundTrain.
SLOW_TRAINING: dict[str, dict[str, Any]] = {
    "learning": {"local_epochs": 8, "optimizer": "sgd", "learning_rate": 0.05},
    "model": {"hidden": [64]},
    "data": {"source": "synthetic", "samples": 6000, "features": 64, "partition": "iid"},
}


def fault_config(directory: Path, **sections: dict[str, Any]) -> Path:
    """``write_config`` (free ports, private checkpoints) with nodes started by the test."""
    merged: dict[str, dict[str, Any]] = {"local": {"spawn": 0}}
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return write_config(directory, **merged)


def config_value(config: Path, section: str, key: str) -> Any:
    doc = tomlkit.parse(config.read_text()).unwrap()
    return doc[key] if section == "top" else doc[section][key]


# ----------------------------------------------------------------------------- processes


@dataclass
class NodeProc:
    """One ``fl-node`` child in its own session (a console SIGKILL does not touch it)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    stopped: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> float:
        """SIGKILL and reap; returns the monotonic time of the kill."""
        at = time.monotonic()
        self.process.kill()
        self.process.wait(timeout=10)
        return at

    def stop(self) -> float:
        at = time.monotonic()
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True
        return at

    def cont(self) -> float:
        at = time.monotonic()
        os.kill(self.pid, signal.SIGCONT)
        self.stopped = False
        return at

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def reap(self) -> None:
        if self.alive:
            if self.stopped:
                os.kill(self.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(extra or {}))


# ----------------------------------------------------------------------------- the event log


class EventTail:
    """A console's ``events.jsonl``, read incrementally; ``view`` records are skipped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[Event] = []
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[Event]:
        """Read what was appended since the last call; returns the new events."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()  # an unfinished last line (or b"")
        new = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("kind") != "view":
                new.append(record)
        self.events.extend(new)
        return new

    def of(self, kind: str, **fields: Any) -> list[Event]:
        self.poll()
        return [
            e
            for e in self.events
            if e.get("kind") == kind and all(e.get(k) == v for k, v in fields.items())
        ]


@dataclass
class Incarnation:
    """One console process of the run: ``fl-console CONFIG --headless --spawn 0``."""

    number: int
    process: subprocess.Popen[bytes]
    run_dir: Path
    output_path: Path
    started: float
    log: EventTail = field(init=False)

    def __post_init__(self) -> None:
        self.log = EventTail(self.run_dir / "events.jsonl")

    @property
    def summary_path(self) -> Path:
        return self.run_dir / "summary.json"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def wait_for(
        self, predicate: Callable[[Event], bool], timeout: float, what: str, *, after: int = 0
    ) -> Event:
        """The first event (at index >= ``after``) matching ``predicate``; polled every 10 ms."""
        deadline = time.monotonic() + timeout
        checked = after
        while True:
            self.log.poll()
            events = self.log.events
            for i in range(checked, len(events)):
                if predicate(events[i]):
                    return events[i]
            checked = max(checked, len(events))
            if not self.alive and not self.log.poll():
                raise AssertionError(
                    f"console {self.number} exited ({self.process.returncode}) before {what}:\n"
                    f"{self.output()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"console {self.number}: no {what} within {timeout:.0f}s; last events:\n"
                    + "\n".join(e.get("text", "") for e in events[-25:])
                )
            time.sleep(0.01)

    def kill(self) -> float:
        at = time.monotonic()
        self.process.kill()
        self.process.wait(timeout=10)
        self.log.poll()
        return at

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def summary(self) -> dict[str, Any]:
        return json.loads(self.summary_path.read_text())

    def phase_at(self, t: float) -> str:
        """The state the console was in at monotonic time ``t`` (from its own log)."""
        state = "WaitingForMembers"
        for e in self.log.events:
            if e.get("t", 0.0) > t:
                break
            if e.get("kind") == "state_changed":
                state = e["new"]
        return state

    def events_between(self, start: float, end: float) -> list[Event]:
        return [e for e in self.log.events if start <= e.get("t", 0.0) <= end]


# ----------------------------------------------------------------------------- the run


class ControlledRun:
    """The console incarnations and node processes of one test, all reaped by :meth:`close`."""

    def __init__(self, directory: Path, config: Path) -> None:
        self.directory = directory
        self.config = config
        self.run_id = str(config_value(config, "top", "run_id"))
        self.host = str(config_value(config, "server", "host"))
        self.control_port = int(config_value(config, "server", "control_port"))
        self.state_port = int(config_value(config, "server", "state_port"))
        self.control = f"tcp://{self.host}:{self.control_port}"
        self.state = f"tcp://{self.host}:{self.state_port}"
        self.checkpoint_dir = Path(str(config_value(config, "checkpoint", "dir"))) / self.run_id
        self.incarnations: list[Incarnation] = []
        self.nodes: dict[str, NodeProc] = {}
        self._retired: list[NodeProc] = []

    # -- the console

    @property
    def console(self) -> Incarnation:
        return self.incarnations[-1]

    def start_console(
        self, *, resume: bool = False, env: Mapping[str, str] | None = None
    ) -> Incarnation:
        number = len(self.incarnations) + 1
        run_dir = self.directory / f"console-{number}"
        run_dir.mkdir(parents=True, exist_ok=True)
        output_path = self.directory / f"console-{number}.out"
        args = [
            sys.executable,
            "-m",
            "console.cli",
            str(self.config),
            "--headless",
            "--spawn",
            "0",
            "--summary",
            str(run_dir / "summary.json"),
            "--run-dir",
            str(run_dir),
        ]
        if resume:
            args.append("--resume")
        with open(output_path, "wb") as out:
            process = subprocess.Popen(  # noqa: S603 - our interpreter, our module
                args,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_env(env),
            )
        incarnation = Incarnation(number, process, run_dir, output_path, time.monotonic())
        self.incarnations.append(incarnation)
        return incarnation

    # -- nodes

    def start_node(self, name: str, *extra: str) -> NodeProc:
        """``fl-node --connect ... --name NAME``; a node of that name must not be running."""
        old = self.nodes.get(name)
        if old is not None:
            assert not old.alive, f"{name} is still running"
            self._retired.append(old)
        log_path = self.directory / "nodes" / f"{name}.{len(self._retired)}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable,
            "-m",
            "node.cli",
            "--connect",
            self.control,
            "--run-id",
            self.run_id,
            "--name",
            name,
            *extra,
        ]
        with open(log_path, "wb") as out:
            process = subprocess.Popen(  # noqa: S603 - our interpreter, our module
                args,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_env(),
                start_new_session=True,
            )
        node = NodeProc(name, process, log_path)
        self.nodes[name] = node
        return node

    def start_nodes(self, count: int, prefix: str = "node") -> list[NodeProc]:
        return [self.start_node(f"{prefix}-{i}") for i in range(count)]

    def node_exits(self, timeout: float) -> dict[str, int | None]:
        """Each current node's exit code once all exited (None: still running at the end)."""
        deadline = time.monotonic() + timeout
        for node in self.nodes.values():
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        return {name: node.process.poll() for name, node in self.nodes.items()}

    def close(self) -> None:
        for incarnation in self.incarnations:
            if incarnation.alive:
                incarnation.process.kill()
                incarnation.process.wait(timeout=10)
        for node in [*self.nodes.values(), *self._retired]:
            node.reap()
        pids = [n.pid for n in [*self.nodes.values(), *self._retired]]
        assert node_pids_alive(pids) == [], "a node outlived its test"


@contextmanager
def controlled_run(directory: Path, config: Path) -> Iterator[ControlledRun]:
    run = ControlledRun(directory, config)
    try:
        yield run
    finally:
        run.close()


def round_roles(started: Event, members: list[str]) -> dict[str, str]:
    """Each member's role in a round (from its ``round_started`` event)."""
    roles = {}
    for name in members:
        trainer = name in started["train_set"]
        witness = name in started["witnesses"]
        roles[name] = (
            "trainer+witness"
            if trainer and witness
            else "trainer"
            if trainer
            else "witness"
            if witness
            else "neither"
        )
    return roles


def live_members(console: Incarnation, nodes: Mapping[str, NodeProc]) -> list[str]:
    """Nodes that run and are not stopped (the console may not have dropped the others yet)."""
    return sorted(n for n, p in nodes.items() if p.alive and not p.stopped)


def next_round(
    console: Incarnation,
    accept: Callable[[Event], bool],
    *,
    after: int = 0,
    timeout: float = 90.0,
    what: str = "a suitable round",
) -> Event:
    """The first ``round_started`` event (from index ``after``) that ``accept`` takes."""
    deadline = time.monotonic() + timeout
    while True:
        started = console.wait_for(
            lambda e: e.get("kind") == "round_started",
            max(1.0, deadline - time.monotonic()),
            what,
            after=after,
        )
        after = console.log.events.index(started) + 1
        if accept(started):
            return started
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f}s")


def first_after(console: Incarnation, t: float, kind: str, **fields: Any) -> Event | None:
    """The first event of ``kind`` (with ``fields``) logged after monotonic time ``t``."""
    for e in console.log.of(kind, **fields):
        if e["t"] >= t:
            return e
    return None
