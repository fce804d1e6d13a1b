"""The coordinator's round protocol, driven with a fake clock in milliseconds.

Every transition of ARCHITECTURE.md's round, every "a client drops while in state X" for
each role, each rejection, the vote tally, pause/resume, Finished and the restore round trip
(the committee's pure functions are in test_committee.py). No sockets, no sleeps: a whole
run takes microseconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import msgspec
import pytest

from console.config import CoordinatorConfig
from console.coordinator import Coordinator, WaitingOn
from console.coordinator.committee import (
    elect_witnesses,
    round_seed,
)
from console.coordinator.events import (
    AggregateReported,
    CheckpointRequested,
    CheckpointSaved,
    ClientDropped,
    ClientJoined,
    ClientKicked,
    ClientLeft,
    EpochEnded,
    EpochStarted,
    Event,
    Outcome,
    Paused,
    PauseRequested,
    Rejection,
    ResultAccepted,
    ResultRejected,
    Resumed,
    RoundEnded,
    RoundStarted,
    RunFinished,
    StateChanged,
    WitnessesReplaced,
)
from transport.state import (
    CheckpointRef,
    ClientStatus,
    ClientView,
    ResultRef,
    RoundOutcome,
    RunSnapshot,
    RunState,
)

S = RunState
RUN = "run-1"
SEED = 7
IDS = ("c0", "c1", "c2", "c3", "c4", "c5")
# The fake clock counts binary milliseconds (1/1024 s): every time and duration below is then
# exact in floating point, so "fires at now >= phase_started + duration" is tested exactly.
MS = 2.0**-10


def config(**overrides: object) -> CoordinatorConfig:
    base: dict[str, object] = dict(
        init_min_clients=4,
        min_clients=2,
        witness_nodes=2,
        waiting_for_members_extra_time=64 * MS,
        warmup_time=1024 * MS,
        max_round_train_time=2048 * MS,
        round_witness_time=512 * MS,
        cooldown_time=256 * MS,
        rounds_per_epoch=2,
        total_rounds=10,
        heartbeat_interval=0.100,
        health_timeout=60.0,
    )
    base.update(overrides)
    return CoordinatorConfig(**base)  # type: ignore[arg-type]


def h(trainer: str, round: int) -> str:
    """The honest model hash of a trainer's result."""
    return f"hash-{trainer}-r{round}"


class Run:
    """A coordinator plus a fake clock (milliseconds) and the honest moves of every node."""

    def __init__(
        self, cfg: CoordinatorConfig | None = None, *, train_set_size: int = 2, seed: int = SEED
    ) -> None:
        self.ms = 0
        self.cfg = cfg or config()
        self.c = Coordinator(
            self.cfg, run_id=RUN, seed=seed, train_set_size=train_set_size, now=0.0
        )
        self.events: list[Event] = []

    @property
    def now(self) -> float:
        return self.ms * MS

    def ok(self, outcome: Outcome) -> Outcome:
        assert outcome.ok, outcome.rejection
        self.events.extend(outcome.events)
        return outcome

    def snap(self) -> RunSnapshot:
        return self.c.snapshot(self.now)

    @property
    def state(self) -> RunState:
        return self.c.state

    def status(self, cid: str) -> ClientStatus:
        view = self.snap().client(cid)
        assert view is not None
        return view.status

    def live(self) -> list[str]:
        return [v.id for v in self.snap().live_clients]

    def epoch_clients(self) -> list[str]:
        return [v.id for v in self.snap().epoch_clients]

    def advance(self, ms: int, *, heartbeat: bool = True) -> Outcome:
        """Move the clock, keep every live client alive, tick."""
        self.ms += ms
        if heartbeat:
            for cid in self.live():
                self.ok(self.c.heartbeat(cid, self.now))
        return self.ok(self.c.tick(self.now))

    def join(self, *ids: str) -> None:
        for cid in ids:
            self.ok(self.c.join(cid, RUN, self.now, gossip_endpoint=f"tcp://{cid}"))

    def start_epoch(self, ids: Iterable[str] = IDS) -> None:
        self.join(*ids)
        self.advance(64)
        assert self.state is S.WARMUP

    def vote_for(self, trainers: Iterable[str], voters: Iterable[str] | None = None) -> None:
        r = self.snap().round + 1
        for cid in self.epoch_clients() if voters is None else voters:
            self.ok(self.c.vote(cid, r, [(t, 1) for t in trainers], self.now))

    def next_witnesses(self) -> tuple[str, ...]:
        """Who the next round will elect (the election is a pure function of public data)."""
        snap = self.snap()
        n = min(self.cfg.witness_nodes, len(snap.epoch_clients))
        return elect_witnesses(self.epoch_clients(), round_seed(SEED, snap.round + 1), n)

    def vote_non_witnesses(self) -> None:
        """Everyone votes for two trainers that will not be witnesses, so roles are disjoint."""
        w = set(self.next_witnesses())
        self.vote_for([c for c in self.epoch_clients() if c not in w][:2])

    def warm_all(self) -> None:
        for cid in self.epoch_clients():
            if not self.snap().client(cid).warmed_up:  # type: ignore[union-attr]
                self.ok(self.c.warmed_up(cid, self.now, model_hash="init"))

    def to_round_train(self) -> None:
        self.vote_non_witnesses()
        self.warm_all()
        assert self.state is S.ROUND_TRAIN

    def commit_all(self) -> None:
        r = self.snap().current
        assert r is not None
        live = set(self.live())
        for t in r.train_set:
            if t in live and t not in r.commits:
                self.ok(self.c.commit(t, r.round, ResultRef(h(t, r.round), 10), self.now))

    def witness_all(self, witnesses: Iterable[str] | None = None) -> None:
        r = self.snap().current
        assert r is not None
        live = set(self.live())
        att = {t: h(t, r.round) for t in r.train_set if t in live}
        for w in r.witnesses if witnesses is None else witnesses:
            if w in live and w not in r.attestations:
                self.ok(self.c.witness(w, r.round, att, self.now))

    def honest_round(self, *, vote_next: bool = True) -> None:
        """Commit, vote for the next round, witness: the round decides and moves on."""
        assert self.state is S.ROUND_TRAIN
        self.commit_all()
        if vote_next:
            self.vote_non_witnesses()
        self.witness_all()

    def save_checkpoint(self) -> None:
        snap = self.snap()
        assert snap.state is S.COOLDOWN and snap.checkpoint_uploader is not None
        last = next(v for v in reversed(self.c.rounds) if v.outcome is RoundOutcome.ACCEPTED)
        self.ok(self.c.checkpoint_saved(CheckpointRef(snap.epoch, last.round, "ckpt"), self.now))

    def satisfy(self) -> None:
        """Every live client does what the current phase waits for (no clock movement)."""
        w = self.c.waiting_on()
        for cid in sorted(w.warmup):
            self.ok(self.c.warmed_up(cid, self.now))
        if w.witnesses:
            self.commit_all()
            self.witness_all()
        if self.c.waiting_on().votes:
            self.vote_for(self.epoch_clients()[:2], sorted(self.c.waiting_on().votes))
        if self.state is S.COOLDOWN and self.snap().checkpoint_uploader is not None:
            self.save_checkpoint()

    def kinds(self, outcome: Outcome) -> list[type[Event]]:
        return [type(e) for e in outcome.events]

    def frozen(self) -> tuple[object, object]:
        return self.c.to_state(), self.c.snapshot(self.now).to_dict()


