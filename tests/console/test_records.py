"""The client table's rows, built from the coordinator's snapshot and the console's records."""

from __future__ import annotations

import msgspec

from console.app.cells import client_state
from console.record.records import RunRecords
from tests.factories import round_view, run_snapshot
from transport.state import ClientStatus, ClientView, RoundOutcome, RunSnapshot, RunState


def _snapshot(state: RunState) -> RunSnapshot:
    return run_snapshot(
        state=state,
        now=10.0,
        phase_started=9.0,
        epoch=1,
        round=4,
        accepted_rounds=4,
        total_rounds=4,
        min_clients=1,
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
        msgspec.structs.replace(
            _snapshot(RunState.ROUND_TRAIN),
            clients=(ClientView("n1", ClientStatus.ACTIVE),),
        )
    )

    assert (row.bytes_in, row.bytes_out) == (300, 200)


def test_a_round_row_is_rebuilt_only_when_its_round_or_its_record_changes() -> None:
    records = RunRecords()
    view = round_view(round=3, train_set=("n1",), witnesses=("n1",), started=1.0, ended=2.0,
                      outcome=RoundOutcome.ACCEPTED)  # fmt: skip
    first = records.round_row(view)
    assert records.round_row(view) is first  # nothing changed: the same row, not rebuilt
    records.aggregated("n1", 3, "ab" * 32, {"accuracy": 0.5})
    second = records.round_row(view)
    assert second is not first and second.accuracy == 0.5
    decided_again = msgspec.structs.replace(view, ended=3.0)  # the coordinator's view changed
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


GOSSIP_COLUMNS = ("round_bytes_up", "round_bytes_down", "compression_ratio")


def _round(n: int, train_set: tuple[str, ...] = ("n1", "n2")):
    return round_view(round=n, train_set=train_set, witnesses=("n3",), started=1.0, ended=2.0,
                      outcome=RoundOutcome.ACCEPTED)  # fmt: skip


def _active(*ids: str) -> RunSnapshot:
    return msgspec.structs.replace(
        _snapshot(RunState.ROUND_TRAIN),
        clients=tuple(ClientView(i, ClientStatus.ACTIVE, last_seen=9.5) for i in ids),
    )


def test_the_round_row_names_the_busiest_uplink_and_sums_the_round_gossip() -> None:
    records = RunRecords()
    records.metrics("n1", 3, {"round_bytes_up": 500.0, "round_bytes_down": 900.0})
    records.metrics("n2", 3, {"round_bytes_up": 900.0, "round_bytes_down": 100.0})
    records.metrics("n3", 3, {"bytes_sent": 40.0})  # an older node: no round bytes
    records.metrics("n2", 4, {"round_bytes_up": 5_000.0})  # another round's bytes stay apart

    row = records.round_row(_round(3))
    assert (row.busiest_uplink, row.busiest_node, row.gossip_bytes) == (900, "n2", 1_400)
    (summary,) = records.summary_rounds((_round(3),))
    assert summary["busiest_uplink"] == {"node": "n2", "bytes": 900}
    assert summary["gossip_bytes"] == 1_400

    records.metrics("n0", 3, {"round_bytes_up": 900.0})  # a tie: the first id, every time
    row = records.round_row(_round(3))
    assert (row.busiest_uplink, row.busiest_node, row.gossip_bytes) == (900, "n0", 2_300)


