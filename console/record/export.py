"""``fl-console --metrics-csv PATH``: one row per round and client, for a spreadsheet or pandas.

A round's clients are those with a part in it: its trainers and witnesses, and every node
that committed, attested or reported an aggregate or metrics for it. Columns
(:data:`COLUMNS`):

- ``round``, ``epoch``, ``client``; ``role``: ``trainer``, ``witness``, ``both`` or ``none``
  (a member that only aggregated); ``accepted``: the client's result was accepted this round;
- from its commit: ``train_loss``, ``train_time``, ``samples`` and ``local_accuracy`` (the
  trained model, before aggregation, on the held-out split);
- from its aggregate: ``test_loss`` and ``accuracy`` (its evaluation of the round's
  aggregate), ``aggregate_hash`` (the first 12 hex digits);
- from its metrics report: ``update_norm``, and ``bytes_sent`` / ``bytes_received`` (the
  node's peer-to-peer totals so far, as it reports them); ``round_bytes_up`` /
  ``round_bytes_down`` (its gossip bytes for this round: pushes, relays, fetches);
  ``update_bytes`` and ``compression_ratio`` (a trainer's encoded update: its size, and raw
  fp32 bytes over it); ``duplicates`` and ``fetches`` (running counts: pushes of an update it
  already held, updates it fetched because a relay on its path died); ``epsilon`` (``[privacy]
  dp``: the privacy the node had spent by then, at the run's delta).

A value the client did not report, or one that is not finite, is an empty cell.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from console.record.records import RoundRecord, RunRecords
from transport.state import RoundView

COLUMNS = (
    "round",
    "epoch",
    "client",
    "role",
    "accepted",
    "train_loss",
    "train_time",
    "samples",
    "local_accuracy",
    "test_loss",
    "accuracy",
    "update_norm",
    "bytes_sent",
    "bytes_received",
    "round_bytes_up",
    "round_bytes_down",
    "update_bytes",
    "compression_ratio",
    "duplicates",
    "fetches",
    "aggregate_hash",
    "epsilon",
)
HASH_DIGITS = 12


def metrics_rows(records: RunRecords, rounds: Iterable[RoundView]) -> list[dict[str, Any]]:
    """The rows, by round then client id; keys are :data:`COLUMNS`."""
    rows: list[dict[str, Any]] = []
    for view in rounds:
        record = records.record(view.round)
        for client in _clients(view, record):
            rows.append(_row(view, record, client))
    return rows


def write_metrics_csv(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` with a header line; returns how many rows were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
            count += 1
    return count


def _clients(view: RoundView, record: RoundRecord) -> list[str]:
    ids = {*view.train_set, *view.witnesses, *view.commits, *view.attestations, *view.aggregates}
    ids.update(record.commits, record.aggregates, record.node_metrics)
    return sorted(ids)


def _role(view: RoundView, client: str) -> str:
    trainer, witness = client in view.train_set, client in view.witnesses
    if trainer and witness:
        return "both"
    return "trainer" if trainer else "witness" if witness else "none"


def _row(view: RoundView, record: RoundRecord, client: str) -> dict[str, Any]:
    commit = record.commits.get(client, {})
    aggregate_hash, aggregate = record.aggregates.get(client, ("", {}))
    aggregate_hash = aggregate_hash or view.aggregates.get(client, "")
    reported = record.node_metrics.get(client, {})
    ref = view.commits.get(client) or view.accepted.get(client)
    return {
        "round": view.round,
        "epoch": view.epoch,
        "client": client,
        "role": _role(view, client),
        "accepted": client in view.accepted,
        "train_loss": _number(commit.get("train_loss")),
        "train_time": _number(commit.get("train_time", reported.get("train_time"))),
        "samples": None if ref is None else ref.samples,
        "local_accuracy": _number(commit.get("local_accuracy")),
        "test_loss": _number(aggregate.get("test_loss")),
        "accuracy": _number(aggregate.get("accuracy")),
        "update_norm": _number(reported.get("update_norm")),
        "bytes_sent": _count(reported.get("bytes_sent")),
        "bytes_received": _count(reported.get("bytes_received")),
        "round_bytes_up": _count(reported.get("round_bytes_up")),
        "round_bytes_down": _count(reported.get("round_bytes_down")),
        "update_bytes": _count(reported.get("update_bytes")),
        "compression_ratio": _number(reported.get("compression_ratio")),
        "duplicates": _count(reported.get("duplicates")),
        "fetches": _count(reported.get("fetches")),
        "aggregate_hash": aggregate_hash[:HASH_DIGITS],
        "epsilon": _number(reported.get("epsilon", commit.get("epsilon"))),
    }


def _number(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _count(value: float | None) -> int | None:
    number = _number(value)
    return None if number is None else int(number)
