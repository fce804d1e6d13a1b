"""Random sessions against the coordinator, with its invariants checked after every step.

Hypothesis drives joins, drops, kicks, leaves, votes, commits, witness reports, aggregates,
pauses, resumes, checkpoints, operator ``end_phase``, console restarts (``to_state`` ->
restore) and ticks, honest and dishonest, with a monotone fake clock. Whatever the order,
the run must stay consistent, every rejection must change nothing, and no departed client
may ever be waited on.
"""

from __future__ import annotations

import copy
import json
import math

import hypothesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from console.config import CoordinatorConfig
from console.coordinator import Coordinator
from console.coordinator.committee import elect_witnesses, quorum, round_seed, tally_votes
from console.coordinator.events import (
    EpochStarted,
    Outcome,
    RoundStarted,
    RunFinished,
    StateChanged,
    WitnessesReplaced,
)
from transport.state import (
    CheckpointRef,
    ClientStatus,
    ResultRef,
    RoundOutcome,
    RunSnapshot,
    RunState,
)

S = RunState
RUN = "stateful"
IDS = ("a", "b", "c", "d", "e", "f")
MS = 2.0**-10  # binary milliseconds: exact float arithmetic
LIVE = (ClientStatus.PENDING, ClientStatus.ACTIVE)
NO_EPOCH = (S.WAITING_FOR_MEMBERS, S.PAUSED, S.FINISHED)

CONFIGS = [
    CoordinatorConfig(
        init_min_clients=3,
        min_clients=2,
        witness_nodes=2,
        waiting_for_members_extra_time=32 * MS,
        warmup_time=256 * MS,
        max_round_train_time=512 * MS,
        round_witness_time=128 * MS,
        cooldown_time=64 * MS,
        rounds_per_epoch=2,
        total_rounds=4,
        health_timeout=1024 * MS,
    ),
    CoordinatorConfig(  # tiny and impatient: zero extra time, one witness, one client enough
        init_min_clients=1,
        min_clients=1,
        witness_nodes=1,
        waiting_for_members_extra_time=0.0,
        warmup_time=16 * MS,
        max_round_train_time=16 * MS,
        round_witness_time=0.0,
        cooldown_time=8 * MS,
        rounds_per_epoch=3,
        total_rounds=5,
        health_timeout=256 * MS,
    ),
    CoordinatorConfig(  # witness_nodes 0: every live client witnesses
        init_min_clients=4,
        min_clients=3,
        witness_nodes=0,
        waiting_for_members_extra_time=16 * MS,
        warmup_time=128 * MS,
        max_round_train_time=128 * MS,
        round_witness_time=64 * MS,
        cooldown_time=32 * MS,
        rounds_per_epoch=1,
        total_rounds=3,
        health_timeout=512 * MS,
    ),
    CoordinatorConfig(  # room to replace a whole committee: 5 members, 2 witnesses, 1 enough
        init_min_clients=5,
        min_clients=1,
        witness_nodes=2,
        waiting_for_members_extra_time=16 * MS,
        warmup_time=128 * MS,
        max_round_train_time=256 * MS,
        round_witness_time=128 * MS,
        cooldown_time=32 * MS,
        rounds_per_epoch=2,
        total_rounds=4,
        health_timeout=1024 * MS,
    ),
]

ids = st.sampled_from(IDS)
offsets = st.sampled_from([0, 0, 0, 1, 1, -1, 2])


def honest_hash(trainer: str, round: int) -> str:
    return f"h-{trainer}-{round}"


