"""A headless run with [data] serve = true: nodes get their shards from the console's data server.

``fl-console`` is run as a real process on free ports; it starts the data server and three
nodes, and writes the summary and the per-round, per-client metrics CSV at the end.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import REPO, write_config

NODES = 3


def _config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path,
        top={"run_id": "served-e2e", "seed": 5},
        coordinator={
            "init_min_clients": NODES,
            "waiting_for_members_extra_time": 0.0,
            "warmup_time": 60.0,
            "max_round_train_time": 30.0,
            "round_witness_time": 5.0,
            "cooldown_time": 5.0,
            "rounds_per_epoch": 2,
            "total_rounds": 3,
        },
        learning={"train_set_size": NODES},
        data={"serve": True},
        local={"spawn": NODES},
    )


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_served_run_finishes_with_shards_from_the_data_server_and_a_metrics_csv(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    summary_path, csv_path = tmp_path / "summary.json", tmp_path / "metrics.csv"
    cmd = [
        sys.executable,
        "-m",
        "console.cli",
        str(_config(tmp_path)),
        "--headless",
        "--summary",
        str(summary_path),
        "--metrics-csv",
        str(csv_path),
        "--run-dir",
        str(run_dir),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-4000:]

    summary = json.loads(summary_path.read_text())
    assert summary["final_state"] == "Finished"
    assert summary["accepted_rounds"] == 3
    accepted = [r for r in summary["rounds"] if r["outcome"] == "accepted"]
    assert len(accepted) == 3

    # Every node trained on a shard the data server sent. Epoch 1 (round 3) has the same members,
    # so the same shards: nodes keep theirs instead of asking again.
    for k in range(NODES):
        log = (run_dir / "nodes" / f"node-{k}.log").read_text()
        assert log.count("from the data server") == 1, log[-3000:]
    server_log = (run_dir / "dataserver.log").read_text()
    for k in range(NODES):
        assert f"served node-{k} its shard of" in server_log
    assert f"stopping: served {NODES} shards" in server_log  # stopped cleanly with the nodes

    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(summary["rounds"]) * NODES
    assert {(int(r["round"]), r["client"]) for r in rows} == {
        (r["round"], f"node-{k}") for r in summary["rounds"] for k in range(NODES)
    }
    for row in rows:
        assert math.isfinite(float(row["accuracy"])), row
        assert row["role"] in ("trainer", "witness", "both", "none")
    assert all(row["accepted"] == "True" for row in rows)
    assert all(int(row["samples"]) > 0 for row in rows)
