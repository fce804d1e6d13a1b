"""Fixed, fake ConsoleSnapshots for the snapshot tests: no sockets, no clock, fixed ids.

Times are on a frozen console clock (``NOW``); heartbeat ages and the countdown come from
the snapshot itself, so the screen is the same on every run.
"""

from __future__ import annotations

from console.record.eventlog import LogLine
from console.record.view import ClientRow, ConsoleView, RoundRow, WitnessRow
from tests.factories import run_snapshot
from transport.state import (
    CheckpointRef,
    ClientStatus,
    ClientView,
    RoundOutcome,
    RunSnapshot,
    RunState,
)

NOW = 1000.0
START = 900.0
ADDRESS = "tcp://127.0.0.1:5556"


def _h(seed: str) -> str:
    """A fixed fake model hash."""
    import hashlib

    return hashlib.sha256(seed.encode()).hexdigest()


DEMO_RUN = dict(  # data.toml's demo run on the frozen clock, 4s into WaitingForMembers
    run_id="digits-demo", state=RunState.WAITING_FOR_MEMBERS, now=NOW, phase_started=NOW - 4.0,
    total_rounds=20, rounds_per_epoch=5, init_min_clients=4,
)  # fmt: skip


def _run(**fields: object) -> RunSnapshot:
    return run_snapshot(**{**DEMO_RUN, **fields})


def _log(*lines: tuple[float, str, str] | tuple[float, str, str, str]) -> tuple[LogLine, ...]:
    return tuple(LogLine(START + t, kind, text, *rest) for t, kind, text, *rest in lines)


# ---------------------------------------------------------------------- waiting


def waiting_view() -> ConsoleView:
    """WaitingForMembers: 2 clients pending of the 4 the first epoch needs."""
    views = tuple(
        ClientView(f"node-{i}", ClientStatus.PENDING, f"tcp://127.0.0.1:4100{i}", True, NOW - 0.3)
        for i in range(2)
    )
    rows = tuple(
        ClientRow(
            id=f"node-{i}",
            address=f"tcp://127.0.0.1:4100{i}",
            status="pending",
            stage="waiting for epoch",
            role="",
            heartbeat_age=0.3 + i * 0.2,
            bytes_in=412,
            bytes_out=2_310,
        )
        for i in range(2)
    )
    return ConsoleView(
        run=_run(clients=views),
        address=ADDRESS,
        seq=7,
        clients=rows,
        rounds=(),
        log=_log(
            (
                0.0,
                "server",
                f"serving run 'digits-demo': control {ADDRESS}, state tcp://127.0.0.1:5555",
            ),
            (2.1, "client_joined", "node-0 joined"),
            (2.4, "client_joined", "node-1 joined"),
        ),
    )


# ---------------------------------------------------------------------- mid-round

_TRAINERS = ("node-0", "node-1", "node-2", "node-3")
_WITNESSES = ("node-6", "node-7")
_FINISHED_METRICS = ((1, 2.1034, 0.4210, 11.8), (2, 1.2467, 0.6133, 10.2), (3, 0.8121, 0.7406, 9.7))
# int8 updates of the digits MLP (6,570 parameters: 26.3 kB in fp32, 6.7 kB encoded), relayed
# with a fanout of 2: per client, the last reported round's gossip bytes up and down
_GOSSIP = {
    "node-0": (47_600, 20_400, 3.94),
    "node-1": (13_600, 27_200, 3.94),
    "node-2": (6_800, 34_000, 3.94),
    "node-3": (40_800, 20_400, 3.94),
    "node-4": (None, None, None),  # an older node: it reports no gossip bytes
    "node-5": (6_800, 27_200, 3.94),
    "node-6": (0, 27_200, None),  # never trained: nothing encoded, nothing to relay
    "node-7": (20_400, 27_200, 3.94),
}