def test_nodes_that_report_no_gossip_bytes_leave_the_figures_unknown_not_zero() -> None:
    from console.app.cells import CLIENT_COLUMNS, client_cells, round_cells, round_traffic

    records = RunRecords()
    records.joined("n1", "tcp://127.0.0.1:7001", 1, "host")
    records.committed("n1", 1, {"train_loss": 0.5})
    records.metrics("n1", 1, {"bytes_sent": 10.0, "bytes_received": 20.0, "update_norm": 0.1})

    (client,) = records.client_rows(_active("n1"))
    assert client.round_bytes_up is None and client.round_bytes_down is None
    assert client.compression_ratio is None
    cells = dict(zip((c.key for c in CLIENT_COLUMNS), client_cells(client), strict=True))
    assert [cells[k][0] for k in GOSSIP_COLUMNS] == ["·", "·", "·"]
    row = records.round_row(_round(1))
    assert (row.busiest_uplink, row.busiest_node, row.gossip_bytes) == (None, "", None)
    assert round_cells(row)[-1][0] == "·" and round_traffic(row) == ""
    (summary,) = records.summary_rounds((_round(1),))
    assert summary["busiest_uplink"] is None and summary["gossip_bytes"] is None
    (entry,) = records.summary_clients(_active("n1"))
    assert entry["bytes_sent_p2p"] == 10
    for key in ("round_bytes_up", "round_bytes_down", "compression_ratio", "update_bytes"):
        assert entry[key] is None, key
    assert (entry["duplicates"], entry["fetches"]) == (None, None)


def test_a_client_shows_its_last_rounds_bytes_and_its_last_compression_ratio() -> None:
    from console.app.cells import CLIENT_COLUMNS, client_cells

    records = RunRecords()
    records.joined("n1", "tcp://127.0.0.1:7001", 1, "host")
    records.metrics("n1", 1, {"round_bytes_up": 13_600.0, "round_bytes_down": 20_400.0,
                              "update_bytes": 6_800.0, "compression_ratio": 3.94,
                              "duplicates": 1.0, "fetches": 0.0})  # fmt: skip
    # round 2: not a trainer, so no update of its own; a relay on its path died
    records.metrics("n1", 2, {"round_bytes_up": 0.0, "round_bytes_down": 27_200.0,
                              "duplicates": 3.0, "fetches": 1.0})  # fmt: skip
    records.metrics("n1", 1, {"round_bytes_up": 99.0, "round_bytes_down": 99.0})  # late: ignored

    (row,) = records.client_rows(_active("n1"))
    assert (row.round_bytes_up, row.round_bytes_down, row.compression_ratio) == (0, 27_200, 3.94)
    cells = dict(zip((c.key for c in CLIENT_COLUMNS), client_cells(row), strict=True))
    assert [cells[k][0] for k in GOSSIP_COLUMNS] == ["0B", "27k", "3.9×"]
    (entry,) = records.summary_clients(_active("n1"))
    assert (entry["round_bytes_up"], entry["round_bytes_down"]) == (0, 27_200)
    assert (entry["compression_ratio"], entry["update_bytes"]) == (3.94, 6_800)
    assert (entry["duplicates"], entry["fetches"]) == (3, 1)


def test_compression_ratios_read_as_short_factors() -> None:
    from console.app.cells import ratio

    shown = [ratio(v)[0] for v in (1.0, 1.99, 3.94, 5.0, 49.7, 1_200.0)]
    assert shown == ["1.0×", "2.0×", "3.9×", "5.0×", "50×", "1.2k×"]
    assert ratio(1.0)[1] == "dim"  # no compression
    assert ratio(None) == ("·", "dim") and ratio(float("nan")) == ("·", "dim")


def test_the_round_row_and_the_summary_show_the_rate_the_trainers_trained_at() -> None:
    from console.app.cells import ROUND_COLUMNS, round_cells

    records = RunRecords()
    assert records.round_row(_round(2)).learning_rate is None  # before any commit
    records.committed("n2", 2, {"train_loss": 0.5, "learning_rate": 0.00707})
    records.committed("n1", 2, {"train_loss": 0.4, "learning_rate": 0.00707})

    row = records.round_row(_round(2))
    assert row.learning_rate == 0.00707
    cells = dict(zip((c.key for c in ROUND_COLUMNS), round_cells(row), strict=True))
    assert cells["learning_rate"][0] == "0.00707"
    (summary,) = records.summary_rounds((_round(2),))
    assert summary["learning_rate"] == 0.00707
