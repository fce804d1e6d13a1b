"""The run learns: real fl-node processes, real sockets, real digits.

These start a headless console that spawns its own nodes, exactly as a user does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.child import node_pids_alive
from tests.e2e.runs import HeadlessConsole, stopped_after_checkpoint
from tests.factories import write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _run(config: Path, run_dir: Path, *extra: str, timeout: float = 150) -> dict:
    console = HeadlessConsole(config, run_dir, *extra)
    try:
        code = console.wait(timeout)
        assert code == 0, console.output()[-4000:]
        summary = console.read_summary()
        assert node_pids_alive(summary["spawned_pids"]) == []
        return summary
    finally:
        console.reap()


def test_default_job_learns_digits_and_every_node_holds_the_same_model(tmp_path: Path) -> None:
    config = write_config(tmp_path, coordinator={"total_rounds": 12, "rounds_per_epoch": 6})
    summary = _run(config, tmp_path / "run")

    assert summary["final_state"] == "Finished"
    assert summary["accepted_rounds"] == 12
    rounds = summary["rounds"]
    assert [r["outcome"] for r in rounds] == ["accepted"] * 12
    for r in rounds:
        assert len(r["accepted"]) >= 1
        # every live node aggregated exactly the accepted set to the same weights
        assert len(r["aggregates"]) == 4, r
        assert len(set(r["aggregates"].values())) == 1, r
    assert summary["final_metrics"]["accuracy"] >= 0.90
    assert summary["checkpoint"]["round"] == 12
    assert (tmp_path / "checkpoints" / "digits-demo" / "latest.json").exists()
    trained = [c["rounds_trained"] for c in summary["clients"]]
    assert sum(trained) >= 12


def test_run_stopped_after_its_first_epoch_resumes_to_the_same_rounds(tmp_path: Path) -> None:
    settings = {"coordinator": {"total_rounds": 10, "rounds_per_epoch": 5}}
    straight = _run(write_config(tmp_path / "a", **settings), tmp_path / "a" / "run")

    config = write_config(tmp_path / "b", **settings)
    stopped = stopped_after_checkpoint(config, tmp_path / "b" / "run1", 5, timeout=120)
    assert 5 <= stopped["accepted_rounds"] < 10

    resumed = _run(config, tmp_path / "b" / "run2", "--resume")
    assert resumed["final_state"] == "Finished"
    assert resumed["accepted_rounds"] == straight["accepted_rounds"] == 10
    # the resumed run kept the checkpointed history (epoch 0's five rounds) and went on from it
    first_epoch = [r for r in resumed["rounds"] if r["epoch"] == 0]
    assert [r["outcome"] for r in first_epoch] == ["accepted"] * 5
    assert all(r["epoch"] >= 1 for r in resumed["rounds"][5:])
    node_logs = (tmp_path / "b" / "run2" / "nodes").glob("*.log")
    assert any("loaded the checkpointed global model" in p.read_text() for p in node_logs)
    assert resumed["final_metrics"]["accuracy"] >= straight["final_metrics"]["accuracy"] - 0.03


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    console = HeadlessConsole(config, tmp_path / "run", "--resume")
    try:
        assert console.wait(60) == 2
        assert "no checkpoint" in console.output()
    finally:
        console.reap()
