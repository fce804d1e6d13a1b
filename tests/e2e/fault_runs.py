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
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tomlkit

from tests.e2e.child import (
    NODE_ENV,
    Child,
    console_command,
    node_args,
    node_command,
    node_pids_alive,
)
from tests.factories import write_config

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


class Incarnation(Child):
    """One console process of the run: ``fl-console CONFIG --headless --spawn 0``, in the
    test's session, its output in ``console-NUMBER.out``."""

    def __init__(
        self,
        number: int,
        directory: Path,
        config: Path,
        *,
        resume: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.number = number
        self.run_dir = directory / f"console-{number}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = EventTail(self.run_dir / "events.jsonl")
        extra = ["--spawn", "0", *(["--resume"] if resume else [])]
        super().__init__(
            f"console-{number}",
            console_command(config, self.run_dir, *extra),
            directory / f"console-{number}.out",
            env={**NODE_ENV, **(env or {})},
            own_session=False,
        )

    @property
    def summary_path(self) -> Path:
        return self.run_dir / "summary.json"

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

    def wait_for_state(self, state: str, timeout: float, *, after: int = 0) -> Event:
        """The first ``state_changed`` into ``state`` (at index >= ``after``)."""
        return self.wait_for(
            lambda e: e.get("kind") == "state_changed" and e.get("new") == state,
            timeout,
            state,
            after=after,
        )

    def kill(self) -> float:
        at = super().kill()
        self.log.poll()
        return at

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
        self._checkpoints_aside = self.checkpoint_dir.with_name(self.checkpoint_dir.name + ".aside")
        self.incarnations: list[Incarnation] = []
        self.nodes: dict[str, Child] = {}
        self._retired: list[Child] = []

    # -- the console

    @property
    def console(self) -> Incarnation:
        return self.incarnations[-1]

    def start_console(
        self, *, resume: bool = False, env: Mapping[str, str] | None = None
    ) -> Incarnation:
        incarnation = Incarnation(
            len(self.incarnations) + 1, self.directory, self.config, resume=resume, env=env
        )
        self.incarnations.append(incarnation)
        return incarnation

    # -- nodes

    def start_node(self, name: str, *extra: str) -> Child:
        """``fl-node --connect ... --name NAME``; a node of that name must not be running."""
        old = self.nodes.get(name)
        if old is not None:
            assert not old.alive, f"{name} is still running"
            self._retired.append(old)
        log_path = self.directory / "nodes" / f"{name}.{len(self._retired)}.log"
        args = node_args(self.control, self.run_id, name, *extra)
        node = Child(name, node_command(*args), log_path, env=NODE_ENV)
        self.nodes[name] = node
        return node

    # -- the checkpoint disk

    def fail_checkpoint_writes(self, *, after: int = 0) -> Event:
        """Put a file where the checkpoint directory was (moved aside), wait for the console's
        Cooldown (from event ``after``) and return its failed checkpoint write in it."""
        self.checkpoint_dir.rename(self._checkpoints_aside)
        self.checkpoint_dir.write_text("not a directory")
        cooldown = self.console.wait_for_state("Cooldown", 60, after=after)
        return self.console.wait_for(
            lambda e: e.get("kind") == "checkpoint" and "write failed" in e.get("text", ""),
            60,
            "a failed checkpoint write in Cooldown",
            after=self.console.log.events.index(cooldown),
        )

    def mend_checkpoint_dir(self) -> None:
        """Undo :meth:`fail_checkpoint_writes`: the directory back, with what it held."""
        self.checkpoint_dir.unlink()
        self._checkpoints_aside.rename(self.checkpoint_dir)

    def start_nodes(self, count: int, prefix: str = "node") -> list[Child]:
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
                incarnation.kill()
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


def live_members(console: Incarnation, nodes: Mapping[str, Child]) -> list[str]:
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
