"""The local processes the console starts and always stops: fl-node processes (``[local]
spawn``) and, with ``[data] serve = true``, the data server (``python -m node.dataserver``; it
lives in ``node/`` because the console imports no torch, and is run, never imported, here).

Children are started with a parent-death signal (Linux ``PR_SET_PDEATHSIG``), so even a
console killed with SIGKILL leaves no orphan node behind; a clean exit terminates them,
waits, and kills what does not stop in time.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from transport.spec import RunSpec

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class LocalNode:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class LocalNodes:
    """``node_args(name)``: extra arguments for the node called ``name`` (its CURVE keys)."""

    def __init__(
        self,
        *,
        run_id: str,
        control_endpoint: str,
        log_dir: Path,
        prefix: str = "node",
        node_args: Callable[[str], Sequence[str]] | None = None,
    ) -> None:
        self.run_id = run_id
        self.control_endpoint = control_endpoint
        self.log_dir = log_dir
        self.prefix = prefix
        self.node_args = node_args
        self.nodes: list[LocalNode] = []

    def start(self, count: int, *, extra_args: tuple[str, ...] = ()) -> list[LocalNode]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        started = []
        for i in range(len(self.nodes), len(self.nodes) + count):
            name = f"{self.prefix}-{i}"
            started.append(self.start_one(name, extra_args=extra_args))
        return started

    def start_one(self, name: str, *, extra_args: tuple[str, ...] = ()) -> LocalNode:
        log_path = self.log_dir / f"{name}.log"
        cmd = [
            sys.executable,
            "-m",
            "node.cli",
            "--connect",
            self.control_endpoint,
            "--run-id",
            self.run_id,
            "--name",
            name,
            *(self.node_args(name) if self.node_args is not None else ()),
            *extra_args,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        with open(log_path, "ab") as out:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
        node = LocalNode(name, process, log_path)
        self.nodes.append(node)
        log.info("started %s (pid %d), log %s", name, process.pid, log_path)
        return node

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM every child, wait up to ``timeout``, SIGKILL the rest, reap all."""
        for node in self.nodes:
            if node.alive:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                node.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", node.name, timeout)
                node.process.kill()
                node.process.wait(timeout=5)

    @property
    def pids(self) -> list[int]:
        return [n.process.pid for n in self.nodes]


class DataServerError(RuntimeError):
    """The data server did not come up (its log says why)."""


class DataServerProcess:
    """``python -m node.dataserver`` as a child: started, awaited until ready, stopped.

    It binds ``bind``, follows the console's state PUB at ``state_endpoint`` and answers the
    epoch clients' ``data_request``s. Its logs go to ``log_path``; its stdout carries one line,
    ``ready ENDPOINT``, once it is bound and has loaded the data (see :meth:`wait_ready`).
    """

    def __init__(self, *, spec: RunSpec, state_endpoint: str, bind: str, log_path: Path) -> None:
        self.spec = spec
        self.state_endpoint = state_endpoint
        self.bind = bind
        self.log_path = log_path
        self.endpoint = ""  # the bound endpoint, once ready
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DataServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "node.dataserver",
            "--state",
            self.state_endpoint,
            "--bind",
            self.bind,
            "--run-id",
            self.spec.run_id,
            "--spec-json",
            json.dumps(self.spec.to_dict()),
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                cmd,
                stdout=subprocess.PIPE,
                stderr=out,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
        log.info("started the data server (pid %d), log %s", self.process.pid, self.log_path)
        return self

    def wait_ready(self, timeout: float = 60.0) -> str:
        """Block until the server says ``ready ENDPOINT``; returns the endpoint.

        Raises :class:`DataServerError` when it exits first or stays silent past ``timeout``.
        """
        process = self.process
        if process is None or process.stdout is None:
            raise DataServerError("the data server was not started")
        deadline = time.monotonic() + timeout
        line = b""
        fd = process.stdout.fileno()
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DataServerError(
                    f"the data server was not ready after {timeout:.0f}s (log: {self.log_path})"
                )
            readable, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if not readable:
                continue
            chunk = os.read(fd, 256)
            if not chunk:
                code = process.wait(timeout=5)
                raise DataServerError(
                    f"the data server exited ({code}) before it was ready: {self._last_error()}"
                )
            line += chunk
        text = line.decode("utf-8", "replace").strip()
        if not text.startswith("ready "):
            raise DataServerError(f"the data server said {text!r:.200} instead of ready")
        self.endpoint = text.removeprefix("ready ").strip()
        log.info("data server ready at %s", self.endpoint)
        return self.endpoint

    def _last_error(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return f"see {self.log_path}"
        return lines[-1] if lines else f"see {self.log_path}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout``, SIGKILL if need be; always reaped."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("the data server did not stop in %.0fs; killing it", timeout)
            process.kill()
            process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


def start_data_server(
    spec: RunSpec, *, state_endpoint: str, bind: str, log_dir: Path
) -> DataServerProcess:
    """Start the data server for ``spec`` (``spec.data.serve``); call ``wait_ready`` next."""
    return DataServerProcess(
        spec=spec, state_endpoint=state_endpoint, bind=bind, log_path=log_dir / "dataserver.log"
    ).start()