def role_of(run: Run, role: str) -> str:
    """A live client with the given role in the snapshot's current round."""
    r = run.snap().current
    live = run.live()
    if r is None:
        return live[0]
    pick = {
        "trainer": [c for c in r.train_set if c not in r.witnesses],
        "witness": [c for c in r.witnesses if c not in r.train_set],
        "neither": [c for c in live if c not in r.train_set and c not in r.witnesses],
    }[role]
    alive = [c for c in pick if c in live]
    assert alive, f"no live {role} in round {r.round}"
    # In Cooldown prefer the uploader for a witness, the hardest case.
    uploader = run.snap().checkpoint_uploader
    return uploader if role == "witness" and uploader in alive else alive[0]


# ---------------------------------------------------------------- WaitingForMembers


def test_starts_waiting_for_members_with_no_deadline() -> None:
    run = Run()
    snap = run.snap()
    assert snap.state is S.WAITING_FOR_MEMBERS
    assert snap.deadline is None and snap.current is None and snap.previous is None
    assert snap.waiting_for == 4
    assert run.c.next_wakeup(0.0) is None


def test_stays_waiting_below_init_min_clients() -> None:
    run = Run()
    run.join("c0", "c1", "c2")
    assert run.advance(10_000).events == ()
    assert run.state is S.WAITING_FOR_MEMBERS
    assert {run.status(c) for c in ("c0", "c1", "c2")} == {ClientStatus.PENDING}
    assert run.c.waiting_on() == WaitingOn(S.WAITING_FOR_MEMBERS, members=1)


def test_enough_members_still_wait_the_extra_time_then_warmup_on_tick() -> None:
    run = Run()
    run.join(*IDS[:4])
    assert run.state is S.WAITING_FOR_MEMBERS  # joined at t=0: 64 ms extra time to go
    assert run.c.next_wakeup(run.now) == 64 * MS
    assert run.advance(63).events == ()
    out = run.advance(1)
    assert run.kinds(out) == [StateChanged, EpochStarted]
    assert out.events[1] == EpochStarted(0, IDS[:4])
    assert run.epoch_clients() == list(IDS[:4])
    assert run.snap().deadline == 64 * MS + 1.0


def test_a_join_after_the_extra_time_starts_the_epoch_at_once() -> None:
    run = Run()
    run.join(*IDS[:3])
    run.advance(512)
    out = run.ok(run.c.join("c3", RUN, run.now))
    assert run.kinds(out) == [ClientJoined, StateChanged, EpochStarted]
    assert run.state is S.WARMUP


def test_warmup_never_starts_below_min_clients() -> None:
    run = Run(config(init_min_clients=1, min_clients=3))
    run.join("c0", "c1")
    run.advance(100)
    assert run.state is S.WAITING_FOR_MEMBERS
    run.join("c2")
    assert run.state is S.WARMUP


# ---------------------------------------------------------------- joins


def test_join_with_wrong_run_id_is_rejected_with_both_ids() -> None:
    run = Run()
    out = run.c.join("c0", "other", 0.0)
    assert out.rejection == Rejection(
        "wrong_run_id", "run_id 'other' does not match this run ('run-1')"
    )
    assert run.snap().clients == ()


def test_a_live_client_joining_again_keeps_its_status_and_gets_the_new_endpoint() -> None:
    run = Run()
    run.start_epoch()
    out = run.ok(run.c.join("c1", RUN, run.now, gossip_endpoint="tcp://new"))
    assert out.events == (ClientJoined("c1", rejoined=True),)
    view = run.snap().client("c1")
    assert view is not None and view.status is ClientStatus.ACTIVE
    assert view.gossip_endpoint == "tcp://new"


def test_the_key_a_client_joined_with_is_broadcast_and_binds_its_id_while_live() -> None:
    run = Run()
    run.ok(run.c.join("c0", RUN, run.now, public_key="K" * 40))
    view = run.snap().client("c0")
    assert view is not None and view.public_key == "K" * 40
    run.ok(run.c.join("c0", RUN, run.now, public_key="K" * 40))  # a reconnect: same key

    taken = run.c.join("c0", RUN, run.now, public_key="X" * 40)

    assert taken.rejection == Rejection("duplicate", "c0 is in the run with another key")
    run.ok(run.c.leave("c0", run.now))
    run.ok(run.c.join("c0", RUN, run.now, public_key="X" * 40))  # gone: the id is free again
    view = run.snap().client("c0")
    assert view is not None and view.public_key == "X" * 40


def test_a_dropped_client_rejoins_as_pending_for_the_next_epoch() -> None:
    run = Run()
    run.start_epoch()
    run.ok(run.c.drop("c1", "disconnected", run.now))
    out = run.ok(run.c.join("c1", RUN, run.now))
    assert out.events == (ClientJoined("c1", rejoined=True),)
    assert run.status("c1") is ClientStatus.PENDING
    assert run.c.warmed_up("c1", run.now).rejection.code == "not_member"  # type: ignore[union-attr]


def test_late_joiner_during_a_round_waits_for_the_next_epoch() -> None:
    run = Run()
    run.start_epoch(IDS[:5])
    run.to_round_train()
    run.join("c5")
    assert run.status("c5") is ClientStatus.PENDING
    run.honest_round()
    run.honest_round()  # rounds_per_epoch = 2 -> Cooldown
    run.save_checkpoint()
    run.advance(64)
    assert run.state is S.WARMUP
    assert "c5" in run.epoch_clients()


def test_kicked_client_cannot_join_again() -> None:
    run = Run()
    run.join("c0")
    run.ok(run.c.kick("c0", run.now))
    assert run.c.join("c0", RUN, run.now).rejection.code == "kicked"  # type: ignore[union-attr]
    assert run.c.kick("c0", run.now).rejection.code == "duplicate"  # type: ignore[union-attr]


# ---------------------------------------------------------------- warmup


def test_all_live_clients_warmed_up_starts_round_train_at_once() -> None:
    run = Run()
    run.start_epoch()
    for cid in IDS[:-1]:
        assert run.ok(run.c.warmed_up(cid, run.now)).events[-1].kind == "client_warmed_up"
    out = run.ok(run.c.warmed_up(IDS[-1], run.now))
    assert [type(e) for e in out.events][1:] == [StateChanged, RoundStarted]
    started = out.events[-1]
    assert isinstance(started, RoundStarted) and started.round == 1 and started.epoch == 0
    assert started.quorum == 2 and len(started.witnesses) == 2


def test_warmup_times_out_into_round_train_without_stragglers() -> None:
    run = Run()
    run.start_epoch()
    run.ok(run.c.warmed_up("c0", run.now))
    assert run.advance(1023).events == ()
    out = run.advance(1)
    assert out.events[0] == StateChanged(
        S.WARMUP, S.ROUND_TRAIN, "warmup_time (1s) reached", 64 * MS + 1.0
    )
    assert run.state is S.ROUND_TRAIN


def test_warmed_up_rejections() -> None:
    run = Run()
    run.start_epoch(IDS[:4])
    run.join("c5")
    assert run.c.warmed_up("c5", run.now).rejection.code == "not_member"  # type: ignore[union-attr]
    assert run.c.warmed_up("zz", run.now).rejection.code == "not_member"  # type: ignore[union-attr]
    run.ok(run.c.warmed_up("c0", run.now))
    assert run.c.warmed_up("c0", run.now).rejection.code == "duplicate"  # type: ignore[union-attr]
    bad = run.c.warmed_up("c1", run.now, model_hash=3)  # type: ignore[arg-type]
    assert bad.rejection.code == "malformed"  # type: ignore[union-attr]


def test_late_warmed_up_in_round_train_is_recorded_and_holds_nothing() -> None:
    run = Run()
    run.start_epoch()
    run.advance(1024)
    assert run.state is S.ROUND_TRAIN
    run.ok(run.c.warmed_up("c2", run.now))
    assert run.snap().client("c2").warmed_up  # type: ignore[union-attr]


