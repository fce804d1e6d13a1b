"""The client table's rows, built from the coordinator's snapshot and the console's records."""

from __future__ import annotations

import dataclasses

from console.app.cells import client_state
from console.records import RunRecords
from transport.state import ClientStatus, ClientView, RunSnapshot, RunState


def _snapshot(state: RunState) -> RunSnapshot:
    return RunSnapshot(
        run_id="r",
        state=state,
        now=10.0,
        phase_started=9.0,
        deadline=None,
        epoch=1,
        round=4,
        epoch_rounds=0,
        accepted_rounds=4,
        total_rounds=4,
        rounds_per_epoch=2,
        init_min_clients=2,
        min_clients=1,
        pending_pause=False,
        clients=(
            ClientView("n1", ClientStatus.PENDING, last_seen=9.5),
            ClientView("n2", ClientStatus.DROPPED, last_seen=3.0, drop_reason="silent"),
        ),
    )


def test_live_clients_of_a_finished_run_read_finished_not_pending() -> None:
    records = RunRecords()
    for node in ("n1", "n2"):
        records.joined(node, f"tcp://127.0.0.1:700{node[-1]}", 1, "host")

    waiting = {r.id: r for r in records.client_rows(_snapshot(RunState.WAITING_FOR_MEMBERS))}
    finished = {r.id: r for r in records.client_rows(_snapshot(RunState.FINISHED))}

    assert client_state(waiting["n1"]) == "pending"
    assert client_state(finished["n1"]) == "finished"
    assert waiting["n1"].heartbeat_age == 0.5
    assert finished["n1"].heartbeat_age is None  # no heartbeat is due after the run
    # a dropped client stays dropped, whatever the run's state
    assert client_state(finished["n2"]) == "dropped"
    assert finished["n2"].heartbeat_age is None


def test_bytes_each_way_are_kept_per_client() -> None:
    records = RunRecords()
    records.joined("n1", "tcp://127.0.0.1:7001", 1, "host")
    records.bytes_in("n1", 300)
    records.bytes_out("n1", 120)
    records.bytes_out("n1", 80)

    (row,) = records.client_rows(
        dataclasses.replace(
            _snapshot(RunState.ROUND_TRAIN),
            clients=(ClientView("n1", ClientStatus.ACTIVE),),
        )
    )

    assert (row.bytes_in, row.bytes_out) == (300, 200)


def test_a_round_row_is_rebuilt_only_when_its_round_or_its_record_changes() -> None:
    from transport.state import RoundOutcome, RoundView

    records = RunRecords()
    view = RoundView(round=3, epoch=0, seed=1, train_set=("n1",), witnesses=("n1",), quorum=1,
                     started=1.0, ended=2.0, outcome=RoundOutcome.ACCEPTED)  # fmt: skip
    first = records.round_row(view)
    assert records.round_row(view) is first  # nothing changed: the same row, not rebuilt
    records.aggregated("n1", 3, "ab" * 32, {"accuracy": 0.5})
    second = records.round_row(view)
    assert second is not first and second.accuracy == 0.5
    decided_again = dataclasses.replace(view, ended=3.0)  # the coordinator's view changed
    assert records.round_row(decided_again).duration == 2.0


def test_refused_pushes_a_node_reports_are_counted_once_and_shown_in_its_row() -> None:
    from console.app.cells import client_cells

    records = RunRecords()
    records.joined("n1", "tcp://127.0.0.1:7001", 1, "host")
    assert records.gossip_refused("n1", 0) == 0
    assert records.gossip_refused("n1", 3) == 3
    assert records.gossip_refused("n1", 3) == 0  # the same count again: nothing new
    assert records.gossip_refused("n1", 1) == 1  # a restarted node counts from 0
    assert records.gossip_refused("stranger", 5) == 0  # not a client: nothing kept
    row = records.client_rows(_snapshot(RunState.WAITING_FOR_MEMBERS))[0]
    assert row.gossip_refused == 1
    assert client_cells(row)[-1][0] == "refused 1 push"
