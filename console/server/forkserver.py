"""The console's side of ``node/forkserver.py``: the fork server as a child process, and each
node it forks as a :class:`ForkedProcess` the console signals by pid and learns the end of.

The fork server is run, never imported, here (the console imports no torch).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Protocol

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
START_TIMEOUT = 120.0  # the fork server imports torch before its first fork


def die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


class NodeProcess(Protocol):
    """What the console needs of a local node's process (``subprocess.Popen`` has it all)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


class ForkedProcess:
    """A node forked by the fork server: a real process the console signals by pid, whose end
    the fork server reports (it is the server's child, not ours). Popen's methods, same meaning.
    """

    def __init__(self, server: ForkServer, request_id: int, name: str) -> None:
        self.server = server
        self.request_id = request_id
        self.name = name
        self._pid: int | None = None
        self.returncode: int | None = None
        self._started = threading.Event()
        self._ended = threading.Event()

    @property
    def started(self) -> bool:
        return self._pid is not None

    @property
    def pid(self) -> int:
        """The node's pid; waits (bounded) while the fork server is still importing."""
        if self._pid is None and not self._started.wait(START_TIMEOUT):
            raise RuntimeError(f"{self.name} was not started within {START_TIMEOUT:.0f}s")
        if self._pid is None:
            raise RuntimeError(f"{self.name} was never started (the fork server is gone)")
        return self._pid

    def _set_started(self, pid: int) -> None:
        self._pid = pid
        self._started.set()

    def _set_ended(self, code: int) -> None:
        self.returncode = code
        self._started.set()
        self._ended.set()

    def poll(self) -> int | None:
        if self.returncode is None and self.server.gone and self._pid is not None:
            # The server's end report will not come: its death signal stopped the node.
            if not _alive(self._pid):
                self._set_ended(-signal.SIGTERM)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"{self.name} (forked)", timeout or 0.0)
            self._ended.wait(0.1 if left is None else min(left, 0.1))
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


class ForkServer:
    """``python -m node.forkserver`` as a child: asked to fork nodes, tells when they end."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] | None = None
        self.gone = False
        self._lock = threading.Lock()
        self._next_id = 0
        self._pending: dict[int, ForkedProcess] = {}
        self._by_pid: dict[int, ForkedProcess] = {}
        self._early_exits: dict[int, int] = {}
        self._stdin: IO[bytes] | None = None

    def start(self) -> ForkServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as err:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "node.forkserver"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=child_env(),
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
        self._stdin = self.process.stdin
        threading.Thread(target=self._read, name="forkserver-reader", daemon=True).start()
        log.info("started the node fork server (pid %d)", self.process.pid)
        return self

    def fork(self, name: str, argv: Sequence[str], log_path: Path) -> ForkedProcess:
        with self._lock:
            self._next_id += 1
            child = ForkedProcess(self, self._next_id, name)
            if self.gone or self._stdin is None:
                child._set_ended(1)
                return child
            self._pending[child.request_id] = child
        request = {"id": child.request_id, "name": name, "argv": list(argv), "log": str(log_path)}
        try:
            self._stdin.write((json.dumps(request) + "\n").encode())
            self._stdin.flush()
        except (OSError, ValueError):  # the server is gone (its reader marks the rest)
            with self._lock:
                self._pending.pop(child.request_id, None)
            child._set_ended(1)
        return child

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "ready" in message:
                self.ready = message["ready"]
                log.debug("fork server ready: %s", self.ready)
            elif "started" in message:
                with self._lock:
                    child = self._pending.pop(message["started"], None)
                    pid = int(message["pid"])
                    if child is None:
                        continue
                    self._by_pid[pid] = child
                    early = self._early_exits.pop(pid, None)
                child._set_started(pid)
                log.info("started %s (pid %d)", child.name, pid)
                if early is not None:
                    child._set_ended(early)
            elif "exited" in message:
                pid, code = int(message["exited"]), int(message["code"])
                with self._lock:
                    child = self._by_pid.get(pid)
                    if child is None:
                        self._early_exits[pid] = code
                        continue
                child._set_ended(code)
                if code != 0:
                    log.warning("%s (pid %d) exited with code %d", child.name, pid, code)
        with self._lock:
            self.gone = True
            pending = list(self._pending.values())
            self._pending.clear()
        for child in pending:
            child._set_ended(1)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the server (it stops its remaining nodes), wait, SIGKILL if need be."""
        process = self.process
        if process is None:
            return
        terminate(process, "the fork server", timeout + 2.0)  # it gives its nodes STOP_GRACE
        if self._stdin is not None:
            try:
                self._stdin.close()
            except OSError:
                pass


def terminate(process: subprocess.Popen[Any], what: str, timeout: float) -> None:
    """SIGTERM ``process``, wait up to ``timeout``, SIGKILL if need be; always reaped."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop in %.0fs; killing it", what, timeout)
        process.kill()
        process.wait(timeout=5)


def fork_server_available() -> bool:
    """Linux (fork, a parent-death signal), unless ``FL_FORK_SERVER=0`` asks for one
    interpreter per node."""
    if os.environ.get("FL_FORK_SERVER", "1") == "0":
        return False
    return sys.platform.startswith("linux") and hasattr(os, "fork")