def test_warmup_below_min_clients_abandons_the_epoch_survivors_pending() -> None:
    run = Run(config(init_min_clients=2, min_clients=2))
    run.start_epoch(["c0", "c1"])
    out = run.ok(run.c.drop("c1", "gone", run.now))
    assert run.kinds(out) == [ClientDropped, EpochEnded, StateChanged]
    assert out.events[1] == EpochEnded(0, abandoned=True)
    assert run.state is S.WAITING_FOR_MEMBERS
    assert run.status("c0") is ClientStatus.PENDING
    assert run.snap().epoch == 0  # an abandoned epoch's number is used again


# ---------------------------------------------------------------- votes


def test_votes_heaviest_candidates_train() -> None:
    run = Run(train_set_size=2)
    run.start_epoch()
    run.ok(run.c.vote("c0", 1, [("c4", 5), ("c5", 1)], run.now))
    run.ok(run.c.vote("c1", 1, [("c5", 3), ("c3", 3)], run.now))
    run.warm_all()
    r = run.snap().current
    assert r is not None and r.train_set == ("c4", "c5")  # c4=5, c5=4, c3=3


def test_votes_of_dropped_clients_and_for_dropped_clients_do_not_count() -> None:
    run = Run(train_set_size=1)
    run.start_epoch()
    run.ok(run.c.vote("c0", 1, [("c5", 9)], run.now))
    run.ok(run.c.vote("c1", 1, [("c2", 1), ("c3", 9)], run.now))
    run.ok(run.c.drop("c0", "gone", run.now))  # its vote for c5 goes with it
    run.ok(run.c.drop("c3", "gone", run.now))  # votes for c3 are ignored
    run.warm_all()
    assert run.snap().current.train_set == ("c2",)  # type: ignore[union-attr]


def test_no_votes_gives_a_seeded_train_set() -> None:
    runs = [Run(train_set_size=3) for _ in range(2)]
    for run in runs:
        run.start_epoch()
        run.warm_all()
    sets = [run.snap().current.train_set for run in runs]  # type: ignore[union-attr]
    assert sets[0] == sets[1] and len(sets[0]) == 3


@pytest.mark.parametrize(
    ("candidates", "code"),
    [
        ("c1", "malformed"),
        ([("c1",)], "malformed"),
        ([("c1", -1)], "malformed"),
        ([("c1", 1.5)], "malformed"),
        ([("c1", True)], "malformed"),
        ([(3, 1)], "malformed"),
        ([("c1", 1), ("c1", 2)], "malformed"),
        ([(f"x{i}", 1) for i in range(7)], "malformed"),  # more than the epoch's 6 clients
    ],
)
def test_malformed_votes_are_rejected(candidates: object, code: str) -> None:
    run = Run()
    run.start_epoch()
    before = run.frozen()
    out = run.c.vote("c0", 1, candidates, run.now)  # type: ignore[arg-type]
    assert out.rejection is not None and out.rejection.code == code
    assert run.frozen() == before


def test_vote_rejections_round_duplicate_member_state() -> None:
    run = Run(config(init_min_clients=4))
    run.join("c0", "c1", "c2")
    assert run.c.vote("c0", 1, [], run.now).rejection.code == "wrong_state"  # type: ignore[union-attr]
    run.join("c3")
    run.advance(64)
    run.join("late")
    assert run.c.vote("late", 1, [], run.now).rejection.code == "not_member"  # type: ignore[union-attr]
    assert run.c.vote("c0", 2, [], run.now).rejection.code == "wrong_round"  # type: ignore[union-attr]
    run.ok(run.c.vote("c0", 1, [], run.now))
    assert run.c.vote("c0", 1, [], run.now).rejection.code == "duplicate"  # type: ignore[union-attr]
    assert run.c.vote("c0", "1", [], run.now).rejection.code == "malformed"  # type: ignore[union-attr,arg-type]


def test_votes_for_the_next_round_are_taken_during_round_train() -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    assert run.c.vote("c0", 1, [], run.now).rejection.code == "wrong_round"  # type: ignore[union-attr]
    run.ok(run.c.vote("c0", 2, [("c1", 1)], run.now))


# ---------------------------------------------------------------- round train and witness


def test_commit_rejections() -> None:
    run = Run()
    run.start_epoch()
    ref = ResultRef("x", 1)
    assert run.c.commit("c0", 1, ref, run.now).rejection.code == "wrong_state"  # type: ignore[union-attr]
    run.to_round_train()
    r = run.snap().current
    assert r is not None
    trainer = r.train_set[0]
    outsider = next(c for c in IDS if c not in r.train_set)
    assert run.c.commit(outsider, 1, ref, run.now).rejection.code == "not_member"  # type: ignore[union-attr]
    assert run.c.commit(trainer, 2, ref, run.now).rejection.code == "wrong_round"  # type: ignore[union-attr]
    bad = run.c.commit(trainer, 1, ResultRef("", 1), run.now)
    assert bad.rejection.code == "malformed"  # type: ignore[union-attr]
    bad = run.c.commit(trainer, 1, ResultRef("x", -1), run.now)
    assert bad.rejection.code == "malformed"  # type: ignore[union-attr]
    run.ok(run.c.commit(trainer, 1, ref, run.now))
    assert run.c.commit(trainer, 1, ref, run.now).rejection.code == "duplicate"  # type: ignore[union-attr]
    assert trainer not in run.c.waiting_on().commits


def witness_case(run: Run, case: str) -> tuple[str, int, object]:
    """(client, round, attestations) that trigger one witness rejection."""
    r = run.snap().current
    assert r is not None
    w = r.witnesses[0]
    good = {t: h(t, 1) for t in r.train_set}
    non_witness = next(c for c in IDS if c not in r.witnesses)
    return {
        "not_member": ("c9", 1, good),
        "kicked": ("kicked-one", 1, good),
        "not_witness": (non_witness, 1, good),
        "wrong_round": (w, 2, good),
        "duplicate": (w, 1, good),
        "malformed": (w, 1, {"c0": 7}),
        "malformed_stranger": (w, 1, {"nobody": "x"}),
        "malformed_type": (w, 1, ["c0"]),
    }[case]


@pytest.mark.parametrize(
    "case",
    [
        "not_member",
        "kicked",
        "not_witness",
        "wrong_round",
        "duplicate",
        "malformed",
        "malformed_stranger",
        "malformed_type",
    ],
)
def test_witness_rejections(case: str) -> None:
    run = Run(config(witness_nodes=3))
    run.join("kicked-one")
    run.ok(run.c.kick("kicked-one", run.now))
    run.start_epoch()
    run.to_round_train()
    if case == "duplicate":
        w = run.snap().current.witnesses[0]  # type: ignore[union-attr]
        run.ok(run.c.witness(w, 1, {}, run.now))
    cid, rnd, att = witness_case(run, case)
    before = run.frozen()
    out = run.c.witness(cid, rnd, att, run.now)  # type: ignore[arg-type]
    expected = "malformed" if case.startswith("malformed") else case
    assert out.rejection is not None and out.rejection.code == expected
    assert run.frozen() == before


@pytest.mark.parametrize("state", ["Warmup", "Cooldown", "WaitingForMembers"])
def test_witness_outside_a_round_is_wrong_state(state: str) -> None:
    run = Run(config(rounds_per_epoch=1))
    run.start_epoch()
    if state != "Warmup":
        run.to_round_train()
        run.honest_round()
        assert run.state is S.COOLDOWN
        if state == "WaitingForMembers":
            run.save_checkpoint()
    assert run.state == state
    r = run.snap().current
    w = r.witnesses[0] if r else "c0"
    out = run.c.witness(w, run.snap().round, {}, run.now)
    assert out.rejection is not None and out.rejection.code == "wrong_state"


