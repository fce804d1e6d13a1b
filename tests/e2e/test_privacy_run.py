"""DP-SGD and devices in real runs: real fl-node processes, real sockets, real digits.

A run with ``[privacy] dp = true`` and a small ``target_epsilon`` trains until no node may
train without passing it, then ends Finished with that reason; every node's epsilon is the
accountant's for its (q, sigma, steps). A node asked to train on a GPU it lacks says so at
warmup and the operator reads it in the event log.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from node.data import load_node_data
from tests.e2e.child import node_pids_alive
from tests.e2e.runs import HeadlessConsole
from tests.factories import write_config
from transport.spec import DataSpec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TARGET = 4.5  # digits on 4 nodes, sigma 1: each node can train 0 to 4 rounds within it


def _accountant_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=sigma, sample_rate=q)
    return accountant.get_epsilon(delta=delta) if steps else 0.0


def test_dp_run_stops_at_target_epsilon_and_ends_finished_with_the_reason(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path,
        coordinator={"total_rounds": 20, "rounds_per_epoch": 20},
        learning={"train_set_size": 4},
        privacy={
            "dp": True,
            "noise_multiplier": 1.0,
            "max_grad_norm": 1.0,
            "target_epsilon": TARGET,
        },
    )
    console = HeadlessConsole(config, tmp_path / "run")
    try:
        assert console.wait(240) == 0, console.output()[-4000:]
        summary = console.read_summary()
        events = console.events_seen()
        assert node_pids_alive(summary["spawned_pids"]) == []
    finally:
        console.reap()

    assert summary["final_state"] == "Finished"
    assert 1 <= summary["accepted_rounds"] < 20  # stopped by the budget, not total_rounds
    privacy = summary["privacy"]
    assert (privacy["delta"], privacy["noise_multiplier"], privacy["max_grad_norm"]) == (
        1e-5,
        1.0,
        1.0,
    )
    assert 0 < privacy["epsilon"] <= TARGET
    for r in summary["rounds"]:  # DP-SGD's noise is each trainer's own: aggregates still agree
        if r["outcome"] == "accepted":
            assert len(set(r["aggregates"].values())) == 1, r

    # every node's epsilon is the accountant's for its shard's q and the steps it trained
    clients = sorted(summary["clients"], key=lambda c: c["id"])
    assert len(clients) == 4
    for index, client in enumerate(clients):
        shard = load_node_data(DataSpec(), seed=42, base_dir=None, node_index=index, num_nodes=4)
        n = int(shard.x_train.shape[0])
        steps = client["rounds_trained"] * math.ceil(n / 32)
        expected = _accountant_epsilon(min(1.0, 32 / n), 1.0, steps, 1e-5)
        reported = client["epsilon"] or 0.0
        assert reported == pytest.approx(expected, rel=1e-9), (client, n)
        assert reported <= TARGET
        # and one more round would have passed the target
        more = _accountant_epsilon(min(1.0, 32 / n), 1.0, steps + math.ceil(n / 32), 1e-5)
        assert more > TARGET, (client, n)
    assert privacy["epsilon"] == max(c["epsilon"] or 0.0 for c in clients)

    declined = {e["client_id"] for e in events if e.get("kind") == "training_declined"}
    assert declined == {c["id"] for c in clients}
    assert all(
        "target_epsilon" in e["reason"] for e in events if e.get("kind") == "training_declined"
    )
    finished = [e for e in events if e.get("kind") == "run_finished"]
    assert len(finished) == 1 and finished[0]["reason"].startswith("no client left to train")
    to_finished = [
        e for e in events if e.get("kind") == "state_changed" and e.get("new") == "Finished"
    ]
    assert "no client left to train" in to_finished[-1]["reason"]


def test_cuda_without_a_gpu_is_a_warmup_error_the_operator_reads(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = write_config(
        tmp_path,
        coordinator={"init_min_clients": 2, "min_clients": 2, "witness_nodes": 2},
        learning={"device": "cuda"},
        local={"spawn": 2},
    )
    console = HeadlessConsole(config, tmp_path / "run")
    try:
        left = console.wait_for_event(
            lambda e: e.get("kind") == "client_left" and "no CUDA GPU" in e.get("reason", ""),
            timeout=120,
        )
        assert 'device "cuda" asked for' in left["reason"]
        assert "cannot train" in left["reason"] and '"auto" or "cpu"' in left["reason"]
        logs = list((tmp_path / "run" / "nodes").glob("*.log"))
        assert any("fl-node: cannot train" in p.read_text() for p in logs)
    finally:
        console.reap()