def _finished_round(
    n: int,
    loss: float,
    acc: float,
    duration: float,
    epoch: int = 1,
    busiest: tuple[str, int, int] | None = None,  # node, its bytes up, all nodes' bytes up
) -> RoundRow:
    witnesses = ("node-6", "node-7") if n % 2 else ("node-4", "node-6")
    trainers = _TRAINERS if n % 2 else ("node-1", "node-2", "node-3", "node-7")
    attested = {t: _h(f"r{n}-{t}") for t in trainers}
    return RoundRow(
        round=n,
        epoch=epoch,
        train_set=trainers,
        witnesses_elected=2,
        witnesses_reported=2,
        quorum=2,
        accepted=tuple(sorted(trainers)),
        rejected=(),
        outcome=RoundOutcome.ACCEPTED,
        duration=duration,
        loss=loss,
        accuracy=acc,
        aggregate_hashes=1,
        witness_rows=tuple(WitnessRow(w, True, dict(attested), True) for w in witnesses),
        commits=dict(attested),
        busiest_uplink=None if busiest is None else busiest[1],
        busiest_node="" if busiest is None else busiest[0],
        gossip_bytes=None if busiest is None else busiest[2],
    )


def _current_round() -> RoundRow:
    """Round 4 in RoundWitness: node-7 attests a different hash for node-2 than it committed."""
    commits = {t: _h(f"r4-{t}") for t in _TRAINERS}
    honest = dict(commits)
    wrong = dict(commits, **{"node-2": _h("r4-node-2-corrupt")})
    return RoundRow(
        round=4,
        epoch=1,
        train_set=_TRAINERS,
        witnesses_elected=2,
        witnesses_reported=2,
        quorum=2,
        accepted=("node-0", "node-1", "node-3"),
        rejected=(),
        outcome=RoundOutcome.OPEN,
        duration=None,
        witness_rows=(
            WitnessRow("node-6", True, honest, True),
            WitnessRow("node-7", True, wrong, False),
        ),
        commits=commits,
    )


def mid_round_view() -> ConsoleView:
    """8 clients in round 4 (RoundWitness): node-5 dropped, node-6/node-7 witnesses, node-7
    disagreeing on node-2's hash; rounds 1-3 accepted with falling loss."""
    stages = {
        "node-0": ("done", "trainer", 0.2),
        "node-1": ("done", "trainer", 0.4),
        "node-2": ("waiting", "trainer", 0.1),
        "node-3": ("done", "trainer", 2.7),
        "node-4": ("voting", "", 0.3),
        "node-6": ("voting", "witness", 0.2),
        "node-7": ("voting", "witness", 0.6),
    }
    views = []
    rows = []
    for i in range(8):
        cid = f"node-{i}"
        address = f"tcp://127.0.0.1:4100{i}"
        if cid == "node-5":
            views.append(
                ClientView(
                    cid,
                    ClientStatus.DROPPED,
                    address,
                    True,
                    NOW - 3.4,
                    START,
                    "no heartbeat for 3.2s",
                )
            )
            up, down, ratio = _GOSSIP[cid]
            rows.append(
                ClientRow(
                    cid, address, "dropped", "dropped", "", None, rounds_trained=2,
                    last_loss=1.3012, last_accuracy=0.6020, bytes_in=1_843_200, bytes_out=912_044,
                    drop_reason="no heartbeat for 3.2s",
                    round_bytes_up=up, round_bytes_down=down, compression_ratio=ratio,
                )
            )  # fmt: skip
            continue
        stage, role, age = stages[cid]
        up, down, ratio = _GOSSIP[cid]
        views.append(ClientView(cid, ClientStatus.ACTIVE, address, True, NOW - age, START))
        rows.append(
            ClientRow(
                cid, address, "active", stage, role, age,
                rounds_trained=3 if i < 4 else 1,
                last_loss=0.8121 + i * 0.0013, last_accuracy=0.7406 - i * 0.0011,
                bytes_in=2_457_600 + i * 10_240, bytes_out=3_150_112 - i * 4_096,
                rejected=1 if cid == "node-7" else 0,
                round_bytes_up=up, round_bytes_down=down, compression_ratio=ratio,
            )
        )  # fmt: skip
    busiest = (None, ("node-1", 47_600, 142_800), ("node-0", 47_600, 135_200))
    rounds = tuple(
        _finished_round(*m, busiest=b) for m, b in zip(_FINISHED_METRICS, busiest, strict=True)
    ) + (_current_round(),)  # round 1 ran before the nodes reported gossip bytes
    run = _run(
        state=RunState.ROUND_WITNESS,
        phase_started=NOW - 1.5,
        deadline=NOW + 3.5,
        epoch=1,
        round=4,
        epoch_rounds=4,
        accepted_rounds=3,
        clients=tuple(views),
    )
    return ConsoleView(
        run=run,
        address=ADDRESS,
        seq=412,
        clients=tuple(rows),
        rounds=rounds,
        rejected_messages=1,
        log=_log(
            (9.0, "state_changed", "WaitingForMembers -> Warmup: 8 clients pending"),
            (14.2, "state_changed", "Warmup -> RoundTrain: every client warmed up"),
            (
                26.0,
                "round_ended",
                "round 1 ended accepted: accepted node-0, node-1, node-2, node-3",
            ),
            (
                36.5,
                "round_ended",
                "round 2 ended accepted: accepted node-1, node-2, node-3, node-7",
            ),
            (41.0, "operator", "operator: end phase"),
            (
                46.6,
                "round_ended",
                "round 3 ended accepted: accepted node-0, node-1, node-2, node-3",
            ),
            (47.0, "state_changed", "RoundWitness -> RoundTrain: round 4"),
            (51.9, "client_dropped", "node-5 dropped: no heartbeat for 3.2s"),
            (57.1, "reject", "rejected witness from node-7: round 3 is over", "warning"),
            (58.5, "state_changed", "RoundTrain -> RoundWitness: every live witness reported"),
        ),
    )


