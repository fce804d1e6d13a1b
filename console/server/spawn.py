"""The local processes the console starts and always stops: fl-node processes (``[local]
spawn``) and, with ``[data] serve = true``, the data server (``python -m node.dataserver``; it
lives in ``node/`` because the console imports no torch, and is run, never imported, here).

Local nodes are forked by one ``python -m node.forkserver`` child (on Linux): it imports torch
and the node's modules once, then forks a node per request, so four nodes cost one interpreter
start and one torch import instead of four at once. Each node is still its own process: the
console signals it by pid, and the fork server reports when it ends (see :class:`ForkedProcess`).
Elsewhere, or with ``fork_server=False``, each node is a plain ``python -m node.cli`` child.

Children are started with a parent-death signal (Linux ``PR_SET_PDEATHSIG``), so even a
console killed with SIGKILL leaves no orphan node behind (the fork server dies with the console
and its nodes with it); a clean exit terminates them, waits, and kills what does not stop in time.
"""

from __future__ import annotations

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

from console.server.forkserver import (
    ForkedProcess,
    ForkServer,
    NodeProcess,
    child_env,
    die_with_parent,
    fork_server_available,
    terminate,
)
from transport.spec import RunSpec

log = logging.getLogger(__name__)


@dataclass
class LocalNode:
    name: str
    process: NodeProcess
    log_path: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class LocalNodes:
    """``node_args(name)``: extra arguments for the node called ``name`` (its CURVE keys).

    ``fork_server``: fork nodes from one ``node.forkserver`` child (the default where fork
    exists) instead of starting an interpreter per node. :meth:`prepare` starts that server
    early, so it imports torch while the console binds its sockets.
    """

    def __init__(
        self,
        *,
        run_id: str,
        control_endpoint: str,
        log_dir: Path,
        prefix: str = "node",
        node_args: Callable[[str], Sequence[str]] | None = None,
        fork_server: bool | None = None,
    ) -> None:
        self.run_id = run_id
        self.control_endpoint = control_endpoint
        self.log_dir = log_dir
        self.prefix = prefix
        self.node_args = node_args
        self.use_fork_server = fork_server_available() if fork_server is None else fork_server
        self.fork_server: ForkServer | None = None
        self.nodes: list[LocalNode] = []
        self._reaped: set[int] = set()  # the nodes reap() reported (by id: names may repeat)

    def prepare(self) -> None:
        """Start the fork server now (it imports torch and the node's modules, ~1-2 s)."""
        if self.use_fork_server and self.fork_server is None:
            self.fork_server = ForkServer(self.log_dir / "forkserver.log").start()

    def start(self, count: int, *, extra_args: tuple[str, ...] = ()) -> list[LocalNode]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        started = []
        for i in range(len(self.nodes), len(self.nodes) + count):
            name = f"{self.prefix}-{i}"
            started.append(self.start_one(name, extra_args=extra_args))
        return started

    def node_argv(self, name: str, extra_args: tuple[str, ...] = ()) -> list[str]:
        """The fl-node arguments of the local node ``name``."""
        return [
            "--connect",
            self.control_endpoint,
            "--run-id",
            self.run_id,
            "--name",
            name,
            *(self.node_args(name) if self.node_args is not None else ()),
            *extra_args,
        ]

    def start_one(self, name: str, *, extra_args: tuple[str, ...] = ()) -> LocalNode:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        argv = self.node_argv(name, extra_args)
        if self.use_fork_server:
            self.prepare()
            assert self.fork_server is not None
            forked = self.fork_server.fork(name, argv, log_path)
            node = LocalNode(name, forked, log_path)
            self.nodes.append(node)
            log.info("starting %s from the fork server, log %s", name, log_path)
            return node
        with open(log_path, "ab") as out:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "node.cli", *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env(),
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
        node = LocalNode(name, process, log_path)
        self.nodes.append(node)
        log.info("started %s (pid %d), log %s", name, process.pid, log_path)
        return node

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM every child, wait up to ``timeout``, SIGKILL the rest, reap all."""
        for node in self.nodes:
            if node.alive and _has_pid(node.process):
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if not _has_pid(node.process):
                continue  # never forked: the fork server's stop ends it if it comes now
            try:
                node.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", node.name, timeout)
                node.process.kill()
                node.process.wait(timeout=5)
        if self.fork_server is not None:
            self.fork_server.stop(timeout)

    def reap(self) -> list[LocalNode]:
        """The nodes that ended since the last call (each once), reaped: a node the operator
        kicked exits 3 and must not linger as a zombie while the run goes on."""
        ended = []
        for node in self.nodes:
            if id(node) in self._reaped or not _has_pid(node.process):
                continue
            if node.process.poll() is not None:
                self._reaped.add(id(node))
                ended.append(node)
        return ended

    @property
    def pids(self) -> list[int]:
        return [n.process.pid for n in self.nodes if _has_pid(n.process)]


def _has_pid(process: NodeProcess) -> bool:
    return not isinstance(process, ForkedProcess) or process.started


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
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                cmd,
                stdout=subprocess.PIPE,
                stderr=out,
                stdin=subprocess.DEVNULL,
                env=child_env(),
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
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
        terminate(process, "the data server", timeout)
        if process.stdout is not None:
            process.stdout.close()


def start_data_server(
    spec: RunSpec, *, state_endpoint: str, bind: str, log_dir: Path
) -> DataServerProcess:
    """Start the data server for ``spec`` (``spec.data.serve``); call ``wait_ready`` next."""
    return DataServerProcess(
        spec=spec, state_endpoint=state_endpoint, bind=bind, log_path=log_dir / "dataserver.log"
    ).start()
