"""The local fl-node processes the console starts (``[local] spawn``) and always stops.

Children are started with a parent-death signal (Linux ``PR_SET_PDEATHSIG``), so even a
console killed with SIGKILL leaves no orphan node behind; a clean exit terminates them,
waits, and kills what does not stop in time.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

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
    def __init__(
        self, *, run_id: str, control_endpoint: str, log_dir: Path, prefix: str = "node"
    ) -> None:
        self.run_id = run_id
        self.control_endpoint = control_endpoint
        self.log_dir = log_dir
        self.prefix = prefix
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