class CoordinatorMachine(RuleBasedStateMachine):
    @initialize(
        cfg=st.sampled_from(CONFIGS),
        seed=st.integers(0, 5),
        train_set_size=st.integers(0, 4),
    )
    def setup(self, cfg: CoordinatorConfig, seed: int, train_set_size: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.train_set_size = train_set_size
        self.ms = 0
        self.c = Coordinator(cfg, run_id=RUN, seed=seed, train_set_size=train_set_size, now=0.0)
        self.joined: set[str] = set()
        self.finished = False
        self.max_round = 0
        self.votes: dict[str, list[tuple[str, int]]] = {}  # our own record of accepted votes
        self.declined: set[str] = set()  # voters whose last accepted vote declined to train

    @property
    def now(self) -> float:
        return self.ms * MS

    def snap(self) -> RunSnapshot:
        return self.c.snapshot(self.now)

    def call(self, fn: object, *args: object, **kwargs: object) -> Outcome:
        """Make one call; a rejection must leave everything as it was."""
        before = (self.c.to_state(), self.snap(), self.c.waiting_on(), self.c.state)
        out: Outcome = fn(*args, **kwargs)  # type: ignore[operator]
        if out.rejection is not None:
            after = (self.c.to_state(), self.snap(), self.c.waiting_on(), self.c.state)
            assert after == before, out.rejection
            assert out.events == ()
            return out
        if fn == self.c.vote:
            self.votes[args[0]] = list(args[2])  # type: ignore[index,call-overload]
            if len(args) > 4 and args[4]:
                self.declined.add(args[0])  # type: ignore[arg-type]
            else:
                self.declined.discard(args[0])  # type: ignore[arg-type]
        for event in out.events:
            if isinstance(event, EpochStarted):
                self.votes = {}
            elif isinstance(event, RoundStarted):
                self.check_round_start(event)
                self.votes = {}
            elif isinstance(event, StateChanged) and event.new is S.COOLDOWN:
                self.votes = {}
            elif isinstance(event, WitnessesReplaced):
                wanted = self.cfg.witness_nodes or 32
                assert 0 < len(event.new) <= wanted and not set(event.new) & set(event.gone)
                assert set(event.new) <= self.joined and event.quorum == quorum(len(event.new))
                hypothesis.event("witnesses replaced")  # see --hypothesis-show-statistics
            elif isinstance(event, RunFinished) and event.reason:
                assert event.reason.startswith("no client left to train")
                hypothesis.event("finished: no client left to train")
        return out

    def check_round_start(self, event: RoundStarted) -> None:
        """The committee is what the public functions say, from our own record of votes."""
        active = sorted(v.id for v in self.snap().epoch_clients)  # as at the round start
        seed = round_seed(self.seed, event.round)
        live_votes = {v: c for v, c in self.votes.items() if v in active}
        eligible = [c for c in active if c not in self.declined]  # declining voters never train
        assert eligible, "a round started with every live client declining to train"
        trainers = tally_votes(live_votes, eligible, self.train_set_size, seed)
        assert event.train_set == tuple(sorted(trainers))
        wanted = self.cfg.witness_nodes or 32
        witnesses = elect_witnesses(active, seed, min(wanted, len(active)))
        assert event.witnesses == tuple(sorted(witnesses))
        assert event.quorum == quorum(len(witnesses))

    # ------------------------------------------------------------------ clock

    @rule(ms=st.integers(0, 300))
    def advance(self, ms: int) -> None:
        self.ms += ms

    @rule()
    def tick(self) -> None:
        out = self.call(self.c.tick, self.now)
        assert out.ok
        if self.c.state is S.FINISHED:
            return  # terminal: statuses freeze
        timeout = self.cfg.health_timeout
        for view in self.snap().live_clients:  # nobody silent past the timeout survives a tick
            assert self.now <= view.last_seen + timeout

    # ------------------------------------------------------------------ honest progress

    def progress(self, data: st.DataObject) -> None:
        """One honest move: a join, what the phase waits on, or waiting for its deadline.

        Rules are drawn about evenly, so without this most sessions would never get past
        the first epoch; with it they reach Cooldown, later epochs and Finished.
        """
        w = self.c.waiting_on()
        snap = self.snap()
        live = {v.id for v in snap.live_clients}
        if snap.state is S.FINISHED:
            self.ms += 16
            self.tick()
        elif w.warmup:
            cid = data.draw(st.sampled_from(sorted(w.warmup)))
            assert self.call(self.c.warmed_up, cid, self.now, model_hash="init").ok
        elif w.commits and data.draw(st.booleans()):
            cid = data.draw(st.sampled_from(sorted(w.commits)))
            h = honest_hash(cid, snap.round)
            assert self.call(self.c.commit, cid, snap.round, ResultRef(h, 5), self.now).ok
        elif w.witnesses:
            cid = data.draw(st.sampled_from(sorted(w.witnesses)))
            trainers = [t for t in snap.current.train_set if t in live]  # type: ignore[union-attr]
            att = {t: honest_hash(t, snap.round) for t in trainers}
            assert self.call(self.c.witness, cid, snap.round, att, self.now).ok
        elif w.votes:
            cid = data.draw(st.sampled_from(sorted(w.votes)))
            active = sorted(v.id for v in snap.epoch_clients)
            pick = data.draw(st.lists(st.sampled_from(active), max_size=2, unique=True))
            assert self.call(self.c.vote, cid, snap.round + 1, [(p, 1) for p in pick], self.now).ok
        elif w.uploader is not None:
            self.checkpoint_saved(True)
        elif snap.state is S.WAITING_FOR_MEMBERS and w.members and len(live) < len(IDS):
            cid = data.draw(st.sampled_from([i for i in IDS if i not in live]))
            self.call(self.c.join, cid, RUN, self.now)  # kicked ids are refused
            self.joined.add(cid) if cid in {v.id for v in self.snap().live_clients} else None
        else:  # keep everyone alive and wait for the deadline
            for cid in sorted(live):
                assert self.call(self.c.heartbeat, cid, self.now).ok
            wake = self.c.next_wakeup(self.now)
            self.ms = max(self.ms, math.ceil(wake / MS)) if wake is not None else self.ms + 16
            self.tick()

    @rule(data=st.data())
    def progress_a(self, data: st.DataObject) -> None:
        self.progress(data)

    @rule(data=st.data())
    def progress_b(self, data: st.DataObject) -> None:
        self.progress(data)

    @rule(data=st.data())
    def progress_c(self, data: st.DataObject) -> None:
        self.progress(data)

    # ------------------------------------------------------------------ arbitrary messages

    @rule(cid=ids, good=st.sampled_from([True, True, True, False]))
    def join(self, cid: str, good: bool) -> None:
        out = self.call(self.c.join, cid, RUN if good else "other", self.now)
        if out.ok:
            self.joined.add(cid)
        else:
            assert not good or out.rejection.code in ("kicked", "banned", "wrong_state")  # type: ignore[union-attr]

    @rule(cid=ids, kind=st.sampled_from(["heartbeat", "warmed_up", "aggregate"]), offset=offsets)
    def chatter(self, cid: str, kind: str, offset: int) -> None:
        if kind == "heartbeat":
            self.call(self.c.heartbeat, cid, self.now)
        elif kind == "warmed_up":
            self.call(self.c.warmed_up, cid, self.now, model_hash="init")
        else:
            r = self.snap().round + offset
            self.call(self.c.report_aggregate, cid, r, "agg", self.now)

    @rule(
        cid=ids,
        offset=offsets,
        candidates=st.lists(st.tuples(ids, st.integers(0, 3)), max_size=4),
        declines=st.sampled_from(["", "", "", "privacy budget spent"]),
    )
    def vote(self, cid: str, offset: int, candidates: list[tuple[str, int]], declines: str) -> None:
        r = self.snap().round + 1 + offset
        self.call(self.c.vote, cid, r, candidates, self.now, declines)

    @rule(cid=ids, offset=offsets, honest=st.booleans())
    def commit(self, cid: str, offset: int, honest: bool) -> None:
        r = self.snap().round + offset
        h = honest_hash(cid, r) if honest else "forged"
        self.call(self.c.commit, cid, r, ResultRef(h, 5), self.now)

    @rule(cid=ids, offset=offsets, mode=st.sampled_from(["honest", "partial", "liar", "junk"]))
    def witness(self, cid: str, offset: int, mode: str) -> None:
        snap = self.snap()
        r = snap.round + offset
        trainers = snap.current.train_set if snap.current else ()
        att: object
        if mode == "honest":
            att = {t: honest_hash(t, r) for t in trainers}
        elif mode == "partial":
            att = {t: honest_hash(t, r) for t in trainers[:1]}
        elif mode == "liar":
            att = {t: "lie" for t in trainers}
        else:
            att = {"zz": 3}
        self.call(self.c.witness, cid, r, att, self.now)

    def checkpoint_saved(self, right: bool) -> None:
        snap = self.snap()
        accepted = [v.round for v in self.c.rounds if v.outcome is RoundOutcome.ACCEPTED]
        rnd = accepted[-1] if accepted and right else snap.round + 7
        self.call(self.c.checkpoint_saved, CheckpointRef(snap.epoch, rnd, "ckpt"), self.now)

    # ------------------------------------------------------------------ disruptions

    @rule(
        cid=ids,
        how=st.sampled_from(
            ["drop", "drop", "leave", "kick", "pause", "resume", "end_phase", "checkpoint"]
        ),
    )
    def disrupt(self, cid: str, how: str) -> None:
        if how == "drop":
            self.call(self.c.drop, cid, "connection lost", self.now)
        elif how == "leave":
            self.call(self.c.leave, cid, self.now)
        elif how == "kick":
            self.call(self.c.kick, cid, self.now)
        elif how == "pause":
            self.call(self.c.pause, self.now)
        elif how == "resume":
            self.call(self.c.resume, self.now)
        elif how == "end_phase":
            self.call(self.c.end_phase, self.now)
        else:
            self.checkpoint_saved(cid < "d")

    @rule(how=st.sampled_from(["drop", "leave", "kick"]), upto=st.integers(1, 3))
    def witnesses_die(self, how: str, upto: int) -> None:
        """Up to ``upto`` live witnesses of the open round go, one after the other (two with
        witness_nodes 2: the whole committee), as a SIGKILL or SIGSTOP would do."""
        r = self.snap().current
        if r is None or r.outcome is not RoundOutcome.OPEN:
            return
        active = {c.id for c in self.snap().epoch_clients}
        for w in [w for w in r.witnesses if w in active][:upto]:
            active.discard(w)
            if how == "drop":
                self.call(self.c.drop, w, "no heartbeat", self.now)
            elif how == "leave":
                self.call(self.c.leave, w, self.now)
            else:
                self.call(self.c.kick, w, self.now)
            # Losing witnesses decides a round only through a live witness that reported,
            # or when nobody is left to elect in their place (else they are replaced).
            view = next(v for v in self.c.rounds if v.round == r.round)
            if view.outcome in (RoundOutcome.ACCEPTED, RoundOutcome.NO_QUORUM):
                live = {c.id for c in self.snap().live_clients}
                assert set(view.attestations) & live or not active, view
            if view.outcome is not RoundOutcome.OPEN:
                return

    @rule(cid=ids, ban=st.booleans())
    def ban_or_unban(self, cid: str, ban: bool) -> None:
        """The operator bans an id (joined or not) or lifts a ban or kick: a banned id is never
        live, and its joins are refused ``banned`` until it is unbanned."""
        if ban:
            out = self.call(self.c.kick, cid, self.now, ban=True, reason="r")
            if out.ok:
                self.joined.add(cid)  # a banned id is listed as a (kicked) client
        else:
            self.call(self.c.unban, cid, self.now)
        if cid in self.c.bans:
            assert self.snap().client(cid).status is ClientStatus.KICKED  # type: ignore[union-attr]
            refused = self.call(self.c.join, cid, RUN, self.now).rejection
            assert refused is not None and refused.code == "banned"

    @rule(cfg=st.sampled_from(CONFIGS))
    def reconfigure(self, cfg: CoordinatorConfig) -> None:
        """The operator's live coordinator settings: taken in WaitingForMembers and Paused
        (the wait for members re-judged at once), refused elsewhere, changing nothing."""
        state, old = self.c.state, self.cfg
        self.cfg = cfg
        out = self.call(self.c.reconfigure, self.now, config=cfg)
        if out.rejection is not None:
            self.cfg = old
            wrong_state = state not in (S.WAITING_FOR_MEMBERS, S.PAUSED)
            assert (cfg != old and wrong_state) or cfg.total_rounds <= self.snap().accepted_rounds
        else:
            assert cfg == old or state in (S.WAITING_FOR_MEMBERS, S.PAUSED)
            assert self.snap().init_min_clients == cfg.init_min_clients

    @rule()
    def restart_console(self) -> None:
        """The console restarts from its saved state: clients must join again."""
        saved = json.loads(json.dumps(self.c.to_state()))
        self.c = Coordinator(
            self.cfg,
            run_id=RUN,
            seed=self.seed,
            train_set_size=self.train_set_size,
            now=self.now,
            restore=saved,
        )
        assert self.c.to_state()["accepted_rounds"] == saved["accepted_rounds"]
        assert self.c.rounds[-1:] == () or self.c.rounds[-1].outcome is not RoundOutcome.OPEN
        self.joined = set(saved["banned"])  # a plain kick ends with the console process
        self.votes = {}
        self.declined = set()  # declines are not saved: nodes say so again in their next vote
        assert self.c.state in (S.WAITING_FOR_MEMBERS, S.FINISHED)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def clients_are_consistent(self) -> None:
        snap = self.snap()
        ids_ = [c.id for c in snap.clients]
        assert ids_ == sorted(ids_)
        assert set(ids_) <= self.joined | set(IDS)
        active = {c.id for c in snap.epoch_clients}
        assert active <= self.joined  # epoch clients are joined clients
        if snap.state in NO_EPOCH:
            assert not active
        if snap.state in (S.WARMUP, S.ROUND_TRAIN):
            assert len(active) >= self.cfg.min_clients

    @invariant()
    def nobody_gone_is_waited_on(self) -> None:
        w = self.c.waiting_on()
        snap = self.snap()
        assert w.state is snap.state
        active = {c.id for c in snap.epoch_clients}
        for group in (w.warmup, w.witnesses, w.commits, w.votes):
            assert group <= active
        if w.uploader is not None:
            assert w.uploader in active and snap.checkpoint_uploader == w.uploader
        if snap.state is S.WAITING_FOR_MEMBERS:
            pending = sum(1 for c in snap.clients if c.status is ClientStatus.PENDING)
            assert w.members == max(
                0, max(self.cfg.init_min_clients, self.cfg.min_clients) - pending
            )
        # A phase that waits on nobody has already moved on (nothing is stalled).
        if snap.state is S.WARMUP:
            assert w.warmup
        if snap.state is S.ROUND_TRAIN:
            assert w.witnesses
        if snap.state is S.COOLDOWN:
            assert w.uploader is not None

    @invariant()
    def an_open_round_keeps_a_live_witness(self) -> None:
        """While a round is open, a live witness remains, unless no live epoch client is left
        to elect (then the round ends no_quorum at its deadline, or at once)."""
        snap = self.snap()
        r = snap.current
        if snap.state not in (S.ROUND_TRAIN, S.ROUND_WITNESS) or r is None:
            return
        if r.outcome is not RoundOutcome.OPEN:
            return
        active = {c.id for c in snap.epoch_clients}
        assert set(r.witnesses) & active or not active

    @invariant()
    def finished_is_terminal(self) -> None:
        if self.finished:
            assert self.c.state is S.FINISHED
        self.finished = self.c.state is S.FINISHED

    @invariant()
    def rounds_and_counts(self) -> None:
        snap = self.snap()
        rounds = self.c.rounds
        numbers = [r.round for r in rounds]
        assert all(b > a for a, b in zip(numbers, numbers[1:], strict=False))
        assert snap.round >= self.max_round
        self.max_round = snap.round
        if rounds:
            assert snap.round == numbers[-1] and snap.current == rounds[-1]
            assert snap.previous == (rounds[-2] if len(rounds) > 1 else None)
        accepted = sum(1 for r in rounds if r.outcome is RoundOutcome.ACCEPTED)
        assert snap.accepted_rounds == accepted <= self.cfg.total_rounds
        for r in rounds:
            assert r.quorum == {0: 0, 1: 1, 2: 2, 3: 2}.get(
                len(r.witnesses), 2 * len(r.witnesses) // 3
            )
            assert set(r.accepted) <= set(r.train_set)
            assert (r.outcome is RoundOutcome.ACCEPTED) == bool(r.accepted)
            assert set(r.attestations) <= set(r.witnesses)
        if snap.state in (S.ROUND_TRAIN,):
            assert snap.current is not None and snap.current.outcome is RoundOutcome.OPEN
        if snap.checkpoint is not None:
            assert any(
                r.round == snap.checkpoint.round and r.outcome is RoundOutcome.ACCEPTED
                for r in rounds
            )

    @invariant()
    def snapshot_shape(self) -> None:
        snap = self.snap()
        assert (snap.deadline is None) == (snap.state in NO_EPOCH)
        if snap.pending_pause:
            assert snap.state in (S.ROUND_TRAIN, S.ROUND_WITNESS, S.COOLDOWN)
        if snap.checkpoint_uploader is not None:  # asked for an accepted round not yet saved
            assert snap.state in (S.ROUND_TRAIN, S.ROUND_WITNESS, S.COOLDOWN)
            uploader = next(c for c in snap.clients if c.id == snap.checkpoint_uploader)
            assert uploader.status is ClientStatus.ACTIVE
            accepted = [r.round for r in self.c.rounds if r.outcome is RoundOutcome.ACCEPTED]
            assert accepted and (snap.checkpoint is None or snap.checkpoint.round < accepted[-1])
        assert RunSnapshot.from_dict(json.loads(json.dumps(snap.to_dict()))) == snap

    @invariant()
    def next_wakeup_is_exact(self) -> None:
        """Ticking before next_wakeup changes nothing; ticking at it changes something."""
        wake = self.c.next_wakeup(self.now)
        if wake is None or self.c.state is S.FINISHED:
            return
        before = math.nextafter(wake, -math.inf)
        if before >= self.now:
            probe = copy.deepcopy(self.c)
            assert probe.tick(before).events == ()
        probe = copy.deepcopy(self.c)
        assert probe.tick(max(wake, self.now)).events != ()


CoordinatorMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_coordinator_state_machine = CoordinatorMachine.TestCase
