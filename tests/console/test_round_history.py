"""A checkpoint's state stays small however long the run: settled rounds go to round-history
files once, and ``--resume`` puts the whole history back together."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from console.config import Config
from console.coordinator import STATE_VERSION, round_to_dict
from console.server import ConsoleServer
from console.server.checkpoint import CheckpointError, history_name, record_state, write_checkpoint
from console.server.history import HISTORY_CHUNK, HISTORY_LAG
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
        "banned": {},
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

    state = resumed.history.state(resumed.coordinator)

    files = (ROUNDS - HISTORY_LAG) // HISTORY_CHUNK
    archived = files * HISTORY_CHUNK
    assert state["history"] == [
        history_name(1 + i * HISTORY_CHUNK, (i + 1) * HISTORY_CHUNK) for i in range(files)
    ]
    assert [r["round"] for r in state["rounds"]] == list(range(archived + 1, ROUNDS + 1))
    assert HISTORY_LAG <= len(state["rounds"]) < HISTORY_LAG + HISTORY_CHUNK
    stored = json.loads((server.checkpoint_dir / state["history"][0]).read_text())["rounds"]
    assert [r["round"] for r in stored] == list(range(1, HISTORY_CHUNK + 1))
    # The next state writes no history file again and carries the same few rounds.
    again = resumed.history.state(resumed.coordinator)
    assert again["history"] == state["history"] and again["rounds"] == state["rounds"]

    checkpoint(server.checkpoint_dir, state)
    back = ConsoleServer(config, run_dir=tmp_path / "run", resume=True)
    assert back.coordinator.rounds == everything
    assert (
        back.history.state(back.coordinator)["history"] == state["history"]
    )  # it goes on from the same files


def test_a_missing_history_file_is_a_clear_resume_error(tmp_path: Path) -> None:
    config = long_run_config(tmp_path)
    server = ConsoleServer(config, run_dir=tmp_path / "run")
    checkpoint(server.checkpoint_dir, long_run_state(config))
    resumed = ConsoleServer(config, run_dir=tmp_path / "run", resume=True)
    state = resumed.history.state(resumed.coordinator)
    checkpoint(server.checkpoint_dir, state)
    (server.checkpoint_dir / state["history"][1]).unlink()

    with pytest.raises(CheckpointError, match=f"{state['history'][1]}: unreadable"):
        ConsoleServer(config, run_dir=tmp_path / "run", resume=True)


def test_a_saved_round_is_every_field_of_its_view_and_reads_back_the_same() -> None:
    from console.coordinator import round_from_dict

    view = RoundView(
        round=7,
        epoch=1,
        seed=3,
        train_set=("a", "b"),
        witnesses=("b",),
        quorum=1,
        started=1.0,
        ended=2.0,
        outcome=RoundOutcome.ACCEPTED,
        commits={"a": ResultRef("aa" * 32, 5), "b": ResultRef("bb" * 32, 6)},
        attestations={"b": {"a": "aa" * 32, "b": "bb" * 32}},
        accepted={"a": ResultRef("aa" * 32, 5)},
        aggregates={"a": "cc" * 32},
    )
    saved = round_to_dict(view)
    assert set(saved) == set(RoundView.__struct_fields__)
    assert round_from_dict(json.loads(json.dumps(saved))) == view
