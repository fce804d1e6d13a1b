"""A checkpoint's state stays small however long the run: settled rounds go to round-history
files once, and ``--resume`` puts the whole history back together."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from console.checkpoint import CheckpointError, record_state, write_checkpoint
from console.coordinator import STATE_VERSION, round_to_dict
from console.server import HISTORY_CHUNK, HISTORY_LAG, ConsoleServer
from console.settings import Config
from tests.console.test_app_pilot import make_config
from transport.state import ResultRef, RoundOutcome, RoundView
from transport.tensors import TensorPayload

ROUNDS = 2 * HISTORY_CHUNK + 30
WEIGHTS = np.arange(8, dtype=np.float32)
TENSORS = (TensorPayload("w", "float32", (8,), memoryview(WEIGHTS).cast("B")),)


def long_run_config(tmp_path: Path) -> Config:
    config = make_config(tmp_path)
    coordinator = dataclasses.replace(config.coordinator, total_rounds=10_000)
    return dataclasses.replace(config, coordinator=coordinator)


def long_run_state(config: Config) -> dict:
    """A saved state of a run that has decided ``ROUNDS`` rounds, all in the state itself
    (as a console from before round-history files wrote it)."""
    rounds = [
        RoundView(
            round=n,
            epoch=n // 10,
            seed=n,
            train_set=("a", "b"),
            witnesses=("a",),
            quorum=1,
            started=float(n),
            ended=n + 0.5,
            outcome=RoundOutcome.ACCEPTED,
            accepted={"a": ResultRef("ab" * 32, 10)},
        )
        for n in range(1, ROUNDS + 1)
    ]
    return {
        "version": STATE_VERSION,
        "run_id": config.run_id,
        "seed": config.seed,
        "epoch": ROUNDS // 10,
        "round": ROUNDS,
        "accepted_rounds": ROUNDS,
        "checkpoint": None,
        "rounds": [round_to_dict(v) for v in rounds],
        "kicked": [],
    }


def checkpoint(directory: Path, state: dict) -> None:
    stored = write_checkpoint(directory, epoch=1, round=ROUNDS, tensors=TENSORS, state=state)
    record_state(directory, stored, state)


def test_settled_rounds_move_to_history_files_and_resume_brings_them_all_back(
    tmp_path: Path,
) -> None:
    config = long_run_config(tmp_path)
    server = ConsoleServer(config, run_dir=tmp_path / "run")
    checkpoint(server.checkpoint_dir, long_run_state(config))
    resumed = ConsoleServer(config, run_dir=tmp_path / "run", resume=True)
    everything = resumed.coordinator.rounds
    assert len(everything) == ROUNDS

    state = resumed._state()

    assert state["history"] == ["rounds-000001-000050.json", "rounds-000051-000100.json"]
    assert [r["round"] for r in state["rounds"]] == list(range(2 * HISTORY_CHUNK + 1, ROUNDS + 1))
    assert len(state["rounds"]) >= HISTORY_LAG
    stored = json.loads((server.checkpoint_dir / state["history"][0]).read_text())["rounds"]
    assert [r["round"] for r in stored] == list(range(1, HISTORY_CHUNK + 1))
    # The next state writes no history file again and carries the same few rounds.
    again = resumed._state()
    assert again["history"] == state["history"] and again["rounds"] == state["rounds"]

    checkpoint(server.checkpoint_dir, state)
    back = ConsoleServer(config, run_dir=tmp_path / "run", resume=True)
    assert back.coordinator.rounds == everything
    assert back._state()["history"] == state["history"]  # it goes on from the same files


def test_a_missing_history_file_is_a_clear_resume_error(tmp_path: Path) -> None:
    config = long_run_config(tmp_path)
    server = ConsoleServer(config, run_dir=tmp_path / "run")
    checkpoint(server.checkpoint_dir, long_run_state(config))
    state = ConsoleServer(config, run_dir=tmp_path / "run", resume=True)._state()
    checkpoint(server.checkpoint_dir, state)
    (server.checkpoint_dir / state["history"][1]).unlink()

    with pytest.raises(CheckpointError, match="rounds-000051-000100.json: unreadable"):
        ConsoleServer(config, run_dir=tmp_path / "run", resume=True)