def test_every_live_witness_reporting_moves_to_witness_and_decides_in_one_call() -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    run.commit_all()
    r = run.snap().current
    assert r is not None
    att = {t: h(t, 1) for t in r.train_set}
    first = run.ok(run.c.witness(r.witnesses[0], 1, att, run.now))
    assert run.state is S.ROUND_TRAIN and len(first.events) == 1
    last = run.ok(run.c.witness(r.witnesses[1], 1, att, run.now))
    kinds = run.kinds(last)
    assert kinds[:4] == [type(last.events[0]), StateChanged, ResultAccepted, ResultAccepted]
    assert RoundEnded in kinds
    ended = last.of(RoundEnded)[0]
    assert ended == RoundEnded(1, RoundOutcome.ACCEPTED, r.train_set)
    assert run.state is S.ROUND_WITNESS  # decided: now waiting for votes for round 2
    assert run.c.waiting_on().votes == frozenset(IDS)
    snap = run.snap()
    assert snap.accepted_rounds == 1
    assert snap.current.accepted == {t: ResultRef(h(t, 1), 10) for t in r.train_set}  # type: ignore[union-attr]


def test_all_votes_in_after_the_decision_start_the_next_round() -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    run.honest_round(vote_next=False)
    assert run.state is S.ROUND_WITNESS
    for cid in IDS[:-1]:
        run.ok(run.c.vote(cid, 2, [], run.now))
    out = run.ok(run.c.vote(IDS[-1], 2, [], run.now))
    assert run.kinds(out)[1:] == [StateChanged, RoundStarted]
    snap = run.snap()
    assert snap.round == 2 and snap.epoch_rounds == 2
    assert snap.previous is not None and snap.previous.round == 1


def test_votes_cast_before_the_decision_let_the_round_roll_straight_on() -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    run.honest_round()  # votes for round 2 arrive during round 1
    assert run.state is S.ROUND_TRAIN and run.snap().round == 2


def test_round_train_times_out_into_round_witness_then_decides_on_late_witness() -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    run.commit_all()
    r = run.snap().current
    assert r is not None
    run.witness_all(r.witnesses[:1])
    out = run.advance(2048)
    assert out.events[0].new is RunState.ROUND_WITNESS  # type: ignore[attr-defined]
    assert "max_round_train_time" in out.events[0].reason  # type: ignore[attr-defined]
    assert run.snap().current.outcome is RoundOutcome.OPEN  # type: ignore[union-attr]
    run.witness_all(r.witnesses[1:])
    assert run.snap().current.outcome is RoundOutcome.ACCEPTED  # type: ignore[union-attr]


def test_round_witness_timeout_decides_with_what_is_there() -> None:
    run = Run(config(witness_nodes=3))
    run.start_epoch()
    run.to_round_train()
    run.commit_all()
    r = run.snap().current
    assert r is not None
    run.witness_all(r.witnesses[:1])  # 1 of 3: quorum is 2
    run.advance(2048)
    out = run.advance(512)
    assert run.kinds(out).count(ResultRejected) == 2
    assert out.of(RoundEnded)[0].outcome is RoundOutcome.NO_QUORUM  # type: ignore[attr-defined]
    changes = [(e.old, e.new) for e in out.of(StateChanged)]  # type: ignore[attr-defined]
    # No accepted result -> Cooldown, which has nothing to save and ends at once.
    assert changes == [(S.ROUND_WITNESS, S.COOLDOWN), (S.COOLDOWN, S.WAITING_FOR_MEMBERS)]
    assert run.snap().accepted_rounds == 0


def test_round_witness_timeout_after_decision_starts_next_round_without_all_votes() -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    run.honest_round(vote_next=False)
    run.ok(run.c.vote("c0", 2, [], run.now))
    out = run.advance(512)
    assert out.events[0].reason.endswith("round_witness_time (0.5s) reached")  # type: ignore[attr-defined]
    assert run.state is S.ROUND_TRAIN and run.snap().round == 2


def test_a_witness_hash_differing_from_the_commit_is_rejected() -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    r = run.snap().current
    assert r is not None
    cheat = r.train_set[0]
    run.ok(run.c.commit(cheat, 1, ResultRef("claimed", 10), run.now))
    run.witness_all()
    rejected = [e for e in run.events if isinstance(e, ResultRejected)]
    assert [e.trainer for e in rejected] == [cheat]
    assert "commit" in rejected[0].reason


def test_uncommitted_result_accepted_by_quorum_has_zero_samples() -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    run.witness_all()
    accepted = run.snap().current.accepted  # type: ignore[union-attr]
    assert accepted and all(ref.samples == 0 for ref in accepted.values())


def test_epoch_ends_after_rounds_per_epoch_then_checkpoint_then_waiting() -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    run.honest_round()
    run.honest_round()
    assert run.state is S.COOLDOWN and run.snap().epoch_rounds == 2
    snap = run.snap()
    req = [e for e in run.events if isinstance(e, CheckpointRequested)][-1]
    assert req == CheckpointRequested(0, 2, snap.checkpoint_uploader)  # type: ignore[arg-type]
    assert snap.checkpoint_uploader == min(snap.current.witnesses)  # type: ignore[union-attr]
    out = run.ok(run.c.checkpoint_saved(CheckpointRef(0, 2, "ckpt"), run.now))
    assert run.kinds(out) == [CheckpointSaved, EpochEnded, StateChanged]
    snap = run.snap()
    assert snap.state is S.WAITING_FOR_MEMBERS and snap.epoch == 1
    assert snap.checkpoint == CheckpointRef(0, 2, "ckpt") and snap.checkpoint_uploader is None
    assert set(run.live()) == set(IDS) and run.epoch_clients() == []
    run.advance(64)  # the survivors carry over into the next epoch
    assert run.state is S.WARMUP and run.epoch_clients() == list(IDS)


def test_each_accepted_round_is_checkpointed_while_the_next_one_runs() -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    run.honest_round()  # round 1 accepted; round 2 starts at once
    snap = run.snap()
    assert snap.state is S.ROUND_TRAIN and snap.round == 2
    req = [e for e in run.events if isinstance(e, CheckpointRequested)][-1]
    assert req == CheckpointRequested(0, 1, snap.checkpoint_uploader)  # type: ignore[arg-type]
    assert snap.checkpoint_uploader in run.c.rounds[-2].witnesses
    out = run.ok(run.c.checkpoint_saved(CheckpointRef(0, 1, "ckpt-1"), run.now))
    assert run.kinds(out) == [CheckpointSaved]  # no state change mid-epoch
    snap = run.snap()
    assert snap.state is S.ROUND_TRAIN and snap.checkpoint == CheckpointRef(0, 1, "ckpt-1")
    assert snap.checkpoint_uploader is None
    # a console resumed from this state starts a new epoch
    assert run.c.to_state()["epoch"] == 1 and run.c.to_state()["accepted_rounds"] == 1
    run.honest_round()  # round 2 accepted, the epoch's last: Cooldown waits for its upload
    assert run.state is S.COOLDOWN and run.snap().checkpoint_uploader is not None
    run.ok(run.c.checkpoint_saved(CheckpointRef(0, 2, "ckpt-2"), run.now))
    assert run.state is S.WAITING_FOR_MEMBERS and run.snap().checkpoint.round == 2  # type: ignore[union-attr]


def test_a_round_saved_before_cooldown_ends_cooldown_at_once() -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    run.commit_all()
    run.witness_all()  # decided; the state waits in RoundWitness for the next round's votes
    assert run.state is S.ROUND_WITNESS and run.snap().checkpoint_uploader is not None
    run.ok(run.c.checkpoint_saved(CheckpointRef(0, 1, "ckpt"), run.now))
    assert run.state is S.ROUND_WITNESS
    run.ok(run.c.pause(run.now))  # Cooldown, with round 1 already saved: Paused at once
    assert run.state is S.PAUSED
    changes = [e for e in run.events if isinstance(e, StateChanged)]
    assert changes[-1].reason == "checkpoint of round 1 saved; pause requested"


