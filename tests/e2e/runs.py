"""A headless console as a child process, for end-to-end runs and benchmarks (the data.toml on
free ports comes from :func:`tests.factories.write_config`; fl-node children are
:class:`tests.e2e.child.Child` s)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.e2e.child import Child, console_command, node_pids_alive
from tests.e2e.helpers import read_events
from tests.factories import write_config


class HeadlessConsole(Child):
    """``fl-console CONFIG --headless`` as a child process (in the test's session), its
    output in ``RUN_DIR.out``.

    ``prefix``: a command that runs the console, e.g. ``ip netns exec NS`` to start it inside
    a network namespace (one that execs the program, so the child's pid is the console's).
    """

    def __init__(
        self, config: Path, run_dir: Path, *extra: str, prefix: Sequence[str] = ()
    ) -> None:
        self.summary = run_dir / "summary.json"
        self.events = run_dir / "events.jsonl"
        run_dir.mkdir(parents=True, exist_ok=True)
        command = [*prefix, *console_command(config, run_dir, *extra)]
        super().__init__(
            "fl-console", command, run_dir.parent / f"{run_dir.name}.out", own_session=False
        )

    def events_seen(self) -> list[dict[str, Any]]:
        """Every record of its event log so far, the recorded views included."""
        return read_events(self.events, views=True)

    def wait_for_event(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events_seen():
                if predicate(event):
                    return event
            if self.process.poll() is not None:
                raise AssertionError(
                    f"console exited ({self.process.returncode}):\n{self.output()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no matching event within {timeout}s:\n{self.output()[-3000:]}")

    def failure(self, within: float, tail: int) -> str | None:
        """Why the run went wrong, as a benchmark records it: no end within ``within`` seconds
        (the caller reaps it), or a non-zero exit with the last ``tail`` characters of its
        output; None once it exited 0."""
        code = self.process.poll()
        if code is None:
            return f"no end within {within:.0f}s (killed)"
        if code != 0:
            return f"fl-console exited {code}: {self.output()[-tail:]}"
        return None

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary.read_text())


def slow_round_config(directory: Path, **coordinator: Any) -> Path:
    """A run whose rounds train long enough (60 local epochs on synthetic data) for a fault
    injected right after a round starts to land while it is open; health checks are quick
    (2 s) so a killed node is dropped within the round. ``coordinator`` overrides keys."""
    return write_config(
        directory,
        coordinator={
            "max_round_train_time": 60.0,
            "health_timeout": 2.0,
            "heartbeat_interval": 0.4,
            **coordinator,
        },
        learning={"local_epochs": 60, "optimizer": "sgd", "learning_rate": 0.05},
        model={"hidden": [128]},
        data={"source": "synthetic", "samples": 8000, "features": 256, "partition": "iid"},
    )


def stopped_after_checkpoint(config: Path, run_dir: Path, round: int, timeout: float) -> dict:
    """A headless run stopped (SIGTERM) once the checkpoint of ``round`` is saved: it exits 1
    (not Finished) and leaves no node behind; returns its summary (for a ``--resume``)."""
    console = HeadlessConsole(config, run_dir)
    try:
        console.wait_for_event(
            lambda e: e.get("kind") == "checkpoint_saved" and e.get("round") == round,
            timeout=timeout,
        )
        console.signal(signal.SIGTERM)
        assert console.wait(30) == 1  # stopped before Finished
        summary = console.read_summary()
        assert node_pids_alive(summary["spawned_pids"]) == []
    finally:
        console.reap()
    return summary
