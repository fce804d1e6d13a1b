"""Server optimisers in real runs: real fl-node processes, real sockets, real digits.

Every node steps the aggregate with the same optimiser state, so every round's aggregate hash
(which covers the weights and the optimiser's m and v) is the same on every node; the state is
checkpointed with the weights, so a run stopped after its first epoch and resumed ends on the
same weights as one that ran straight through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import load_file

from tests.e2e.child import node_pids_alive
from tests.e2e.runs import HeadlessConsole, stopped_after_checkpoint
from tests.factories import write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

ADAM = {"server_optimizer": "adam", "server_learning_rate": 0.01}
ROUNDS = {"total_rounds": 6, "rounds_per_epoch": 3}


def _run(config: Path, run_dir: Path, *extra: str, timeout: float = 150) -> dict[str, Any]:
    console = HeadlessConsole(config, run_dir, *extra)
    try:
        code = console.wait(timeout)
        assert code == 0, console.output()[-4000:]
        summary = console.read_summary()
        assert node_pids_alive(summary["spawned_pids"]) == []
        return summary
    finally:
        console.reap()


def _last_aggregate(summary: dict[str, Any]) -> str:
    last = summary["rounds"][-1]
    assert last["outcome"] == "accepted"
    (digest,) = set(last["aggregates"].values())
    return digest


def test_server_adam_run_has_one_aggregate_hash_per_round_and_resumes_to_the_same_weights(
    tmp_path: Path,
) -> None:
    straight_dir = tmp_path / "a"
    straight = _run(
        write_config(straight_dir, coordinator=ROUNDS, learning=ADAM), straight_dir / "run"
    )
    assert straight["final_state"] == "Finished" and straight["accepted_rounds"] == 6
    for r in straight["rounds"]:
        assert r["outcome"] == "accepted"
        assert len(r["aggregates"]) == 4, r  # every node reported its aggregate ...
        assert len(set(r["aggregates"].values())) == 1, r  # ... and they agree bit for bit
    assert straight["final_metrics"]["accuracy"] >= 0.3  # learns (chance: 0.1)
    # the checkpoint carries the optimiser's state beside the weights
    (weights_file,) = (straight_dir / "checkpoints" / "digits-demo").glob(
        "epoch-0001-*.safetensors"
    )
    names = set(load_file(str(weights_file)))
    assert any(n.startswith("server_optimizer.m.") for n in names)
    assert any(n.startswith("server_optimizer.v.") for n in names)

    config = write_config(tmp_path / "b", coordinator=ROUNDS, learning=ADAM)
    stopped = stopped_after_checkpoint(config, tmp_path / "b" / "run1", 3, timeout=150)
    assert 3 <= stopped["accepted_rounds"] < 6

    resumed = _run(config, tmp_path / "b" / "run2", "--resume")
    assert resumed["final_state"] == "Finished" and resumed["accepted_rounds"] == 6
    node_logs = (tmp_path / "b" / "run2" / "nodes").glob("*.log")
    assert any("loaded the checkpointed global model" in p.read_text() for p in node_logs)
    # rounds 4-6 trained by fresh processes from the checkpoint (weights + m, v): same bits
    for straight_round, resumed_round in zip(
        straight["rounds"][3:], resumed["rounds"][3:], strict=True
    ):
        assert resumed_round["round"] == straight_round["round"]
        assert resumed_round["aggregate_hashes"] == straight_round["aggregate_hashes"]
    assert _last_aggregate(resumed) == _last_aggregate(straight)