def test_a_dropped_uploader_mid_epoch_is_replaced() -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    run.honest_round()
    first = run.snap().checkpoint_uploader
    assert first is not None
    run.ok(run.c.drop(first, "connection lost", run.now))
    second = run.snap().checkpoint_uploader
    assert second is not None and second != first
    req = [e for e in run.events if isinstance(e, CheckpointRequested)][-1]
    assert req == CheckpointRequested(0, 1, second)


def test_checkpoint_saved_rejections() -> None:
    run = Run()
    run.start_epoch()
    assert run.c.checkpoint_saved(CheckpointRef(0, 1, "x"), run.now).rejection.code == "wrong_state"  # type: ignore[union-attr]
    run.to_round_train()
    run.honest_round()
    run.honest_round()
    before = run.frozen()
    for ref, code in [
        (CheckpointRef(0, 1, "x"), "wrong_round"),
        (CheckpointRef(1, 2, "x"), "wrong_state"),
        (CheckpointRef(0, 2, ""), "malformed"),
        ("ckpt", "malformed"),
    ]:
        out = run.c.checkpoint_saved(ref, run.now)  # type: ignore[arg-type]
        assert out.rejection is not None and out.rejection.code == code, ref
    assert run.frozen() == before


def test_cooldown_times_out_without_a_checkpoint() -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    run.honest_round()
    run.honest_round()
    assert run.advance(255).events == ()
    out = run.advance(1)
    assert run.kinds(out) == [EpochEnded, StateChanged]
    assert run.state is S.WAITING_FOR_MEMBERS and run.snap().checkpoint is None


def test_cooldown_with_nothing_to_save_ends_at_once() -> None:
    run = Run(config(witness_nodes=3))
    run.start_epoch()
    run.to_round_train()
    run.ok(run.c.end_phase(run.now))
    out = run.ok(run.c.end_phase(run.now))  # no witness reported: no quorum
    kinds = run.kinds(out)
    assert StateChanged in kinds and CheckpointRequested not in kinds
    assert run.state is S.WAITING_FOR_MEMBERS  # Cooldown had nothing to wait for


def test_no_checkpoint_request_when_the_checkpoint_is_current() -> None:
    run = Run(config(rounds_per_epoch=1))
    run.start_epoch()
    run.to_round_train()
    run.honest_round()
    run.save_checkpoint()
    run.advance(64)
    run.to_round_train()
    run.ok(run.c.end_phase(run.now))
    out = run.ok(run.c.end_phase(run.now))  # round 2: no quorum; checkpoint is at round 1
    assert CheckpointRequested not in run.kinds(out)
    assert run.state is S.WAITING_FOR_MEMBERS


def test_cooldown_uploader_drop_picks_the_next_and_the_last_drop_ends_cooldown() -> None:
    run = Run(config(rounds_per_epoch=1, min_clients=1, init_min_clients=3))
    run.start_epoch(IDS[:3])
    run.to_round_train()
    run.honest_round()
    seen = []
    while run.state is S.COOLDOWN:
        uploader = run.snap().checkpoint_uploader
        assert uploader is not None and uploader not in seen
        seen.append(uploader)
        out = run.ok(run.c.drop(uploader, "gone", run.now))
    assert sorted(seen) == sorted(IDS[:3])
    assert out.events[-1].new is S.WAITING_FOR_MEMBERS  # type: ignore[attr-defined]


def test_total_rounds_accepted_finishes_the_run() -> None:
    run = Run(config(total_rounds=3, rounds_per_epoch=2))
    run.start_epoch()
    run.to_round_train()
    run.honest_round()
    run.honest_round()
    run.save_checkpoint()
    run.advance(64)
    run.to_round_train()
    run.honest_round()
    assert run.state is S.COOLDOWN  # 3 accepted: no more rounds
    run.save_checkpoint()
    assert run.state is S.FINISHED
    assert run.events[-1] == RunFinished(3)
    assert run.snap().accepted_rounds == 3 and run.snap().epoch == 2


# ---------------------------------------------------------------- aggregates


def test_aggregates_are_recorded_for_the_current_and_previous_accepted_round() -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    assert run.c.report_aggregate("c0", 1, "agg", run.now).rejection.code == "wrong_round"  # type: ignore[union-attr]
    run.honest_round()
    out = run.ok(run.c.report_aggregate("c0", 1, "agg", run.now))
    assert out.events == (AggregateReported(1, "c0", "agg"),)
    assert run.snap().previous.aggregates == {"c0": "agg"}  # type: ignore[union-attr]
    assert run.c.report_aggregate("c0", 1, "agg", run.now).rejection.code == "duplicate"  # type: ignore[union-attr]
    assert run.c.report_aggregate("c0", 0, "agg", run.now).rejection.code == "wrong_round"  # type: ignore[union-attr]
    run.join("late")
    assert run.c.report_aggregate("late", 1, "a", run.now).rejection.code == "not_member"  # type: ignore[union-attr]


# ---------------------------------------------------------------- drops, in every state and role

DROP_STATES = [
    "WaitingForMembers",
    "Warmup",
    "RoundTrain",
    "RoundWitness",
    "RoundWitness-decided",
    "Cooldown",
    "Paused",
]


def reach(run: Run, target: str) -> None:
    """Drive a run of 6 clients (rounds_per_epoch 2) to ``target``, with a round behind it."""
    run.start_epoch()
    run.to_round_train()
    run.honest_round()
    run.honest_round()  # rounds 1, 2: epoch 0 done
    run.save_checkpoint()
    if target == "WaitingForMembers":
        return
    if target == "Paused":
        run.ok(run.c.pause(run.now))
        return
    run.advance(64)
    run.to_round_train()  # round 3
    if target == "RoundTrain":
        return
    if target == "RoundWitness":
        run.commit_all()
        run.advance(2048)
        return
    if target == "RoundWitness-decided":
        run.honest_round(vote_next=False)
        return
    run.honest_round()
    run.honest_round()  # round 4: Cooldown
    assert target == "Cooldown"


def reach_warmup_missing_one(run: Run, victim_role: str) -> str:
    """Warmup of epoch 1 where every epoch client but the victim has warmed up."""
    reach(run, "WaitingForMembers")
    run.advance(64)
    victim = role_of(run, victim_role)
    for cid in run.epoch_clients():
        if cid != victim:
            run.ok(run.c.warmed_up(cid, run.now))
    return victim


REMOVALS: dict[str, Callable[[Coordinator, str, float], Outcome]] = {
    "drop": lambda c, cid, now: c.drop(cid, "connection lost", now),
    "kick": lambda c, cid, now: c.kick(cid, now),
    "leave": lambda c, cid, now: c.leave(cid, now),
}
EXPECTED = {
    "drop": (ClientDropped, ClientStatus.DROPPED),
    "kick": (ClientKicked, ClientStatus.KICKED),
    "leave": (ClientLeft, ClientStatus.LEFT),
}


