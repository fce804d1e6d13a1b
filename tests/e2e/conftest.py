"""Fixtures for the end-to-end tests: consoles, node processes and raw clients, all cleaned up.

Every console started through :func:`consoles` is stopped, every process started through
:func:`processes` is reaped (its whole process group killed if it does not stop), and every
raw socket is closed, whatever the test did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from console.config import Config
from tests.e2e.child import NODE_ENV, Child, node_args, node_command
from tests.e2e.helpers import RawClients, ServerThread, make_config
from tests.e2e.operators import WAITING, serving
from tests.e2e.runs import HeadlessConsole
from tests.factories import write_config


class Consoles:
    """Starts in-process consoles (each on its own loop thread) and stops them all."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[ServerThread] = []

    def config(self, **overrides: Any) -> Config:
        return make_config(self.tmp_path, **overrides)

    def start(
        self, config: Config | None = None, *, run_dir: Path | None = None, resume: bool = False
    ) -> ServerThread:
        config = config or self.config()
        run_dir = run_dir or self.tmp_path / f"run-{len(self.started)}"
        console = ServerThread(config, run_dir, resume=resume)
        self.started.append(console)
        console.start()
        return console

    def close(self) -> None:
        """Stop every console started here."""
        for console in self.started:
            console.stop()


class Processes:
    """Starts child processes in their own sessions and reaps every one of them."""

    def __init__(self, tmp_path: Path) -> None:
        self.log_dir = tmp_path / "logs"
        self.started: list[Child] = []

    def start(self, name: str, command: list[str]) -> Child:
        """``command`` in its own session, its output in ``logs/NAME.log``."""
        env = {**NODE_ENV, "COLUMNS": "200"}
        proc = Child(name, command, self.log_dir / f"{name}.log", env=env)
        self.started.append(proc)
        return proc

    def node(self, name: str, control: str, run_id: str, *extra: str) -> Child:
        return self.start(name, node_command(*node_args(control, run_id, name, *extra)))

    def close(self) -> None:
        """Reap every process started here."""
        for proc in self.started:
            proc.reap()


@pytest.fixture
def consoles(tmp_path: Path) -> Iterator[Consoles]:
    with closing(Consoles(tmp_path)) as made:
        yield made


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    with closing(Processes(tmp_path)) as made:
        yield made


@pytest.fixture
def raw() -> Iterator[Callable[..., Any]]:
    with closing(RawClients()) as made:
        yield made


@pytest.fixture
def waiting_console(tmp_path: Path) -> Iterator[tuple[Path, HeadlessConsole]]:
    """A headless console process waiting for members (ctl tests): (its config, the console)."""
    config = write_config(tmp_path, coordinator=WAITING, local={"spawn": 0})
    console = HeadlessConsole(config, tmp_path / "run")
    try:
        serving(console)
        yield config, console
    finally:
        console.reap()
