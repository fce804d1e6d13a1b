"""Helpers for end-to-end runs: a headless console as a child, fl-node children (the data.toml
on free ports comes from :func:`tests.factories.write_config`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tests.factories import REPO
from tests.factories import write_config as write_config  # bench/round_bench.py imports it here

if TYPE_CHECKING:
    from bench.netlab import NetLab


class HeadlessConsole:
    """``fl-console CONFIG --headless`` as a child process, always reaped.

    ``prefix``: a command that runs the console, e.g. ``ip netns exec NS`` to start it inside
    a network namespace (one that execs the program, so the child's pid is the console's).
    """

    def __init__(
        self, config: Path, run_dir: Path, *extra: str, prefix: Sequence[str] = ()
    ) -> None:
        self.summary = run_dir / "summary.json"
        self.events = run_dir / "events.jsonl"
        self.output = run_dir.parent / f"{run_dir.name}.out"
        run_dir.mkdir(parents=True, exist_ok=True)
        self._out = open(self.output, "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "console.cli",
                str(config),
                "--headless",
                "--summary",
                str(self.summary),
                "--run-dir",
                str(run_dir),
                *extra,
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def events_seen(self) -> list[dict[str, Any]]:
        if not self.events.exists():
            return []
        out = []
        for line in self.events.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written right now
        return out

    def wait_for_event(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events_seen():
                if predicate(event):
                    return event
            if self.process.poll() is not None:
                raise AssertionError(f"console exited ({self.process.returncode}):\n{self.text()}")
            time.sleep(0.05)
        raise AssertionError(f"no matching event within {timeout}s:\n{self.text()[-3000:]}")

    def text(self) -> str:
        self._out.flush()
        return self.output.read_text(errors="replace")

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary.read_text())

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._out.close()


def node_pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        status = Path(f"/proc/{pid}/status")
        if status.exists() and "State:\tZ" in status.read_text():
            continue  # a zombie is dead, just not reaped by its (gone) parent
        alive.append(pid)
    return alive


class FlNode:
    """``fl-node`` as a child process (inside a lab namespace when given one), its output in a
    log file, always reaped."""

    def __init__(
        self, log: Path, args: list[str], *, lab: NetLab | None = None, ns: str = ""
    ) -> None:
        """``args``: fl-node's arguments; ``log``: where its output goes."""
        self.log = log
        self._out: IO[bytes] = open(log, "wb")  # noqa: SIM115 - closed in close()
        self.started = time.monotonic()
        command = [sys.executable, "-m", "node.cli", *args]
        options: dict[str, Any] = {
            "stdout": self._out,
            "stderr": subprocess.STDOUT,
            "stdin": subprocess.DEVNULL,
            "cwd": REPO,
            "env": dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"),
        }
        if lab is not None:
            self.process = lab.popen(ns, command, **options)
        else:
            self.process = subprocess.Popen(command, **options)

    def wait(self, timeout: float) -> tuple[int, float]:
        """(exit code, seconds it ran)."""
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - self.started

    def text(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._out.close()


class LabNode(FlNode):
    """``fl-node`` in the lab namespace ``ns``."""

    def __init__(self, lab: NetLab, ns: str, log: Path, args: list[str]) -> None:
        super().__init__(log, args, lab=lab, ns=ns)
