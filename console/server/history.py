"""Round history beside the checkpoints, so a checkpoint's state stays small however long the run.

A checkpoint's coordinator state keeps only the recent rounds; settled ones (older than the
last ``HISTORY_LAG``, which may still change: late aggregates) are written once, in files of
``HISTORY_CHUNK`` rounds (``rounds-000001-000020.json``, ...) that the state lists under
``history``. ``--resume`` reads them back in front of the state's own rounds. Each file is
written atomically before any state that names it, so a crash in between leaves an unnamed
file that the next write replaces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from console.coordinator import Coordinator, round_to_dict
from console.server.checkpoint import CheckpointError, read_round_history, write_round_history

HISTORY_CHUNK = 20  # rounds per round-history file
HISTORY_LAG = 4  # the most recent rounds stay in the state itself


class RoundHistory:
    """The history files of one run's checkpoint directory: their names and the last round."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.names: list[str] = []  # oldest first
        self.through = 0  # the last round they hold

    def restore(self, state: dict[str, Any]) -> dict[str, Any]:
        """A saved state with the rounds of its history files put back in front."""
        names = state.get("history", [])
        if not names:
            return state
        if not isinstance(names, list):
            raise CheckpointError(f"{self.directory}: saved state's history is not a list")
        rounds = read_round_history(self.directory, names)
        self.names = list(names)
        self.through = max((r.get("round", 0) for r in rounds), default=0)
        return {**state, "rounds": [*rounds, *state.get("rounds", [])]}

    def state(self, coordinator: Coordinator) -> dict[str, Any]:
        """The coordinator's state for a checkpoint: recent rounds in it, settled ones in history
        files (written once each), so writing it costs the same at round 10 and round 10,000."""
        recent = coordinator.rounds_after(self.through)
        settled = recent[: max(0, len(recent) - HISTORY_LAG)]
        while len(settled) >= HISTORY_CHUNK:
            chunk, settled = settled[:HISTORY_CHUNK], settled[HISTORY_CHUNK:]
            self.names.append(
                write_round_history(self.directory, [round_to_dict(v) for v in chunk])
            )
            self.through = chunk[-1].round
        coordinator.compact(self.through)  # the files hold them now: no cached copies
        state = coordinator.to_state(since=self.through)
        if self.names:
            state["history"] = list(self.names)
        return state
