"""The Textual operator console. ``console/cli.py`` calls :func:`run_app` / :func:`run_replay`.

Textual is imported only when one of them runs, so ``fl-console --check`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from console.config import Config


def run_app(config: Config, *, spawn: int, run_dir: Path, resume: bool = False) -> int:
    """The live console: server + coordinator on Textual's loop, ``spawn`` local nodes.

    Returns 0 after a quit, 2 when the server could not start, 1 after a crash.
    """
    from console.app.app import ConsoleApp
    from console.app.backend import LiveBackend

    backend = LiveBackend(config, run_dir=run_dir, spawn=spawn, resume=resume)
    app = ConsoleApp(backend)
    app.run()
    return app.return_code or 0


def run_replay(path: Path) -> int:
    """``fl-console --replay run/events.jsonl``: the same screen, driven by a recording."""
    from rich.console import Console

    from console.app.app import ConsoleApp
    from console.record.replay import ReplayBackend, ReplayError, load_recording
    from transport.exit_codes import ExitCode

    try:
        recording = load_recording(path)
    except ReplayError as exc:
        Console(stderr=True).print(f"fl-console: {exc}", markup=False, highlight=False)
        return ExitCode.USAGE
    app = ConsoleApp(ReplayBackend(recording))
    app.run()
    return app.return_code or 0


__all__ = ["run_app", "run_replay"]
