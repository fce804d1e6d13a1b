"""A trainer that dies in the middle of a round: the round completes without it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.e2e.child import node_pids_alive
from tests.e2e.runs import HeadlessConsole, slow_round_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_trainer_killed_mid_round_is_dropped_and_the_round_completes_without_it(
    tmp_path: Path,
) -> None:
    # Slow local training (many local epochs on synthetic data) so the kill lands mid-round.
    config = slow_round_config(tmp_path, total_rounds=4, rounds_per_epoch=4)
    console = HeadlessConsole(config, tmp_path / "run")
    try:
        started = console.wait_for_event(
            lambda e: e.get("kind") == "round_started" and e.get("round") == 2, timeout=90
        )
        victims = [t for t in started["train_set"] if t not in started["witnesses"]]
        victim = victims[0] if victims else started["train_set"][0]
        joined = console.wait_for_event(  # the console logs the process behind each id
            lambda e: e.get("kind") == "client_joined" and e.get("client_id") == victim, timeout=5
        )
        os.kill(joined["pid"], signal.SIGKILL)

        ended = console.wait_for_event(
            lambda e: e.get("kind") == "round_ended" and e.get("round") == 2, timeout=30
        )
        # finished long before max_round_train_time: the dead trainer was not waited for
        assert ended["t"] - started["t"] < 15.0
        assert victim not in ended["accepted"]
        assert ended["outcome"] == "accepted"
        drop = console.wait_for_event(
            lambda e: e.get("kind") == "client_dropped" and e.get("client_id") == victim, timeout=5
        )
        assert "heartbeat" in drop["reason"]
        assert console.wait(90) == 0
        summary = console.read_summary()
    finally:
        console.reap()
    assert summary["final_state"] == "Finished"
    assert summary["accepted_rounds"] == 4
    victim_row = next(c for c in summary["clients"] if c["id"] == victim)
    assert victim_row["status"] == "dropped"
    assert node_pids_alive(summary["spawned_pids"]) == []
