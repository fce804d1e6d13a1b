"""The round state machine: pure, clock-free, seeded.

The coordinator is a plain object over plain data. The server feeds it every message and a
periodic ``tick(now)`` with its own ``time.monotonic()``; the coordinator returns an
:class:`~console.coordinator.events.Outcome` (events, or a rejection that changed nothing)
and never does I/O, reads a clock or draws from global randomness. That is what lets the
tests drive every transition with a fake clock in milliseconds.

As in Psyche's ``tick_<state>``, each run state has one ``_tick_<state>``: everything that
ends it (its conditions, its deadline by the clock or by the operator's ``end_phase``) in one
place, and ``_to_<state>`` for what entering it does. ``tick``, ``end_phase`` and every
message that may complete a phase go through :meth:`Coordinator._settle`, which calls the
current state's ``_tick_<state>`` until nothing changes. ``docs/ARCHITECTURE.md`` is the
contract; the notes below record the choices it leaves open.

* A phase ends early as soon as what it waits for is complete (see :meth:`waiting_on`); a
  dropped, kicked or departed client is removed from every wait set in the same call, so it
  never stalls a phase (Psyche waits out the timeout instead).
* Timeouts fire at ``now >= phase_started + duration`` (float seconds), at most one per
  ``tick``/``end_phase`` call, so zero durations cannot spin; conditions (everyone reported)
  are re-evaluated until nothing changes.
* ``pause`` in Warmup is immediate (the epoch is abandoned: no round has run, nothing is
  lost); in RoundTrain/RoundWitness/Cooldown it is deferred through Cooldown.
* Every accepted round is checkpointed as soon as it is decided: a live epoch client (one of
  the round's witnesses when it can) is asked to upload the aggregate while the next round
  runs, so a console crash loses no accepted round whose upload arrived.
* Cooldown waits only for the checkpoint of the epoch's last accepted round: it ends at once
  when that one is already saved, when there is nothing to save or no live client left to
  upload it, when ``checkpoint_saved`` arrives, or at ``cooldown_time``.
* When every elected witness of the open round is gone (dropped, left, kicked) and live epoch
  clients remain, replacements are elected at once, seeded (``elect_replacements``); the
  phase waits for them up to its unchanged deadline (ARCHITECTURE.md, "Witness replacement").
* A Warmup never starts below ``min_clients`` (it would be abandoned at once), so
  WaitingForMembers needs ``max(init_min_clients, min_clients, 1)`` pending clients.
"""

from __future__ import annotations

from console.config import CoordinatorConfig
from console.coordinator.committee import (
    MAX_AUTO_WITNESSES,
    VoteTally,
    decide_results,
    elect_replacements,
    elect_witnesses,
    quorum,
    round_seed,
)
from console.coordinator.events import (
    CheckpointRequested,
    ClientDropped,
    EpochEnded,
    EpochStarted,
    Event,
    Outcome,
    Paused,
    PauseRequested,
    ResultAccepted,
    ResultRejected,
    Resumed,
    RoundEnded,
    RoundStarted,
    RunFinished,
    StateChanged,
    WitnessesReplaced,
)
from console.coordinator.messages import Messages, no_trainer_left, reject
from console.coordinator.records import Round
from console.coordinator.state import DURATION
from transport.fields import ErrorCode
from transport.state import (
    ClientStatus,
    ResultRef,
    RoundOutcome,
    RoundView,
    RunState,
)

_OK = Outcome()
_S = RunState
# How a phase's deadline was reached, for _tick_<state>: by the clock or by the operator.
_CLOCK = "clock"
_OPERATOR = "operator"


