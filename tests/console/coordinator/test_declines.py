"""Clients that stop training (privacy budget spent) and the run that ends when none is left.

A vote may carry ``declines``: the voter will not train any more. It is never elected again, it
still witnesses; when every live epoch client declines, the run ends Finished with that reason.
Fake clock, no sockets (the same ``Run`` driver as test_machine.py).
"""

from __future__ import annotations

from console.coordinator.events import ClientLeft, RunFinished, StateChanged, TrainingDeclined
from tests.console.coordinator.test_machine import IDS, Run, config
from transport.state import ClientStatus, RoundOutcome, RunState

S = RunState
SPENT = "privacy budget: one more round would spend epsilon 3.2 > target_epsilon 3"


def _vote(run: Run, voter: str, trainers: list[str], declines: str = "") -> None:
    r = run.snap().round + 1
    run.ok(run.c.vote(voter, r, [(t, 1) for t in trainers], run.now, declines))


def test_a_declining_client_is_never_elected_but_still_witnesses() -> None:
    run = Run(config(witness_nodes=4, min_clients=4), train_set_size=2)
    run.start_epoch(IDS[:4])
    for cid in IDS[:4]:  # everyone wants c0 and c1; c0 declines
        _vote(run, cid, ["c0", "c1"], SPENT if cid == "c0" else "")
    run.warm_all()
    assert run.state is S.ROUND_TRAIN
    current = run.snap().current
    assert current is not None
    assert current.train_set == ("c1",)  # the votes' other candidate, c0 left out
    assert "c0" in current.witnesses  # 4 witnesses of 4 clients: it still attests
    declined = [e for e in run.events if isinstance(e, TrainingDeclined)]
    assert declined == [TrainingDeclined(1, "c0", SPENT)]


def test_training_declined_is_reported_once_per_client() -> None:
    run = Run(config(witness_nodes=2, rounds_per_epoch=5), train_set_size=2)
    run.start_epoch(IDS[:4])
    for cid in IDS[:4]:
        _vote(run, cid, ["c1", "c2"], SPENT if cid == "c3" else "")
    run.warm_all()
    run.commit_all()
    for cid in IDS[:4]:
        _vote(run, cid, ["c1", "c2"], SPENT if cid == "c3" else "")
    run.witness_all()
    assert run.state is S.ROUND_TRAIN and run.snap().round == 2
    assert [e.client_id for e in run.events if isinstance(e, TrainingDeclined)] == ["c3"]


def test_the_run_finishes_with_the_reason_when_no_client_is_left_to_train() -> None:
    run = Run(config(witness_nodes=2, rounds_per_epoch=5, total_rounds=10), train_set_size=2)
    run.start_epoch(IDS[:4])
    run.to_round_train()
    run.commit_all()
    for cid in IDS[:4]:  # after round 1, every client's budget is spent
        _vote(run, cid, ["c0"], SPENT)
    run.witness_all()
    assert run.c.rounds[-1].outcome is RoundOutcome.ACCEPTED
    assert run.state is S.COOLDOWN  # no round 2: nobody may train
    cooldown = [e for e in run.events if isinstance(e, StateChanged) and e.new is S.COOLDOWN]
    assert "no client left to train" in cooldown[-1].reason and "c0: privacy budget" in (
        cooldown[-1].reason
    )
    run.save_checkpoint()
    assert run.state is S.FINISHED
    finished = [e for e in run.events if isinstance(e, RunFinished)]
    assert len(finished) == 1 and finished[0].accepted_rounds == 1
    assert finished[0].reason.startswith("no client left to train")
    assert "no client left to train" in run.events[-2].reason  # the StateChanged to Finished


def test_a_client_that_trains_again_is_eligible_again() -> None:
    run = Run(config(witness_nodes=2, min_clients=2), train_set_size=1)
    run.start_epoch(IDS[:4])
    for cid in IDS[:4]:
        _vote(run, cid, ["c2"], SPENT if cid == "c2" else "")
    run.warm_all()
    assert run.snap().current.train_set != ("c2",)  # type: ignore[union-attr]
    run.commit_all()
    for cid in IDS[:4]:
        _vote(run, cid, ["c2"], "")  # c2's shard changed: it can train again
    run.witness_all()
    assert run.snap().current.train_set == ("c2",)  # type: ignore[union-attr]


def test_a_leave_with_a_reason_is_logged_and_shown_with_it() -> None:
    run = Run()
    run.start_epoch(IDS[:4])
    why = 'device "cuda" asked for, but this node has no CUDA GPU'
    out = run.ok(run.c.leave("c1", run.now, why))
    assert out.events[0] == ClientLeft("c1", why)
    assert why in out.events[0].describe()
    view = run.snap().client("c1")
    assert view is not None and view.status is ClientStatus.LEFT
    assert view.drop_reason == f"left: {why}"
    assert run.c.vote("c0", 1, [], run.now, 3).rejection is not None  # type: ignore[arg-type]
