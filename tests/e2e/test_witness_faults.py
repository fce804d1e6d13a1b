"""Both witnesses of a round die mid-round: live nodes are elected in their place and the
round is still accepted (issue 17, "witness replacement")."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.e2e.child import node_pids_alive
from tests.e2e.runs import HeadlessConsole, slow_round_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_both_witnesses_killed_mid_round_are_replaced_and_the_round_is_accepted(
    tmp_path: Path,
) -> None:
    # 4 nodes, every node trains (train_set_size 4), 2 witnesses; slow local training so the
    # kills land while the round is open. min_clients 2: the two survivors carry the epoch.
    config = slow_round_config(
        tmp_path, total_rounds=3, rounds_per_epoch=3, min_clients=2, witness_nodes=2
    )
    console = HeadlessConsole(config, tmp_path / "run")
    try:
        started = console.wait_for_event(
            lambda e: e.get("kind") == "round_started" and e.get("round") == 2, timeout=90
        )
        victims = list(started["witnesses"])
        assert len(victims) == 2
        for victim in victims:
            joined = console.wait_for_event(  # the console logs the process behind each id
                lambda e, v=victim: e.get("kind") == "client_joined" and e.get("client_id") == v,
                timeout=5,
            )
            os.kill(joined["pid"], signal.SIGKILL)

        replaced = console.wait_for_event(
            lambda e: e.get("kind") == "witnesses_replaced" and e.get("round") == 2, timeout=30
        )
        assert sorted(replaced["gone"]) == sorted(victims)
        assert replaced["new"] and not set(replaced["new"]) & set(victims)
        ended = console.wait_for_event(
            lambda e: e.get("kind") == "round_ended" and e.get("round") == 2, timeout=30
        )
        live_trainers = sorted(t for t in started["train_set"] if t not in victims)
        assert ended["outcome"] == "accepted"
        assert sorted(ended["accepted"]) == live_trainers
        cost = ended["t"] - started["t"]
        assert cost < 30.0  # far below max_round_train_time (60 s): nothing waited it out
        seen = console.events_seen()
        r1 = [e["t"] for e in seen if e.get("kind") in ("round_started", "round_ended")][:2]
        print(f"round 1 {r1[1] - r1[0]:.1f}s; round 2, both witnesses killed: {cost:.1f}s")
        assert console.wait(90) == 0
        summary = console.read_summary()
    finally:
        console.reap()
    assert summary["final_state"] == "Finished"
    assert summary["accepted_rounds"] == 3
    rows = {c["id"]: c["status"] for c in summary["clients"]}
    assert all(rows[v] == "dropped" for v in victims)
    assert node_pids_alive(summary["spawned_pids"]) == []