class Coordinator(Messages):
    """Psyche's coordinator state machine, with ARCHITECTURE.md's round protocol.

    Node messages (``messages.py``) and the operator's calls record what they bring, then
    :meth:`_settle` lets the current state's ``_tick_<state>`` decide whether it has ended.
    """

    # ------------------------------------------------------------------ operator and clock

    def pause(self, now: float) -> Outcome:
        s = self._state
        if s in (_S.FINISHED, _S.PAUSED):
            return reject(ErrorCode.WRONG_STATE, f"cannot pause in {s}")
        if self._pending_pause:
            return reject(ErrorCode.DUPLICATE, "a pause is already pending")
        ev: list[Event] = []
        if s is _S.WAITING_FOR_MEMBERS:
            self._to_paused(now, ev, "paused by the operator")
        elif s is _S.WARMUP:
            self._end_epoch(ev, abandoned=True)
            self._to_paused(now, ev, "paused by the operator during warmup")
        else:
            self._pending_pause = True
            ev.append(PauseRequested())
        self._settle(now, ev)
        return Outcome(tuple(ev))

    def resume(self, now: float) -> Outcome:
        if self._state is not _S.PAUSED:
            return reject(ErrorCode.WRONG_STATE, f"only a paused run resumes, not {self._state}")
        ev: list[Event] = []
        self._change(now, ev, _S.WAITING_FOR_MEMBERS, "resumed by the operator")
        ev.append(Resumed())
        self._settle(now, ev)
        return Outcome(tuple(ev))

    def end_phase(self, now: float) -> Outcome:
        """The operator's "next": act as if the current phase's deadline were reached now."""
        s = self._state
        if s in (_S.FINISHED, _S.PAUSED):
            return reject(ErrorCode.WRONG_STATE, f"{s} has no phase to end")
        missing = self._members_needed() - len(self._pending)
        if s is _S.WAITING_FOR_MEMBERS and missing > 0:
            more = f"{missing} more member{'s' if missing != 1 else ''}"
            return reject(
                ErrorCode.WRONG_STATE,
                f"waiting for {more}; lower coordinator.init_min_clients in the settings to go on",
            )
        ev: list[Event] = []
        self._tick_state(now, ev, _OPERATOR)
        self._settle(now, ev)
        return Outcome(tuple(ev))

    def reconfigure(
        self,
        now: float,
        *,
        config: CoordinatorConfig | None = None,
        train_set_size: int | None = None,
    ) -> Outcome:
        """The operator's live settings (Psyche: the owner changes the config while the run
        waits for members or is paused). ``config``: the new [coordinator] settings, taken at
        once, only in WaitingForMembers and Paused (a phase's length or a round count changed
        under a running epoch would move its deadlines and counts mid-way). ``train_set_size``:
        a learning setting, taken in any state; the next round's tally uses it. The values are
        the config rules' business (console/config); this only keeps its own invariants."""
        why = self.settings_refused(config, train_set_size)
        if why is not None:
            return reject(self._refusal_code(config), why)
        if train_set_size is not None:
            self._train_set_size = train_set_size
        ev: list[Event] = []
        if config is not None and config != self._cfg:
            self._cfg = config
            self._settle(now, ev)  # e.g. fewer members needed: the wait may be over
        return Outcome(tuple(ev))

    def tick(self, now: float) -> Outcome:
        """Health first (drop silent clients), then at most one phase timeout."""
        if self._state is _S.FINISHED:
            return _OK
        ev: list[Event] = []
        for cid, seen in self._expired(now):
            reason = f"no heartbeat for {now - seen:.1f}s"
            self._remove(cid, ClientStatus.DROPPED, reason)
            ev.append(ClientDropped(cid, reason))
        self._settle(now, ev)
        deadline = self._deadline()
        if deadline is not None and now >= deadline:
            self._tick_state(now, ev, _CLOCK)
            self._settle(now, ev)
        return Outcome(tuple(ev)) if ev else _OK

    # ------------------------------------------------------------------ the run states

    def _settle(self, now: float, ev: list[Event]) -> None:
        """End every phase whose condition is met, until none is (terminates: each cycle
        through the phases needs a new message or a timeout)."""
        for _ in range(32):
            if not self._tick_state(now, ev, None):
                return
        raise RuntimeError("coordinator did not settle; this is a bug")

    def _tick_state(self, now: float, ev: list[Event], deadline: str | None) -> bool:
        """One step of the current state: True when it changed something. ``deadline``: the
        phase's deadline is reached, by the ``_CLOCK`` or the ``_OPERATOR``."""
        match self._state:
            case _S.WAITING_FOR_MEMBERS:
                return self._tick_waiting_for_members(now, ev, deadline)
            case _S.WARMUP:
                return self._tick_warmup(now, ev, deadline)
            case _S.ROUND_TRAIN:
                return self._tick_round_train(now, ev, deadline)
            case _S.ROUND_WITNESS:
                return self._tick_round_witness(now, ev, deadline)
            case _S.COOLDOWN:
                return self._tick_cooldown(now, ev, deadline)
            case _:  # Paused and Finished: only the operator moves them
                return False

    # WaitingForMembers: enough pending clients, once the extra time for late joiners is over.

    def _tick_waiting_for_members(self, now: float, ev: list[Event], deadline: str | None) -> bool:
        n = len(self._pending)
        if n < self._members_needed():
            return False
        if deadline == _OPERATOR:
            self._to_warmup(now, ev, "the operator ended the wait for members")
        elif now >= self._phase_started + self._cfg.waiting_for_members_extra_time:
            self._to_warmup(now, ev, f"{n} clients pending")
        else:
            return False
        return True

    # Warmup: every live epoch client warmed up, or warmup_time; below min_clients the epoch
    # is abandoned.

    def _tick_warmup(self, now: float, ev: list[Event], deadline: str | None) -> bool:
        live = len(self._epoch_live)
        if deadline is not None:
            self._to_round_train(now, ev, self._deadline_reason(deadline))
        elif live < self._cfg.min_clients:
            self._end_epoch(ev, abandoned=True)
            reason = f"fewer than min_clients ({live} live)"
            self._change(now, ev, _S.WAITING_FOR_MEMBERS, reason)
        elif not self._not_warmed:
            self._to_round_train(now, ev, "every live epoch client warmed up")
        else:
            return False
        return True

    def _to_warmup(self, now: float, ev: list[Event], reason: str) -> None:
        """A new epoch: every pending client becomes a member."""
        members = self._enroll_pending()
        self._not_warmed = set(members)
        self._vote_waiting = set(members)
        self._votes = VoteTally()
        self._epoch_rounds = 0
        self._change(now, ev, _S.WARMUP, reason)
        ev.append(EpochStarted(self._epoch, tuple(members)))

    # RoundTrain: every live witness reported, or max_round_train_time; below min_clients the
    # round is abandoned.

    def _tick_round_train(self, now: float, ev: list[Event], deadline: str | None) -> bool:
        live = len(self._epoch_live)
        if deadline is not None:
            self._change(now, ev, _S.ROUND_WITNESS, self._deadline_reason(deadline))
        elif self._ask_for_checkpoint(ev):
            pass  # an accepted round to save: a live client was asked to upload it
        elif live < self._cfg.min_clients:
            self._abandon_round(now, ev, f"fewer than min_clients ({live} live)")
        elif self._replace_witnesses(ev):
            pass  # every witness gone: live clients were elected in their place
        elif not self._witness_waiting:
            self._change(now, ev, _S.ROUND_WITNESS, "every live witness reported")
        else:
            return False
        return True

    def _to_round_train(self, now: float, ev: list[Event], reason: str) -> None:
        """A new round: the votes elect its train set, the seed its witnesses."""
        eligible = self._epoch_live.difference(self._declined)
        if not eligible:  # every live client declines to train: the run ends after Cooldown
            self._finish_reason = no_trainer_left(self._declined, self._epoch_sorted)
            self._to_cooldown(now, ev, self._finish_reason)
            return
        live = self._epoch_sorted
        self._round += 1
        self._epoch_rounds += 1
        seed = round_seed(self._seed, self._round)
        train = tuple(sorted(self._votes.top(eligible, self._train_set_size, seed)))
        witnesses = tuple(sorted(elect_witnesses(live, seed, self._wanted(), presorted=True)))
        q = quorum(len(witnesses))
        view = RoundView(
            round=self._round,
            epoch=self._epoch,
            seed=seed,
            train_set=train,
            witnesses=witnesses,
            quorum=q,
            started=now,
        )
        self._rounds.append(Round(view, self._members()))
        self._witness_waiting = set(witnesses)
        self._commit_waiting = set(train)
        self._vote_waiting = set(self._epoch_live)
        self._votes = VoteTally()
        self._change(now, ev, _S.ROUND_TRAIN, reason)
        ev.append(RoundStarted(self._round, self._epoch, train, witnesses, q))

    def _wanted(self) -> int:
        """How many witnesses a round elects (before capping by the live clients)."""
        return self._cfg.witness_nodes if self._cfg.witness_nodes > 0 else MAX_AUTO_WITNESSES

    def _replace_witnesses(self, ev: list[Event]) -> bool:
        """When no elected witness of the open round is live any more (all dropped, left or
        were kicked, reported or not: only live witnesses ever count), elect as many
        replacements as a round elects, capped by the live epoch clients, seeded by the
        round's seed and who is gone. They become the round's witnesses (the broadcast view;
        the gone ones and their reports, which could no longer count, are in the event log),
        the quorum is theirs, and the phase waits for them as for any witness, up to its
        deadline. False when a live witness remains or no live client is left to elect."""
        r = self._rounds[-1]
        live = self._epoch_live
        gone = r.witnesses
        if any(w in live for w in gone) or not self._epoch_sorted:
            return False
        n = min(self._wanted(), len(self._epoch_sorted))
        new = elect_replacements(self._epoch_sorted, r.seed, n, gone, presorted=True)
        r.witnesses = tuple(sorted(new))
        r.quorum = quorum(len(new))
        r.attestations = {}
        r.changed()
        self._witness_waiting = set(new)
        ev.append(WitnessesReplaced(r.round, gone, r.witnesses, r.quorum))
        return True

    def _abandon_round(self, now: float, ev: list[Event], reason: str) -> None:
        self._end_open_round(now, ev, RoundOutcome.ABANDONED)
        self._to_cooldown(now, ev, reason)

    # RoundWitness: the open round is decided once every live witness reported; the decided
    # round gives way once every live epoch client voted for the next one (or nothing follows
    # it); round_witness_time does both with what is there.

    def _tick_round_witness(self, now: float, ev: list[Event], deadline: str | None) -> bool:
        is_open = self._rounds[-1].outcome is RoundOutcome.OPEN
        if deadline is not None:
            if is_open:
                self._decide(now, ev)
            self._end_round(now, ev, self._deadline_reason(deadline))
        elif self._ask_for_checkpoint(ev):
            pass  # an accepted round to save: a live client was asked to upload it
        elif is_open:
            if self._replace_witnesses(ev):
                return True  # the phase waits for the replacements, up to its deadline
            if self._witness_waiting:
                return False
            self._decide(now, ev)
        elif self._cooldown_reason() is not None or not self._vote_waiting:
            self._end_round(now, ev, "every live epoch client voted")
        else:
            return False
        return True

    def _decide(self, now: float, ev: list[Event]) -> None:
        """The verdict on every trainer; an accepted round is checkpointed while the next runs."""
        r = self._rounds[-1]
        live = self._epoch_live
        decision = decide_results(
            r.train_set,
            [w for w in r.witnesses if w in live],
            r.attestations,
            {t: ref.hash for t, ref in r.commits.items()},
            live,
        )
        for trainer in r.train_set:
            h = decision.accepted.get(trainer)
            if h is None:
                ev.append(ResultRejected(r.round, trainer, decision.rejected[trainer]))
                continue
            committed = r.commits.get(trainer)
            # Without a commit the sample count is unknown (0); nodes weigh by their pushes.
            r.accepted[trainer] = ResultRef(h, committed.samples if committed else 0)
            ev.append(ResultAccepted(r.round, trainer, h))
        if r.accepted:
            self._accepted_rounds += 1
            self._last_accepted = r
            self._checkpoint_round = r.round  # _ask_for_checkpoint asks a live client
            self._uploader = None
        outcome = RoundOutcome.ACCEPTED if r.accepted else RoundOutcome.NO_QUORUM
        self._end_open_round(now, ev, outcome)

    def _end_open_round(self, now: float, ev: list[Event], outcome: RoundOutcome) -> None:
        r = self._rounds[-1]
        r.outcome = outcome
        r.ended = now
        r.changed()
        self._witness_waiting = set()
        self._commit_waiting = set()
        ev.append(RoundEnded(r.round, r.outcome, tuple(sorted(r.accepted))))

    def _cooldown_reason(self) -> str | None:
        """Why no further round follows the decided one (None: the next round may start)."""
        cfg = self._cfg
        r = self._rounds[-1]
        live = len(self._epoch_live)
        if live < cfg.min_clients:
            return f"fewer than min_clients ({live} live)"
        if r.outcome is not RoundOutcome.ACCEPTED:
            return f"round {r.round} ended {r.outcome}"
        if self._pending_pause:
            return "pause requested"
        if self._epoch_rounds >= cfg.rounds_per_epoch:
            return f"the epoch's {cfg.rounds_per_epoch} rounds are done"
        if self._accepted_rounds >= cfg.total_rounds:
            return f"all {cfg.total_rounds} rounds accepted"
        return None

    def _end_round(self, now: float, ev: list[Event], why: str) -> None:
        reason = self._cooldown_reason()
        if reason is not None:
            self._to_cooldown(now, ev, reason)
        else:
            self._to_round_train(now, ev, f"round {self._round} decided; {why}")

    def _ask_for_checkpoint(self, ev: list[Event]) -> bool:
        """During rounds: ask a live client to upload the accepted round not yet saved."""
        if self._checkpoint_round is None or self._uploader is not None:
            return False
        if not self._pick_uploader(ev):  # nobody left to ask: Cooldown asks again
            self._checkpoint_round = None
        return True

    def _pick_uploader(self, ev: list[Event]) -> bool:
        """Prefer the last accepted round's witnesses (they hold every accepted model)."""
        live = self._epoch_live
        last = self._last_accepted
        preferred = [w for w in last.witnesses if w in live] if last is not None else []
        fallback = self._epoch_sorted[0] if self._epoch_sorted else None
        choice = preferred[0] if preferred else fallback
        if choice is None or self._checkpoint_round is None:
            return False
        self._uploader = choice
        ev.append(CheckpointRequested(self._epoch, self._checkpoint_round, choice))
        return True

    # Cooldown: waits only for the checkpoint of the epoch's last accepted round (already
    # saved, nothing to save, no live client left to upload it, or cooldown_time); then the
    # epoch ends into WaitingForMembers, Paused (a pause was requested) or Finished.

    def _tick_cooldown(self, now: float, ev: list[Event], deadline: str | None) -> bool:
        if deadline is not None:
            why = self._deadline_reason(deadline)
        elif self._checkpoint_round is None:
            why = "nothing to checkpoint"
            saved, last = self._checkpoint, self._last_accepted
            if saved is not None and last is not None and saved.round == last.round:
                why = f"checkpoint of round {saved.round} saved"
        elif self._uploader is not None:
            return False
        elif self._pick_uploader(ev):
            return True
        else:
            why = "no live client left to upload the checkpoint"
        self._end_epoch(ev, abandoned=False)
        if self._accepted_rounds >= self._cfg.total_rounds or self._finish_reason is not None:
            self._pending_pause = False
            early = self._finish_reason or ""
            self._change(now, ev, _S.FINISHED, f"{why}; {early}" if early else why)
            ev.append(RunFinished(self._accepted_rounds, early))
        elif self._pending_pause:
            self._to_paused(now, ev, f"{why}; pause requested")
        else:
            self._change(now, ev, _S.WAITING_FOR_MEMBERS, why)
        return True

    def _to_cooldown(self, now: float, ev: list[Event], reason: str) -> None:
        self._vote_waiting = set()
        self._votes = VoteTally()
        last = self._last_accepted
        if last is None or (self._checkpoint is not None and self._checkpoint.round >= last.round):
            self._checkpoint_round = self._uploader = None  # nothing (new) to save
        elif self._checkpoint_round != last.round:  # else: the round's upload is on its way
            self._checkpoint_round, self._uploader = last.round, None
        self._change(now, ev, _S.COOLDOWN, reason)

    def _to_paused(self, now: float, ev: list[Event], reason: str) -> None:
        self._pending_pause = False
        self._change(now, ev, _S.PAUSED, reason)
        ev.append(Paused())

    def _end_epoch(self, ev: list[Event], *, abandoned: bool) -> None:
        """Every live epoch client goes back to pending and every wait set empties; a
        checkpoint still asked of one of them is asked again in the next Cooldown. An epoch
        abandoned in Warmup gives its number to the next one."""
        self._uploader = None
        self._checkpoint_round = None
        self._release_members()
        self._not_warmed = set()
        self._witness_waiting = set()
        self._commit_waiting = set()
        self._vote_waiting = set()
        self._votes = VoteTally()
        ev.append(EpochEnded(self._epoch, abandoned=abandoned))
        if not abandoned:
            self._epoch += 1

    # ------------------------------------------------------------------ state changes

    def _deadline_reason(self, deadline: str) -> str:
        if deadline == _OPERATOR:
            return "ended by the operator"
        setting = DURATION[self._state]
        return f"{setting} ({getattr(self._cfg, setting):g}s) reached"

    def _change(self, now: float, ev: list[Event], new: RunState, reason: str) -> None:
        ev.append(StateChanged(self._state, new, reason, now))
        self._state = new
        self._phase_started = now
