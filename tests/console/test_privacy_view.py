"""[privacy] dp in the console: each client's epsilon, the run's worst in the header."""

from __future__ import annotations

from console.app.cells import client_cells
from console.app.widgets.header import render_header
from console.record.records import RunRecords
from console.record.view import ConsoleView
from tests.factories import run_snapshot
from transport.state import ClientStatus, ClientView, RunState


def _snap():
    return run_snapshot(
        state=RunState.ROUND_TRAIN,
        now=10.0,
        phase_started=9.0,
        clients=(
            ClientView("n1", ClientStatus.ACTIVE, last_seen=9.5),
            ClientView("n2", ClientStatus.ACTIVE, last_seen=9.5),
            ClientView("n3", ClientStatus.ACTIVE, last_seen=9.5),
        ),
    )


def test_each_client_shows_the_epsilon_it_reported_and_the_worst_is_the_runs() -> None:
    records = RunRecords()
    records.committed("n1", 1, {"train_loss": 1.0, "epsilon": 1.25})
    records.metrics("n1", 1, {"epsilon": 1.25})
    records.metrics("n2", 2, {"epsilon": 2.5})
    records.metrics("n2", 1, {"epsilon": 1.0})  # a late report of an older round
    rows = {r.id: r for r in records.client_rows(_snap())}

    assert (rows["n1"].epsilon, rows["n2"].epsilon, rows["n3"].epsilon) == (1.25, 2.5, None)
    assert records.worst_epsilon() == 2.5
    assert "ε 2.50" in client_cells(rows["n2"])[-1][0]
    assert "ε" not in client_cells(rows["n3"])[-1][0]
    by_id = {c["id"]: c["epsilon"] for c in records.summary_clients(_snap())}
    assert by_id == {"n1": 1.25, "n2": 2.5, "n3": None}


def test_header_shows_the_worst_epsilon_at_delta_only_with_dp() -> None:
    base = ConsoleView(run=_snap(), address="tcp://127.0.0.1:5556", seq=3, clients=(), rounds=())
    dp = ConsoleView(
        run=_snap(),
        address="tcp://127.0.0.1:5556",
        seq=3,
        clients=(),
        rounds=(),
        epsilon=2.5,
        delta=1e-5,
    )
    assert "ε" not in render_header(base).plain
    assert "ε 2.50 at δ 1e-05" in render_header(dp).plain
    nothing_yet = ConsoleView(
        run=_snap(), address="", seq=0, clients=(), rounds=(), epsilon=None, delta=1e-5
    )
    assert "ε · at δ 1e-05" in render_header(nothing_yet).plain


def test_metrics_csv_rows_carry_each_nodes_epsilon() -> None:
    from console.record.export import metrics_rows
    from tests.factories import round_view

    records = RunRecords()
    records.metrics("n1", 1, {"epsilon": 1.5})
    records.metrics("n2", 1, {"bytes_sent": 10.0})
    rows = metrics_rows(records, [round_view(round=1, train_set=("n1",), witnesses=("n2",))])
    assert {r["client"]: r["epsilon"] for r in rows} == {"n1": 1.5, "n2": None}