# ---------------------------------------------------------------------- finished


def finished_view() -> ConsoleView:
    metrics = [
        (1, 2.1034, 0.4210, 11.8, 1),
        (2, 1.2467, 0.6133, 10.2, 1),
        (3, 0.8121, 0.7406, 9.7, 1),
        (4, 0.6012, 0.8022, 9.9, 2),
        (5, 0.4876, 0.8519, 10.4, 2),
        (6, 0.4102, 0.8788, 9.5, 2),
    ]
    # top-k 0.01 updates of a 2.4M-parameter model: ~9.6 MB in fp32, 196 kB encoded (49x)
    busiest = ("node-3", 784_000, 1_960_000)
    rounds = tuple(
        _finished_round(n, loss, acc, d, epoch, busiest=busiest)
        for n, loss, acc, d, epoch in metrics
    )
    views = tuple(
        ClientView(
            f"node-{i}", ClientStatus.ACTIVE, f"tcp://127.0.0.1:4100{i}", True, NOW - 0.5, START
        )
        for i in range(4)
    )
    rows = tuple(
        ClientRow(
            f"node-{i}", f"tcp://127.0.0.1:4100{i}", "active", "done", "", 0.5 + i / 10,
            rounds_trained=5 + (i % 2), last_loss=0.4102, last_accuracy=0.8788,
            bytes_in=9_830_400 + i * 1_000, bytes_out=12_582_912 + i * 2_000,
            round_bytes_up=196_000 * (i + 1), round_bytes_down=490_000,
            compression_ratio=49.02,
        )
        for i in range(4)
    )  # fmt: skip
    run = _run(
        state=RunState.FINISHED,
        phase_started=NOW - 2.0,
        epoch=2,
        round=6,
        epoch_rounds=3,
        accepted_rounds=6,
        total_rounds=6,
        rounds_per_epoch=3,
        clients=views,
        checkpoint=CheckpointRef(epoch=2, round=6, hash=_h("final")),
    )
    return ConsoleView(
        run=run,
        address=ADDRESS,
        seq=903,
        clients=rows,
        rounds=rounds,
        checkpoint_dir="checkpoints/digits-demo",
        log=_log(
            (
                70.0,
                "round_ended",
                "round 6 ended accepted: accepted node-1, node-2, node-3, node-7",
            ),
            (70.1, "state_changed", "RoundWitness -> Cooldown: total_rounds reached"),
            (71.0, "checkpoint_saved", "checkpoint of round 6 saved (3e1b9c0d7a52)"),
            (71.0, "state_changed", "Cooldown -> Finished: checkpoint of round 6 saved"),
            (71.0, "run_finished", "run finished after 6 accepted rounds"),
        ),
    )