@pytest.mark.parametrize("how", ["drop", "kick", "leave"])
@pytest.mark.parametrize("role", ["trainer", "witness", "neither"])
@pytest.mark.parametrize("state", DROP_STATES)
def test_a_client_leaving_in_any_state_never_stalls_it(state: str, role: str, how: str) -> None:
    run = Run()
    if state == "Warmup":
        victim = reach_warmup_missing_one(run, role)
    else:
        reach(run, state)
        victim = role_of(run, role)
    state_before = run.state
    assert state_before.value == state.split("-")[0]
    out = run.ok(REMOVALS[how](run.c, victim, run.now))
    event_type, status = EXPECTED[how]
    assert type(out.events[0]) is event_type
    assert run.status(victim) is status
    assert victim not in run.c.waiting_on().clients
    assert victim not in run.live()
    if state in ("WaitingForMembers", "Paused"):
        assert run.state is state_before  # nothing waits on a pending client
        return
    if state == "Warmup":  # the victim was the last one not warmed up
        assert run.state is S.ROUND_TRAIN
        assert victim not in run.snap().current.train_set  # type: ignore[union-attr]
        return
    # Everyone else does their part; the phase ends without the clock moving.
    for _ in range(3):
        if run.state is not state_before:
            break
        run.satisfy()
    assert run.state is not state_before or run.snap().round > 3
    if state in ("RoundTrain", "RoundWitness") and role == "trainer":
        rejected = [e for e in run.events if isinstance(e, ResultRejected)]
        assert any(e.trainer == victim and e.reason == "trainer dropped" for e in rejected)


def test_a_dropped_last_missing_witness_moves_round_train_to_witness_at_once() -> None:
    run = Run()
    reach(run, "RoundTrain")
    r = run.snap().current
    assert r is not None
    run.commit_all()
    run.witness_all(r.witnesses[:1])
    out = run.ok(run.c.drop(r.witnesses[1], "gone", run.now))
    kinds = run.kinds(out)
    assert kinds[:2] == [ClientDropped, StateChanged]
    assert RoundEnded in kinds  # decided by the remaining witness (quorum of 1)
    assert out.of(RoundEnded)[0].outcome is RoundOutcome.ACCEPTED  # type: ignore[attr-defined]


def drop_every_witness(run: Run) -> tuple[Outcome, tuple[str, ...]]:
    """Drop every elected witness of the current round; the last drop's outcome and who."""
    r = run.snap().current
    assert r is not None
    gone = tuple(w for w in r.witnesses if w in run.live())
    out = Outcome()
    for w in gone:
        out = run.ok(run.c.drop(w, "gone", run.now))
    return out, gone


def test_every_witness_dropping_in_round_train_elects_replacements() -> None:
    run = Run()
    reach(run, "RoundTrain")
    run.commit_all()
    out, gone = drop_every_witness(run)
    (replaced,) = out.of(WitnessesReplaced)
    assert replaced.gone == gone  # type: ignore[attr-defined]
    new = replaced.new  # type: ignore[attr-defined]
    assert len(new) == 2 and set(new) <= set(run.live()) and not set(new) & set(gone)
    r = run.snap().current
    assert r is not None and r.outcome is RoundOutcome.OPEN
    assert r.witnesses == new and r.quorum == 2  # in the broadcast view
    assert run.state is S.ROUND_TRAIN  # still waiting, now for the replacements
    assert run.c.waiting_on().witnesses == frozenset(new)
    run.witness_all()
    (ended,) = [e for e in run.events if isinstance(e, RoundEnded) and e.round == r.round]
    assert ended.outcome is RoundOutcome.ACCEPTED
    assert list(ended.accepted) == sorted(t for t in r.train_set if t in run.live())


def test_every_witness_dropping_in_round_witness_waits_for_replacements() -> None:
    run = Run()
    reach(run, "RoundWitness")  # round 3, nobody witnessed yet, phase clock running
    assert run.state is S.ROUND_WITNESS
    out, gone = drop_every_witness(run)
    (replaced,) = out.of(WitnessesReplaced)
    assert not out.of(RoundEnded)  # not decided by the empty committee
    assert run.c.waiting_on().witnesses == frozenset(replaced.new)  # type: ignore[attr-defined]
    run.advance(256)  # within round_witness_time (512 ms): nothing ends by itself
    assert run.state is S.ROUND_WITNESS
    assert run.c.rounds[-1].outcome is RoundOutcome.OPEN
    run.witness_all()
    rv = next(v for v in run.c.rounds if v.round == 3)
    assert rv.outcome is RoundOutcome.ACCEPTED


def test_replacements_that_never_report_end_the_round_at_its_deadline() -> None:
    run = Run()
    reach(run, "RoundWitness")
    drop_every_witness(run)
    run.advance(512)  # round_witness_time, counted from the phase's start
    rv = next(v for v in run.c.rounds if v.round == 3)
    assert rv.outcome is RoundOutcome.NO_QUORUM


def test_every_witness_dropping_with_no_live_candidate_decides_no_quorum() -> None:
    # witness_nodes 0: every live client witnesses, so nobody is left to replace them.
    run = Run(config(init_min_clients=2, min_clients=1, witness_nodes=0))
    run.start_epoch(["c0", "c1"])
    run.warm_all()
    assert run.state is S.ROUND_TRAIN
    run.commit_all()
    run.advance(2048)  # max_round_train_time: RoundWitness, nobody reported
    assert run.state is S.ROUND_WITNESS
    out, _ = drop_every_witness(run)
    assert not out.of(WitnessesReplaced)
    (ended,) = out.of(RoundEnded)
    assert ended.outcome is RoundOutcome.NO_QUORUM  # type: ignore[attr-defined]
    reasons = {e.reason for e in out.of(ResultRejected)}  # type: ignore[attr-defined]
    assert reasons == {"trainer dropped"}


def test_a_live_witness_that_reported_is_not_replaced() -> None:
    run = Run()
    reach(run, "RoundTrain")
    r = run.snap().current
    assert r is not None
    run.commit_all()
    run.witness_all(r.witnesses[:1])
    run.ok(run.c.drop(r.witnesses[1], "gone", run.now))
    assert not [e for e in run.events if isinstance(e, WitnessesReplaced)]


@pytest.mark.parametrize("how", ["drop", "kick", "leave"])
def test_witness_replacement_is_deterministic(how: str) -> None:
    def replaced(seed: int) -> tuple[str, ...]:
        run = Run(seed=seed)
        reach(run, "RoundTrain")
        r = run.snap().current
        assert r is not None
        for w in r.witnesses:
            run.ok(REMOVALS[how](run.c, w, run.now))
        (e,) = [e for e in run.events if isinstance(e, WitnessesReplaced)]
        return e.new  # type: ignore[attr-defined]

    assert replaced(SEED) == replaced(SEED)
    draws = {replaced(s) for s in range(12)}
    assert len(draws) > 1  # the seed decides


def test_replacements_dropping_in_turn_are_replaced_again() -> None:
    run = Run()
    reach(run, "RoundTrain")
    _, first = drop_every_witness(run)
    drop_every_witness(run)  # the replacements drop too
    events = [e for e in run.events if isinstance(e, WitnessesReplaced)]
    assert len(events) == 2
    again = set(events[1].new)  # type: ignore[attr-defined]
    assert again and not again & set(events[0].new) and not again & set(first)  # type: ignore[attr-defined]
    run.witness_all()
    rv = next(v for v in run.c.rounds if v.round == 3)
    assert rv.outcome is RoundOutcome.ACCEPTED


def test_round_train_below_min_clients_is_abandoned() -> None:
    run = Run(config(init_min_clients=2, min_clients=2))
    run.start_epoch(["c0", "c1"])
    run.warm_all()
    out = run.ok(run.c.drop("c0", "gone", run.now))
    assert out.of(RoundEnded) == (RoundEnded(1, RoundOutcome.ABANDONED, ()),)
    assert run.state is S.WAITING_FOR_MEMBERS  # Cooldown had nothing to save
    assert run.snap().current.outcome is RoundOutcome.ABANDONED  # type: ignore[union-attr]


def test_a_drop_below_min_clients_after_the_decision_goes_to_cooldown() -> None:
    run = Run(config(init_min_clients=3, min_clients=3))
    run.start_epoch(IDS[:3])
    run.to_round_train()
    run.honest_round(vote_next=False)
    assert run.state is S.ROUND_WITNESS
    run.ok(run.c.drop("c0", "gone", run.now))
    assert run.state is S.COOLDOWN


