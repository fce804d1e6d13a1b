"""Helpers of the operator tests (test_ctl*.py, attach): ``fl-console ctl`` as a child process,
a console that waits for members, an address of this machine that is not loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from tests.e2e.runs import HeadlessConsole
from tests.factories import REPO, write_config

# A run that waits for members as long as a test needs (no spawned nodes, no health drops).
WAITING = {"init_min_clients": 2, "min_clients": 2, "health_timeout": 120.0}
CTL_TIMEOUT = 60.0  # seconds one ctl process may take, start-up included, before the test fails


def ctl(config: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    """``fl-console ctl [CONFIG] ARGS``: its exit code, stdout and stderr."""
    command = [sys.executable, "-m", "console.cli", "ctl"]
    command += [str(config)] if config is not None else []
    return subprocess.run(  # noqa: S603 - our own command
        [*command, *args], capture_output=True, text=True, timeout=CTL_TIMEOUT, cwd=REPO
    )


def ctl_json(config: Path | None, *args: str) -> tuple[int, dict[str, Any]]:
    """``fl-console ctl [CONFIG] ARGS --json``: (exit code, the JSON object it printed)."""
    done = ctl(config, *args, "--json")
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, f"--json printed {len(lines)} lines:\n{done.stdout}\n{done.stderr}"
    return done.returncode, json.loads(lines[0])


def control_endpoint(config: Path) -> str:
    doc = tomlkit.parse(config.read_text())
    return f"tcp://127.0.0.1:{doc['server']['control_port']}"


def run_id_of(config: Path) -> str:
    return str(tomlkit.parse(config.read_text())["run_id"])


def serving(console: HeadlessConsole) -> None:
    console.wait_for_event(lambda e: "serving run" in e.get("text", ""), timeout=60)


def non_loopback_ipv4() -> str | None:
    """An address of this machine that is not loopback (where the test can reach itself)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


@contextmanager
def reached_from_afar(tmp_path: Path) -> Iterator[tuple[Path, tuple[str, ...], str]]:
    """A waiting console bound on every interface, without CURVE, and the ctl arguments that
    reach it from this machine's non-loopback address: (config, ``--connect ... --run-id ...``,
    that address). Skips where the machine has no such address."""
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    config = write_config(
        tmp_path, coordinator=WAITING, local={"spawn": 0}, server={"host": "0.0.0.0"}
    )
    console = HeadlessConsole(config, tmp_path / "run")
    try:
        serving(console)
        port = tomlkit.parse(config.read_text())["server"]["control_port"]
        yield (
            config,
            ("--connect", f"tcp://{address}:{port}", "--run-id", run_id_of(config)),
            address,
        )
    finally:
        console.reap()
