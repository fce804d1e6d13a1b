"""A long run's console holds a bounded amount per round (issue 17: RSS grew ~40 KB a round).

Rounds settled long ago keep only their row and a compressed record (``RunRecords.settle``),
and the coordinator drops the cached views of the rounds its history files hold; the round
table, attach's ``rounds_from``, the summary and the metrics CSV still have every round.
Driven in-process: the server's own coordinator on a fake clock, the nodes' reports fed to
the records as the control loop feeds them (fresh strings and dicts, as decoded off the wire).
"""

from __future__ import annotations

import dataclasses
import gc
import tracemalloc
from pathlib import Path

import pytest

from console.coordinator.events import Outcome
from console.record.export import metrics_rows
from console.server import ConsoleServer
from console.server.server import ROUNDS_OPEN_TO_REPORTS
from tests.console.coordinator.test_machine import RUN, SEED, Run, config, h
from tests.console.test_app_pilot import make_config
from transport.state import RoundOutcome, RunState

ROUNDS_PER_EPOCH = 10
# What one more round may cost the console: its row, its compressed record, the coordinator's
# own record of it (~5 KB here). Before rounds were settled it cost ~20 KB here (27 KB traced
# in a real run of four nodes).
BYTES_PER_ROUND = 8_000


def accuracy(round: int) -> float:
    return 0.5 + round / 10_000


class ServedRun(Run):
    """``Run``'s honest nodes, against a ConsoleServer (no sockets) that logs, settles and
    records views as it does serving; after each round every node reports its figures."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(config(total_rounds=10_000, rounds_per_epoch=ROUNDS_PER_EPOCH))
        base = make_config(tmp_path)
        cfg = dataclasses.replace(base, run_id=RUN, seed=SEED, coordinator=self.cfg)
        self.server = ConsoleServer(cfg, run_dir=tmp_path / "run", clock=lambda: self.now)
        self.c = self.server.coordinator

    def ok(self, outcome: Outcome) -> Outcome:
        assert outcome.ok, outcome.rejection
        self.server._after(outcome, self.now)  # events are logged, not kept (as in serving)
        return outcome

    def report(self) -> None:
        """Every live node reports on the round just decided."""
        records = self.server.records
        recent = self.c.rounds_after(self.snap().round - 2)
        view = [v for v in recent if v.outcome is not RoundOutcome.OPEN][-1]
        round = view.round
        for live in self.live():
            node = (live + ".")[:-1]  # a fresh string per message, as msgspec decodes it
            if node in view.train_set:
                records.committed(
                    node, round, {"train_loss": 1.0 / round, "train_time": 0.5, "samples": 90.0}
                )
            records.aggregated(
                node, round, "agg-" + h("x", round), {"accuracy": accuracy(round), "test_loss": 0.3}
            )
            figures = {f"figure_{i}": float(i * round) for i in range(12)}
            records.metrics(node, round, {**figures, "round_bytes_up": 1000.0 + round})

    def rounds(self, count: int) -> None:
        for _ in range(count):
            if self.state is RunState.COOLDOWN:
                self.save_checkpoint()
                self.server.history.state(self.c)  # what a checkpoint upload writes
                self.advance(64)
            if self.state is RunState.WARMUP:
                self.to_round_train()
            self.honest_round()
            self.report()
            self.ms += 16
            self.server._record_view(self.now)
            self.server.view(rounds_from=max(1, self.snap().round - 3))  # an attached screen


def retained(run: ServedRun, rounds: int) -> int:
    """Bytes the run holds more after ``rounds`` more rounds."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    run.rounds(rounds)
    gc.collect()
    return tracemalloc.get_traced_memory()[0] - before


def test_memory_per_round_stays_small_and_every_round_is_still_shown(tmp_path: Path) -> None:
    run = ServedRun(tmp_path)
    tracemalloc.start()  # from the start: what is freed later (a log line, a view) counts
    try:
        run.start_epoch()
        run.rounds(100)  # past the first history files, settled rounds, a full log tail
        grown = retained(run, 200)
    finally:
        tracemalloc.stop()
        run.server.events.close()
    per_round = grown / 200
    assert per_round < BYTES_PER_ROUND, f"the console kept {per_round:.0f} bytes per round"

    newest = run.snap().round
    records = run.server.records
    assert records.settled_through >= newest - ROUNDS_OPEN_TO_REPORTS  # old rounds compact
    assert len(records.rounds) <= ROUNDS_OPEN_TO_REPORTS + 1
    rows = run.server.view().rounds
    assert [r.round for r in rows] == list(range(1, newest + 1))  # the table has every round
    assert all(r.outcome is RoundOutcome.ACCEPTED for r in rows)
    assert rows[5].accuracy == accuracy(6) and rows[5].busiest_uplink == 1006
    assert [r.round for r in run.server.view(rounds_from=100).rounds] == [*range(100, newest + 1)]
    summary = records.summary_rounds(run.c.rounds)
    assert [s["round"] for s in summary] == list(range(1, newest + 1))
    first = summary[0]
    assert first["metrics"] == pytest.approx({"accuracy": accuracy(1), "test_loss": 0.3})
    assert first["clients"] and all(c["samples"] == 90.0 for c in first["clients"].values())
    assert first["aggregate_hashes"] == ["agg-" + h("x", 1)]
    csv = metrics_rows(records, run.c.rounds)
    assert {row["round"] for row in csv} == set(range(1, newest + 1))
    assert all(row["round_bytes_up"] == 1000 + row["round"] for row in csv)


def test_a_late_report_of_a_settled_round_changes_nothing(tmp_path: Path) -> None:
    run = ServedRun(tmp_path)
    run.start_epoch()
    run.rounds(20)
    records = run.server.records
    assert records.settled_through >= 10
    row = run.server.view().rounds[2]
    before = records.summary_rounds(run.c.rounds_after(2)[:1])
    records.aggregated("c0", 3, "late", {"accuracy": 0.0})
    records.metrics("c0", 3, {"round_bytes_up": 1e9})
    assert 3 not in records.rounds  # no record is grown back for it
    assert run.server.view().rounds[2] is row
    assert records.summary_rounds(run.c.rounds_after(2)[:1]) == before
