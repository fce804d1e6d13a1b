"""``fl-console ctl`` as a child process, for the operator tests (test_ctl*.py, test_attach.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import tomlkit

from tests.factories import REPO

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