# ---------------------------------------------------------------- health and time


def test_silent_clients_are_dropped_by_tick_strictly_after_health_timeout() -> None:
    run = Run(config(health_timeout=3.0))
    run.join("c0", "c1")  # at t=0
    run.ok(run.c.heartbeat("c1", 1.0))
    assert run.c.next_wakeup(run.now) == pytest.approx(3.0)
    assert run.c.next_wakeup(run.now) > 3.0  # strictly after: a tick at 3.0 changes nothing
    assert run.c.tick(3.0).events == ()
    out = run.ok(run.c.tick(run.c.next_wakeup(3.0)))  # type: ignore[arg-type]
    assert len(out.events) == 1 and isinstance(out.events[0], ClientDropped)
    assert out.events[0].client_id == "c0"
    assert out.events[0].reason == "no heartbeat for 3.0s"
    assert run.c.heartbeat("c0", 3.1).rejection.code == "not_member"  # type: ignore[union-attr]
    assert run.c.next_wakeup(3.1) == pytest.approx(4.0)


def test_any_accepted_message_refreshes_last_seen() -> None:
    run = Run(config(health_timeout=1.0))
    run.start_epoch()
    run.ms = 900
    run.ok(run.c.warmed_up("c0", run.now))
    out = run.c.tick(1.5)
    assert {e.client_id for e in out.of(ClientDropped)} == set(IDS) - {"c0"}  # type: ignore[attr-defined]


def test_a_clock_step_back_in_heartbeats_does_not_hide_a_silent_client() -> None:
    run = Run(config(health_timeout=1.0))
    run.join("a", "b", "c")
    run.ok(run.c.heartbeat("a", 0.5))
    run.ok(run.c.heartbeat("b", 0.2))  # out of order
    out = run.c.tick(1.3)
    assert {e.client_id for e in out.of(ClientDropped)} == {"b", "c"}  # type: ignore[attr-defined]


def test_a_timeout_fires_exactly_at_the_deadline_milliseconds_after_the_phase_began() -> None:
    run = Run(config(warmup_time=5 * MS))
    run.start_epoch()
    start = run.snap().phase_started
    assert run.snap().deadline == start + 5 * MS
    assert run.c.next_wakeup(run.now) == run.snap().deadline
    assert run.c.tick(start + 4 * MS).events == ()
    run.c.tick(start + 5 * MS)
    assert run.state is S.ROUND_TRAIN


def test_zero_durations_fire_one_timeout_per_tick() -> None:
    zero = dict(warmup_time=0.0, max_round_train_time=0.0, round_witness_time=0.0)
    run = Run(config(**zero))
    run.join(*IDS)
    run.c.tick(64 * MS)  # WaitingForMembers -> Warmup (a condition) -> RoundTrain (timeout)
    assert run.state is S.ROUND_TRAIN
    run.c.tick(64 * MS)
    assert run.state is S.ROUND_WITNESS
    run.c.tick(64 * MS)  # no result: no quorum -> Cooldown (nothing to save) -> waiting
    assert run.state is S.WAITING_FOR_MEMBERS


@pytest.mark.parametrize(
    "state", ["Warmup", "RoundTrain", "RoundWitness", "RoundWitness-decided", "Cooldown"]
)
def test_next_wakeup_is_the_phase_deadline(state: str) -> None:
    run = Run()
    if state == "Warmup":
        reach(run, "WaitingForMembers")
        run.advance(64)
    else:
        reach(run, state)
    deadline = run.snap().deadline
    assert deadline is not None and run.c.next_wakeup(run.now) == deadline
    assert run.c.tick(deadline - MS).events == ()
    assert run.c.tick(deadline).events != ()


# ---------------------------------------------------------------- operator


def test_pause_in_waiting_is_immediate_and_resume_returns_to_waiting() -> None:
    run = Run()
    run.join("c0")
    out = run.ok(run.c.pause(run.now))
    assert run.kinds(out) == [StateChanged, Paused]
    assert run.state is S.PAUSED and run.snap().deadline is None
    assert run.c.pause(run.now).rejection.code == "wrong_state"  # type: ignore[union-attr]
    run.join("c1", "c2", "c3")  # joins are still taken while paused
    assert run.advance(1000).events == () and run.state is S.PAUSED
    out = run.ok(run.c.resume(run.now))
    assert run.kinds(out) == [StateChanged, Resumed]
    assert run.state is S.WAITING_FOR_MEMBERS
    run.advance(64)
    assert run.state is S.WARMUP


def test_resume_only_from_paused() -> None:
    run = Run()
    assert run.c.resume(run.now).rejection.code == "wrong_state"  # type: ignore[union-attr]


def test_pause_in_warmup_is_immediate_and_abandons_the_epoch() -> None:
    run = Run()
    run.start_epoch()
    out = run.ok(run.c.pause(run.now))
    assert run.kinds(out) == [EpochEnded, StateChanged, Paused]
    assert run.state is S.PAUSED
    assert set(run.live()) == set(IDS) and run.epoch_clients() == []


def test_pause_during_a_round_waits_for_the_outcome_and_cooldown() -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    out = run.ok(run.c.pause(run.now))
    assert out.events == (PauseRequested(),)
    assert run.snap().pending_pause
    assert run.c.pause(run.now).rejection.code == "duplicate"  # type: ignore[union-attr]
    run.honest_round()  # the round still completes: accepted, then Cooldown (not round 2)
    assert run.state is S.COOLDOWN and run.snap().round == 1
    run.save_checkpoint()
    assert run.state is S.PAUSED and not run.snap().pending_pause
    assert run.snap().epoch == 1


def test_pause_in_cooldown_applies_when_cooldown_ends() -> None:
    run = Run()
    reach(run, "Cooldown")
    run.ok(run.c.pause(run.now))
    assert run.state is S.COOLDOWN
    run.advance(256)
    assert run.state is S.PAUSED


@pytest.mark.parametrize(
    ("state", "after"),
    [
        ("Warmup", S.ROUND_TRAIN),
        ("RoundTrain", S.ROUND_WITNESS),
        ("RoundWitness-decided", S.ROUND_TRAIN),
        ("Cooldown", S.WAITING_FOR_MEMBERS),
    ],
)
def test_end_phase_acts_as_the_deadline(state: str, after: RunState) -> None:
    run = Run()
    if state == "Warmup":
        reach(run, "WaitingForMembers")
        run.advance(64)
    else:
        reach(run, state)
    out = run.ok(run.c.end_phase(run.now))
    assert run.state is after
    assert any(isinstance(e, StateChanged) and "operator" in e.reason for e in out.events)


def test_end_phase_in_an_open_round_witness_decides_with_what_is_there() -> None:
    run = Run()
    reach(run, "RoundWitness")
    out = run.ok(run.c.end_phase(run.now))
    assert out.of(RoundEnded)[0].outcome is RoundOutcome.NO_QUORUM  # type: ignore[attr-defined]
    assert run.state is S.WAITING_FOR_MEMBERS  # nothing new to checkpoint


def test_end_phase_in_waiting_skips_the_extra_time_only_with_enough_members() -> None:
    run = Run()
    run.join("c0", "c1", "c2")
    out = run.c.end_phase(run.now)
    assert out.rejection == Rejection(
        "wrong_state",
        "waiting for 1 more member; lower coordinator.init_min_clients in the settings to go on",
    )
    run.join("c3")
    run.ok(run.c.end_phase(run.now))
    assert run.state is S.WARMUP
    run.ok(run.c.pause(run.now))
    assert run.c.end_phase(run.now).rejection.code == "wrong_state"  # type: ignore[union-attr]


# ---------------------------------------------------------------- Finished, snapshot, restore


