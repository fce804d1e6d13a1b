"""The one child-process helper of the end-to-end tests and the benchmarks.

:class:`Child` starts a program (``fl-node``, ``fl-console`` or another) with its output in a
log file, optionally in its own session (process group) or inside a lab network namespace,
signals it (stop, cont, kill) and reaps it: :meth:`Child.reap` leaves nothing behind, whatever
state the child is in. The ``/proc`` readers below tell which processes still live.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.factories import REPO

if TYPE_CHECKING:
    from bench.netlab import NetLab

# What an ``fl-node`` child gets on top of the inherited environment: one BLAS thread each.
NODE_ENV: Mapping[str, str] = {"OMP_NUM_THREADS": "1"}


def node_args(control: str, run_id: str, name: str, *extra: str) -> list[str]:
    """``fl-node``'s arguments to join run ``run_id`` at ``control`` as ``name``."""
    return ["--connect", control, "--run-id", run_id, "--name", name, *extra]


def node_command(*args: str) -> list[str]:
    """``fl-node ARGS`` as this interpreter runs it."""
    return [sys.executable, "-m", "node.cli", *args]


def console_command(config: Path, run_dir: Path, *extra: str) -> list[str]:
    """``fl-console CONFIG --headless``, its summary and event log in ``run_dir``."""
    return [
        sys.executable,
        "-m",
        "console.cli",
        str(config),
        "--headless",
        "--summary",
        str(run_dir / "summary.json"),
        "--run-dir",
        str(run_dir),
        *extra,
    ]


class Child:
    """A child process started in the repository, stdout and stderr in ``log_path``.

    ``own_session``: start it in a new session, so a signal to its process group reaches what
    it started too, and a signal to the test's group does not reach it. ``lab``/``ns``: start
    it inside the lab namespace ``ns`` (``ip netns exec`` execs it: the pid is the program's).
    ``env``: added to the inherited environment (``PYTHONUNBUFFERED=1`` always).
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        own_session: bool = True,
        lab: NetLab | None = None,
        ns: str = "",
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.own_session = own_session
        self.stopped = False
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as out:
            options: dict[str, Any] = {
                "cwd": REPO,
                "stdout": out,
                "stderr": subprocess.STDOUT,
                "stdin": subprocess.DEVNULL,
                "env": dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
                "start_new_session": own_session,
            }
            self.started = time.monotonic()
            if lab is not None:
                self.process: subprocess.Popen[bytes] = lab.popen(ns, command, **options)
            else:
                self.process = subprocess.Popen(command, **options)  # noqa: S603 - ours

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def signal(self, sig: int) -> float:
        """Send ``sig`` to the child itself; returns the monotonic time it was sent."""
        at = time.monotonic()
        self.process.send_signal(sig)
        return at

    def kill(self) -> float:
        """SIGKILL and reap; returns the monotonic time of the kill."""
        at = self.signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        return at

    def stop(self) -> float:
        """SIGSTOP; returns the monotonic time it was sent."""
        at = self.signal(signal.SIGSTOP)
        self.stopped = True
        return at

    def cont(self) -> float:
        """SIGCONT; returns the monotonic time it was sent."""
        at = self.signal(signal.SIGCONT)
        self.stopped = False
        return at

    def _signal_all(self, sig: int) -> None:
        """``sig`` to the child's process group when it has its own, else to the child."""
        try:
            if self.own_session:
                os.killpg(self.pid, sig)
            elif self.alive:
                self.process.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    def reap(self, grace: float = 5.0) -> None:
        """SIGTERM (after a SIGCONT if stopped), SIGKILL what is left after ``grace``, wait.

        With its own session the whole process group gets the signals, so whatever the child
        left behind goes too.
        """
        if self.stopped:
            self._signal_all(signal.SIGCONT)
            self.stopped = False
        self._signal_all(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        self._signal_all(signal.SIGKILL)
        self.process.wait(timeout=10)


def start_node(
    name: str, args: Sequence[str], log_path: Path, *, lab: NetLab | None = None, ns: str = ""
) -> Child:
    """``fl-node ARGS`` in its own session (inside ``lab``'s namespace ``ns`` when given)."""
    return Child(name, node_command(*args), log_path, env=NODE_ENV, lab=lab, ns=ns)


# ----------------------------------------------------------------------------- /proc


def is_running(pid: int, marker: str = "") -> bool:
    """True when ``pid`` is a live (not zombie) process whose command line has ``marker``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and marker in cmdline


def node_pids_alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` that still run (a zombie whose parent is gone counts as dead)."""
    return [pid for pid in pids if is_running(pid)]


def kill_leftovers(pids: list[int], timeout: float = 10.0) -> None:
    """Give ``pids`` ``timeout`` seconds to end on their own, then SIGKILL those that did not."""
    deadline = time.monotonic() + timeout
    while node_pids_alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in node_pids_alive(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _processes() -> Iterator[tuple[int, str, int, int]]:
    """(pid, state, parent pid, session id) of every process, read from ``/proc/PID/stat``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().decode(errors="replace").rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # after the command: state, ppid, pgrp, session, tty_nr, ...
        yield int(entry), fields[0], int(fields[1]), int(fields[3])


def forked_by_main_thread(pid: int) -> list[int]:
    """Children of ``pid`` forked by its main thread (``/proc/PID/task/PID/children``): cheap
    enough to poll while a benchmark measures; :func:`children_of` finds them all."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """``pid``'s children and theirs (a console's fork server and the nodes it forked)."""
    children = forked_by_main_thread(pid)
    return children + [g for c in children for g in descendants(c)]


def spawned_nodes(console_pid: int) -> set[int]:
    """Pids of the live fl-node processes a console spawned: its ``node.cli`` children, or the
    children of its node fork server (``node.forkserver``; each fork is a node)."""
    nodes = set()
    for child in children_of(console_pid):
        if is_running(child, "node.cli"):
            nodes.add(child)
        elif is_running(child, "node.forkserver"):
            nodes |= {pid for pid in children_of(child) if is_running(pid)}
    return nodes


def children_of(pid: int) -> set[int]:
    """Pids of the processes whose parent is ``pid``."""
    return {child for child, _, parent, _ in _processes() if parent == pid}


def session_members(sid: int) -> set[int]:
    """Live (not zombie) processes of session ``sid``: a child's children included."""
    return {
        member
        for member, state, _, session in _processes()
        if session == sid and state not in ("Z", "X")
    }
