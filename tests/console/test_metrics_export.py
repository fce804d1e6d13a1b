"""--metrics-csv: one row per round and client, built from the console's records."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from console.record.export import COLUMNS, metrics_rows, write_metrics_csv
from console.record.records import RunRecords
from tests.factories import round_view
from transport.state import ResultRef, RoundOutcome, RoundView

H1, H2 = "a" * 64, "b" * 64
AGG = "c" * 64


def _records() -> tuple[RunRecords, tuple[RoundView, ...]]:
    records = RunRecords()
    for node in ("n1", "n2", "n3"):
        records.joined(node, f"tcp://127.0.0.1:700{node[-1]}", 1, "host")
    records.committed("n1", 1, {"train_loss": 0.5, "train_time": 0.2, "local_accuracy": 0.7})
    records.committed("n2", 1, {"train_loss": float("nan"), "train_time": 0.3})
    for node, accuracy in (("n1", 0.8), ("n2", 0.8), ("n3", 0.8)):
        records.aggregated(node, 1, AGG, {"test_loss": 0.4, "accuracy": accuracy})
    records.metrics("n1", 1, {"update_norm": 1.5, "bytes_sent": 100.0, "bytes_received": 50.0,
                              "round_bytes_up": 80.0, "round_bytes_down": 30.0,
                              "update_bytes": 20.0, "compression_ratio": 3.9,
                              "duplicates": 2.0, "fetches": 1.0})  # fmt: skip
    records.metrics("n3", 1, {"bytes_sent": 0.0, "bytes_received": 200.0})
    round1 = round_view(
        train_set=("n1", "n2"),
        witnesses=("n1", "n3"),
        quorum=2,
        ended=1.0,
        outcome=RoundOutcome.ACCEPTED,
        commits={"n1": ResultRef(H1, 40), "n2": ResultRef(H2, 60)},
        attestations={"n1": {"n1": H1, "n2": H2}, "n3": {"n1": H1}},
        accepted={"n1": ResultRef(H1, 40)},
        aggregates={"n1": AGG, "n2": AGG, "n3": AGG},
    )
    round2 = round_view(
        round=2, seed=2, train_set=("n3",), witnesses=("n2",), started=1.0,
        outcome=RoundOutcome.NO_QUORUM,
    )  # fmt: skip
    return records, (round1, round2)


def test_one_row_per_round_and_client_with_roles_and_acceptance() -> None:
    records, rounds = _records()
    rows = metrics_rows(records, rounds)
    assert [(r["round"], r["client"]) for r in rows] == [
        (1, "n1"),
        (1, "n2"),
        (1, "n3"),
        (2, "n2"),
        (2, "n3"),
    ]
    by = {(r["round"], r["client"]): r for r in rows}
    assert [by[1, c]["role"] for c in ("n1", "n2", "n3")] == ["both", "trainer", "witness"]
    assert [by[1, c]["accepted"] for c in ("n1", "n2", "n3")] == [True, False, False]
    assert (by[2, "n2"]["role"], by[2, "n3"]["role"]) == ("witness", "trainer")
    n1 = by[1, "n1"]
    assert n1["samples"] == 40 and n1["train_loss"] == 0.5 and n1["local_accuracy"] == 0.7
    assert (n1["test_loss"], n1["accuracy"], n1["update_norm"]) == (0.4, 0.8, 1.5)
    assert (n1["bytes_sent"], n1["bytes_received"]) == (100, 50)
    assert n1["aggregate_hash"] == AGG[:12]
    assert by[1, "n2"]["samples"] == 60 and by[1, "n2"]["train_loss"] is None  # NaN: empty
    assert by[1, "n3"]["samples"] is None and by[1, "n3"]["bytes_received"] == 200
    assert by[2, "n3"]["accuracy"] is None and by[2, "n3"]["aggregate_hash"] == ""


def test_the_csv_has_a_header_and_empty_cells_for_missing_values(tmp_path: Path) -> None:
    records, rounds = _records()
    path = tmp_path / "out" / "metrics.csv"
    assert write_metrics_csv(path, metrics_rows(records, rounds)) == 5
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        table = list(reader)
    assert len(table) == 5
    first = table[0]
    assert (first["round"], first["client"], first["accepted"]) == ("1", "n1", "True")
    assert math.isclose(float(first["accuracy"]), 0.8)
    assert table[1]["train_loss"] == "" and table[3]["accuracy"] == ""


def test_gossip_bytes_and_compression_have_columns_empty_for_nodes_that_do_not_say(
    tmp_path: Path,
) -> None:
    records, rounds = _records()
    by = {(r["round"], r["client"]): r for r in metrics_rows(records, rounds)}
    n1, n3 = by[1, "n1"], by[1, "n3"]
    assert (n1["round_bytes_up"], n1["round_bytes_down"], n1["update_bytes"]) == (80, 30, 20)
    assert (n1["compression_ratio"], n1["duplicates"], n1["fetches"]) == (3.9, 2, 1)
    new = ("round_bytes_up", "round_bytes_down", "update_bytes", "compression_ratio")
    assert all(n3[k] is None for k in (*new, "duplicates", "fetches"))  # an older node
    path = tmp_path / "metrics.csv"
    write_metrics_csv(path, metrics_rows(records, rounds))
    with path.open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert (table[0]["round_bytes_up"], table[0]["compression_ratio"]) == ("80", "3.9")
    assert table[2]["round_bytes_up"] == "" and table[2]["compression_ratio"] == ""