def finished_run() -> Run:
    run = Run(config(total_rounds=1, rounds_per_epoch=1))
    run.start_epoch()
    run.to_round_train()
    run.honest_round()
    run.save_checkpoint()
    assert run.state is S.FINISHED
    return run


def test_finished_is_terminal() -> None:
    run = finished_run()
    before = run.frozen()
    now = run.now + 100
    calls = [
        run.c.join("new", RUN, now),
        run.c.join("c0", RUN, now),
        run.c.heartbeat("c0", now),
        run.c.leave("c0", now),
        run.c.drop("c0", "x", now),
        run.c.kick("c0", now),
        run.c.warmed_up("c0", now),
        run.c.vote("c0", 2, [], now),
        run.c.commit("c0", 1, ResultRef("x", 1), now),
        run.c.witness("c0", 1, {}, now),
        run.c.report_aggregate("c0", 1, "x", now),
        run.c.checkpoint_saved(CheckpointRef(1, 1, "x"), now),
        run.c.pause(now),
        run.c.resume(now),
        run.c.end_phase(now),
    ]
    assert all(c.rejection is not None and c.rejection.code == "wrong_state" for c in calls)
    assert run.c.tick(now + 1000).events == ()
    assert run.c.next_wakeup(now) is None
    assert run.state is S.FINISHED
    assert run.frozen() == before


def test_snapshot_shape_and_json_round_trip() -> None:
    run = Run()
    for cid in ("c2", "c0", "c1", "c3"):
        run.join(cid)
    run.advance(64)
    run.to_round_train()
    run.honest_round()
    snap = run.snap()
    assert [c.id for c in snap.clients] == ["c0", "c1", "c2", "c3"]
    assert snap.current.round == 2 and snap.previous.round == 1  # type: ignore[union-attr]
    assert snap.deadline == snap.phase_started + 2.0
    again = RunSnapshot.from_dict(json.loads(json.dumps(snap.to_dict())))
    assert again == snap


def test_snapshot_is_unchanged_by_later_calls() -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    snap = run.snap()
    copy = RunSnapshot.from_dict(json.loads(json.dumps(snap.to_dict())))
    run.honest_round()
    assert snap == copy


def test_restore_round_trip_keeps_progress_and_bans() -> None:
    run = Run()
    run.start_epoch()
    run.ok(run.c.kick("c5", run.now, ban=True, reason="banned by the operator (test)"))
    run.to_round_train()
    run.honest_round()
    run.honest_round()
    run.save_checkpoint()
    saved = json.loads(json.dumps(run.c.to_state()))
    back = Coordinator(config(), run_id=RUN, seed=SEED, train_set_size=2, now=500.0, restore=saved)
    snap = back.snapshot(500.0)
    assert snap.state is S.WAITING_FOR_MEMBERS and snap.phase_started == 500.0
    assert (snap.epoch, snap.round, snap.accepted_rounds) == (1, 2, 2)
    assert snap.checkpoint == run.snap().checkpoint
    assert back.rounds == run.c.rounds
    assert back.to_state() == saved
    refused = back.join("c5", RUN, 500.0).rejection
    assert refused is not None and refused.code == "banned"
    assert refused.reason == "c5 is banned: banned by the operator (test)"
    for cid in IDS[:4]:
        back.join(cid, RUN, 500.0)
    back.tick(500.1)
    back.warmed_up("c0", 500.1)
    for cid in IDS[1:4]:
        back.warmed_up(cid, 500.1)
    assert back.snapshot(500.1).current.round == 3  # type: ignore[union-attr]


def test_restore_mid_round_abandons_the_open_round() -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    saved = run.c.to_state()
    back = Coordinator(config(), run_id=RUN, seed=SEED, train_set_size=2, now=1.0, restore=saved)
    assert back.rounds[-1].outcome is RoundOutcome.ABANDONED
    assert back.state is S.WAITING_FOR_MEMBERS


def test_restore_of_a_finished_run_stays_finished() -> None:
    saved = finished_run().c.to_state()
    back = Coordinator(
        config(total_rounds=1), run_id=RUN, seed=SEED, train_set_size=2, now=0.0, restore=saved
    )
    assert back.state is S.FINISHED


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"run_id": "other"}, "run"),
        ({"seed": 1}, "seed"),
        ({"version": 99}, "version"),
        ({"epoch": -1}, "epoch"),
        ({"rounds": [{"round": "x"}]}, "round"),
    ],
)
def test_restore_rejects_a_state_from_another_run_or_malformed(
    patch: dict[str, object], message: str
) -> None:
    saved = {**finished_run().c.to_state(), **patch}
    with pytest.raises(ValueError, match=message):
        Coordinator(config(), run_id=RUN, seed=SEED, train_set_size=2, now=0.0, restore=saved)


def test_invalid_config_is_refused_with_every_problem() -> None:
    with pytest.raises(ValueError, match="total_rounds.*health_timeout"):
        Coordinator(
            config(total_rounds=0, health_timeout=0.0),
            run_id=RUN,
            seed=1,
            train_set_size=1,
            now=0.0,
        )


def test_event_descriptions_and_dicts_are_plain() -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    run.honest_round()
    for event in run.events:
        assert event.describe() and "\n" not in event.describe()
        json.dumps(event.to_dict())
        assert event.to_dict()["kind"] == event.kind


# ---------------------------------------------------------------- rejections change nothing


REJECTED_CALLS: list[tuple[str, Callable[[Coordinator, float], Outcome]]] = [
    ("join wrong run", lambda c, t: c.join("x", "nope", t)),
    ("join malformed", lambda c, t: c.join("", RUN, t)),
    ("heartbeat unknown", lambda c, t: c.heartbeat("x", t)),
    ("leave unknown", lambda c, t: c.leave("x", t)),
    ("drop unknown", lambda c, t: c.drop("x", "r", t)),
    ("kick unknown", lambda c, t: c.kick("x", t)),
    ("warmed_up in round", lambda c, t: c.warmed_up("c0", t)),
    ("vote wrong round", lambda c, t: c.vote("c0", 7, [], t)),
    ("vote duplicate", lambda c, t: c.vote("c0", 2, [], t)),
    ("commit wrong round", lambda c, t: c.commit("c0", 9, ResultRef("x", 1), t)),
    ("witness wrong round", lambda c, t: c.witness("c0", 9, {}, t)),
    ("aggregate wrong round", lambda c, t: c.report_aggregate("c0", 9, "x", t)),
    ("checkpoint wrong state", lambda c, t: c.checkpoint_saved(CheckpointRef(0, 1, "x"), t)),
    ("resume not paused", lambda c, t: c.resume(t)),
    ("pause twice", lambda c, t: c.pause(t)),
]


@pytest.mark.parametrize(("name", "call"), REJECTED_CALLS, ids=[n for n, _ in REJECTED_CALLS])
def test_a_rejected_call_changes_nothing(
    name: str, call: Callable[[Coordinator, float], Outcome]
) -> None:
    run = Run()
    run.start_epoch()
    run.to_round_train()
    run.ok(run.c.vote("c0", 2, [], run.now))
    run.ok(run.c.pause(run.now))
    before = run.frozen()
    out = call(run.c, run.now + 1.0)
    assert out.rejection is not None, name
    assert run.frozen() == before


def test_cached_client_views_equal_views_built_by_the_real_constructor() -> None:
    run = Run()
    run.start_epoch()
    run.ok(run.c.drop("c1", "gone", run.now))
    for view in run.snap().clients:
        real = ClientView(**msgspec.structs.asdict(view))
        assert type(view) is ClientView
        assert view == real and repr(view) == repr(real)
        with pytest.raises(AttributeError):
            view.status = ClientStatus.KICKED  # type: ignore[misc]
