"""A run's saved progress: what ``Coordinator.to_state`` writes and ``restore`` reads back.

Plain JSON-able data, enough for a new console process to resume the run: counters, the
checkpoint, the rounds (in the broadcast's form, :func:`round_to_dict`) and the banned ids
(with why; a plain kick lasts only as long as the console process).
Parsing validates everything and names what is wrong; no file I/O here (the server and
``console/server/history.py`` store it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from console.coordinator.records import Round, is_int
from transport.state import CheckpointRef, RoundOutcome, RoundView, SnapshotError

STATE_VERSION = 1


@dataclass
class Progress:
    """A run's saved progress (rounds still open when it was saved are marked abandoned)."""

    epoch: int
    round: int
    accepted_rounds: int
    checkpoint: CheckpointRef | None
    rounds: list[Round]
    banned: dict[str, str]  # id -> why

    @property
    def last_accepted(self) -> Round | None:
        return next((r for r in reversed(self.rounds) if r.outcome is RoundOutcome.ACCEPTED), None)

    def to_state(self, run_id: str, seed: int) -> dict[str, Any]:
        """The JSON-able form :func:`load_progress` reads back."""
        return {
            "version": STATE_VERSION,
            "run_id": run_id,
            "seed": seed,
            "epoch": self.epoch,
            "round": self.round,
            "accepted_rounds": self.accepted_rounds,
            "checkpoint": msgspec.to_builtins(self.checkpoint),
            "rounds": [r.as_dict() for r in self.rounds],
            "banned": self.banned,
        }


def load_progress(raw: dict[str, Any], *, run_id: str, seed: int) -> Progress:
    """Parse a saved state of run ``run_id``; ValueError names what is wrong."""
    if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
        raise ValueError(f"saved state must be a dict with version {STATE_VERSION}")
    if raw.get("run_id") != run_id:
        raise ValueError(f"saved state is for run {raw.get('run_id')!r}, not {run_id!r}")
    if raw.get("seed") != seed:
        raise ValueError(f"saved state has seed {raw.get('seed')!r}, not {seed}")
    for key in ("epoch", "round", "accepted_rounds"):
        if not is_int(raw.get(key)) or raw[key] < 0:
            raise ValueError(f"saved state: {key} must be an integer >= 0")
    rounds = [Round(round_from_dict(x)) for x in raw.get("rounds", [])]
    numbers = [r.round for r in rounds]
    if any(b <= a for a, b in zip(numbers, numbers[1:], strict=False)):
        raise ValueError("saved state: round numbers must increase")
    for r in rounds:
        if r.outcome is RoundOutcome.OPEN:  # the console stopped mid-round
            r.outcome = RoundOutcome.ABANDONED
    cp = raw.get("checkpoint")
    if cp is not None:
        if not (is_int(cp.get("epoch")) and is_int(cp.get("round"))):
            raise ValueError("saved state: checkpoint needs an integer epoch and round")
        cp = CheckpointRef(epoch=cp["epoch"], round=cp["round"], hash=str(cp["hash"]))
    return Progress(
        epoch=raw["epoch"],
        round=max([raw["round"], *numbers]),
        accepted_rounds=raw["accepted_rounds"],
        checkpoint=cp,
        rounds=rounds,
        banned=_banned(raw),
    )


def _banned(raw: dict[str, Any]) -> dict[str, str]:
    """``banned``: {id: why}. A state written before bans existed lists ``kicked`` ids, which
    were refused for good then: they stay refused, as bans."""
    banned = raw.get("banned", {})
    if not isinstance(banned, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in banned.items()
    ):
        raise ValueError("saved state: banned must map client ids to reasons")
    legacy = raw.get("kicked", [])
    if not isinstance(legacy, list):
        raise ValueError("saved state: kicked must be a list of client ids")
    return {**{str(cid): "kicked by the operator" for cid in legacy}, **banned}


def round_from_dict(raw: Any) -> RoundView:
    """Parse one round of a saved state (``to_state``); ValueError names what is wrong."""
    try:
        return RoundView.from_dict(raw)
    except SnapshotError as exc:
        raise ValueError(f"saved round is malformed: {exc}") from exc
