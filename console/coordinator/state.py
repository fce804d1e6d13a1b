"""What the coordinator knows and shows: its fields, the snapshot, and the saved progress.

:class:`CoordinatorState` is the base of :class:`~console.coordinator.machine.Coordinator`:
it holds every field (clients, the epoch's members and the wait sets of its phases, votes,
rounds, checkpoint), builds the read-only views (``snapshot``, ``waiting_on``,
``next_wakeup``, ``to_state``) and keeps the client bookkeeping (health order, removal from
every wait set). It changes no run state; ``machine.py`` does.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from console.config import CoordinatorConfig
from console.coordinator.committee import VoteTally
from console.coordinator.events import Stall
from console.coordinator.records import Client, Round
from console.coordinator.saved import Progress, load_progress
from transport.fields import ErrorCode
from transport.state import (
    CheckpointRef,
    ClientStatus,
    ClientView,
    RoundOutcome,
    RoundView,
    RunSnapshot,
    RunState,
)

_S = RunState
ROUND_STATES = (RunState.ROUND_TRAIN, RunState.ROUND_WITNESS)
_EPOCH_STATES = (RunState.WARMUP, *ROUND_STATES, RunState.COOLDOWN)
# The setting that bounds each timed state (its deadline: phase_started + the setting).
DURATION = {
    _S.WARMUP: "warmup_time",
    _S.ROUND_TRAIN: "max_round_train_time",
    _S.ROUND_WITNESS: "round_witness_time",
    _S.COOLDOWN: "cooldown_time",
}


@dataclass(frozen=True)
class WaitingOn:
    """What the current phase waits for before it may end early (read-only, for UI and tests).

    ``commits`` is informational: trainers that have not committed do not hold a phase (the
    witnesses decide), but the operator wants to see them.
    """

    state: RunState
    members: int = 0  # WaitingForMembers: pending clients still missing
    warmup: frozenset[str] = frozenset()  # Warmup: epoch clients not warmed up
    witnesses: frozenset[str] = frozenset()  # open round: elected witnesses not yet reported
    commits: frozenset[str] = frozenset()  # open round: trainers not yet committed
    votes: frozenset[str] = frozenset()  # decided round: epoch clients not voted for round+1
    uploader: str | None = None  # Cooldown: the client asked for the checkpoint

    @property
    def clients(self) -> frozenset[str]:
        extra = frozenset() if self.uploader is None else frozenset({self.uploader})
        return self.warmup | self.witnesses | self.commits | self.votes | extra


class CoordinatorState:
    """The coordinator's fields and read side (see the module docstring)."""

    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        run_id: str,
        seed: int,
        train_set_size: int,
        now: float,
        restore: dict[str, Any] | None = None,
    ) -> None:
        problems = _config_problems(config, train_set_size)
        if problems:
            raise ValueError("invalid coordinator config: " + "; ".join(problems))
        self._cfg = config
        self._run_id = run_id
        self._seed = seed
        self._train_set_size = train_set_size
        self._state = RunState.WAITING_FOR_MEMBERS
        self._phase_started = now
        self._epoch = 0
        self._round = 0
        self._epoch_rounds = 0
        self._accepted_rounds = 0
        self._pending_pause = False
        self._clients: dict[str, Client] = {}
        self._sorted_ids: list[str] = []
        self._views: tuple[ClientView, ...] | None = None
        # Live clients by last_seen, oldest first, so health checks look at the front only.
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._seen_max = -math.inf
        self._seen_ordered = True
        self._pending: set[str] = set()
        self._epoch_live: set[str] = set()  # ACTIVE clients
        self._epoch_sorted: list[str] = []  # the same, sorted (elections need sorted ids)
        self._epoch_frozen: frozenset[str] | None = None  # cached for Round.members
        self._epoch_size = 0  # clients the epoch started with (bounds a vote's length)
        self._not_warmed: set[str] = set()
        self._witness_waiting: set[str] = set()
        self._commit_waiting: set[str] = set()
        self._vote_waiting: set[str] = set()
        self._votes = VoteTally()  # for round + 1
        # clients that said in their vote they will not train any more, with why
        self._declined: dict[str, str] = {}
        self._finish_reason: str | None = None  # no client left to train: Finished after Cooldown
        self._rounds: list[Round] = []
        self._compacted = 0  # the rounds numbered up to this hold no cached views (compact)
        self._last_accepted: Round | None = None
        self._checkpoint: CheckpointRef | None = None
        self._checkpoint_round: int | None = None  # the accepted round still to be saved
        self._uploader: str | None = None
        self._bans: dict[str, str] = {}  # banned id -> why (kick --ban; kept in to_state)
        self._known: set[str] = set()  # clients that were members of an epoch
        self._stall_phase = math.nan  # the WaitingForMembers (its start) _stall_at is for
        self._stall_at = math.inf  # when the next stall event is due
        if restore is not None:
            self._restore(restore)

    # ------------------------------------------------------------------ read side

    @property
    def state(self) -> RunState:
        return self._state

    @property
    def bans(self) -> dict[str, str]:
        """Banned ids and why (a copy)."""
        return dict(self._bans)

    @property
    def rounds(self) -> tuple[RoundView, ...]:
        """Every round of this run, oldest first (treat the views as read-only)."""
        return tuple(r.view() for r in self._rounds)

    def snapshot(self, now: float) -> RunSnapshot:
        """The broadcast state. O(clients) at worst; unchanged client views are reused."""
        if self._views is None:
            clients = self._clients
            self._views = tuple([clients[cid].view() for cid in self._sorted_ids])
        rounds = self._rounds
        return RunSnapshot(
            run_id=self._run_id,
            state=self._state,
            now=now,
            phase_started=self._phase_started,
            deadline=self._deadline(),
            epoch=self._epoch,
            round=self._round,
            epoch_rounds=self._epoch_rounds,
            accepted_rounds=self._accepted_rounds,
            total_rounds=self._cfg.total_rounds,
            rounds_per_epoch=self._cfg.rounds_per_epoch,
            init_min_clients=self._cfg.init_min_clients,
            min_clients=self._cfg.min_clients,
            pending_pause=self._pending_pause,
            clients=self._views,
            current=rounds[-1].view() if rounds else None,
            previous=rounds[-2].view() if len(rounds) > 1 else None,
            checkpoint=self._checkpoint,
            checkpoint_uploader=self._uploader,
        )

    def waiting_on(self) -> WaitingOn:
        """What the current phase waits for (live clients only, by construction)."""
        s = self._state
        if s is _S.WAITING_FOR_MEMBERS:
            return WaitingOn(s, members=max(0, self._members_needed() - len(self._pending)))
        if s is _S.WARMUP:
            return WaitingOn(s, warmup=frozenset(self._not_warmed))
        if s in ROUND_STATES:
            if self._rounds[-1].outcome is RoundOutcome.OPEN:
                return WaitingOn(
                    s,
                    witnesses=frozenset(self._witness_waiting),
                    commits=frozenset(self._commit_waiting),
                )
            return WaitingOn(s, votes=frozenset(self._vote_waiting))
        if s is _S.COOLDOWN:
            return WaitingOn(s, uploader=self._uploader)
        return WaitingOn(s)

    def next_wakeup(self, now: float) -> float | None:
        """The earliest time a ``tick`` could change something, so the server sleeps exactly.

        A value <= ``now`` means "tick now". None: only a message can change anything.
        """
        if self._state is _S.FINISHED:
            return None
        best = self._deadline()
        if self._state is _S.WAITING_FOR_MEMBERS and len(self._pending) >= self._members_needed():
            best = self._phase_started + self._cfg.waiting_for_members_extra_time
        stall = self._stall_due()
        if stall is not None:
            best = stall if best is None else min(best, stall)
        if self._seen:
            oldest = next(iter(self._seen.values())) if self._seen_ordered else None
            if oldest is None:
                oldest = min(self._seen.values())
            # A client is dropped when now > last_seen + timeout: the first such float.
            expiry = math.nextafter(oldest + self._cfg.health_timeout, math.inf)
            best = expiry if best is None else min(best, expiry)
        return best

    def settings_refused(
        self, config: CoordinatorConfig | None = None, train_set_size: int | None = None
    ) -> str | None:
        """Why :meth:`reconfigure` would refuse these settings now (None: it would take them):
        coordinator settings outside WaitingForMembers and Paused, or values that break the
        machine's invariants (the config rules check the rest)."""
        if config is not None and config != self._cfg and not self._settings_state_ok():
            then = "" if self._state is _S.FINISHED else "; pause the run first"
            return (
                f"coordinator settings change only in WaitingForMembers or Paused, not in "
                f"{self._state}{then}"
            )
        size = self._train_set_size if train_set_size is None else train_set_size
        problems = _config_problems(config or self._cfg, size)
        if (
            config is not None
            and config != self._cfg
            and config.total_rounds <= self._accepted_rounds
        ):
            problems.append(
                f"total_rounds must be > the {self._accepted_rounds} rounds already accepted"
            )
        return "; ".join(problems) or None

    def _settings_state_ok(self) -> bool:
        return self._state in (_S.WAITING_FOR_MEMBERS, _S.PAUSED)

    def _refusal_code(self, config: CoordinatorConfig | None) -> ErrorCode:
        if config is not None and config != self._cfg and not self._settings_state_ok():
            return ErrorCode.WRONG_STATE
        return ErrorCode.MALFORMED

    def _stall_due(self) -> float | None:
        """When WaitingForMembers, short of members with earlier members gone, says so next
        (None: it does not). The first time ``stall_warning_after`` after it began."""
        after = self._cfg.stall_warning_after
        if (
            self._state is not _S.WAITING_FOR_MEMBERS
            or after <= 0
            or len(self._pending) >= self._members_needed()
            or not (self._known or self._rounds)  # a first start, not a stall
        ):
            return None
        if self._stall_phase == self._phase_started:
            return self._stall_at
        return self._phase_started + after

    def _stall(self, now: float) -> Stall | None:
        """The stall event due at ``now``, if one is; the next one is due an interval later."""
        due = self._stall_due()
        if due is None or now < due:
            return None
        self._stall_phase = self._phase_started
        self._stall_at = now + self._cfg.stall_warning_after
        kicked = ClientStatus.KICKED
        missing = [
            cid
            for cid in sorted(self._known - self._pending)
            if self._clients[cid].status is not kicked
        ]
        return Stall(
            waited=now - self._phase_started,
            missing=tuple(missing),
            pending=tuple(sorted(self._pending)),
            needed=self._members_needed(),
            min_clients=self._cfg.min_clients,
        )

    def _members_needed(self) -> int:
        return max(self._cfg.init_min_clients, self._cfg.min_clients, 1)

    def _deadline(self) -> float | None:
        setting = DURATION.get(self._state)
        return None if setting is None else self._phase_started + getattr(self._cfg, setting)

    def rounds_after(self, round: int) -> list[RoundView]:
        """The rounds numbered above ``round``, oldest first (read-only views)."""
        return [r.view() for r in self._rounds_after(round)]

    def _rounds_after(self, round: int) -> list[Round]:
        start = len(self._rounds)
        while start > 0 and self._rounds[start - 1].round > round:
            start -= 1
        return self._rounds[start:]

    def compact(self, through: int) -> None:
        """Drop the cached views of the rounds numbered up to ``through`` (rebuilt when asked
        for): a caller that keeps those rounds elsewhere need not have them twice in memory."""
        for r in self._rounds_after(self._compacted):
            if r.round > through:
                break
            r.changed()
        self._compacted = max(self._compacted, through)

    def to_state(self, since: int = 0) -> dict[str, Any]:
        """JSON-able progress: enough to resume the run in a new console process.

        ``since``: leave out the rounds numbered up to it (the caller keeps them elsewhere and
        hands them back to ``restore``), so the state's size does not grow with the run.
        """
        return Progress(
            # a console resumed from this state starts a new epoch
            epoch=self._epoch + (1 if self._state in _EPOCH_STATES else 0),
            round=self._round,
            accepted_rounds=self._accepted_rounds,
            checkpoint=self._checkpoint,
            rounds=self._rounds_after(since),
            banned=dict(sorted(self._bans.items())),
        ).to_state(self._run_id, self._seed)

    def _restore(self, raw: dict[str, Any]) -> None:
        saved = load_progress(raw, run_id=self._run_id, seed=self._seed)
        self._epoch = saved.epoch
        self._round = saved.round
        self._accepted_rounds = saved.accepted_rounds
        self._rounds = saved.rounds
        self._last_accepted = saved.last_accepted
        self._checkpoint = saved.checkpoint
        for cid, why in saved.banned.items():
            c = Client(cid, ClientStatus.KICKED, "", 0.0)
            c.drop_reason = why
            self._clients[c.id] = c
            bisect.insort(self._sorted_ids, c.id)
        self._bans = dict(saved.banned)
        if self._accepted_rounds >= self._cfg.total_rounds:
            self._state = _S.FINISHED  # nothing left to do; raise total_rounds to go on

    # ------------------------------------------------------------------ clients

    def _enroll_pending(self) -> list[str]:
        """Every pending client becomes a member of the new epoch; their sorted ids."""
        members = sorted(self._pending)
        for cid in members:
            c = self._clients[cid]
            c.status = ClientStatus.ACTIVE
            c.warmed_up = False
            c.changed()
        self._views = None
        self._pending = set()
        self._known.update(members)
        self._epoch_live = set(members)
        self._epoch_sorted = members
        self._epoch_frozen = None
        self._epoch_size = len(members)
        return members

    def _release_members(self) -> None:
        """Every live member of the ending epoch goes back to pending, for the next one."""
        for cid in self._epoch_live:
            c = self._clients[cid]
            c.status = ClientStatus.PENDING
            c.changed()
        self._views = None
        self._pending |= self._epoch_live
        self._epoch_live = set()
        self._epoch_sorted = []
        self._epoch_frozen = None

    def _members(self) -> frozenset[str]:
        """The live members, frozen (cached until one leaves: every round shares it)."""
        if self._epoch_frozen is None:
            self._epoch_frozen = frozenset(self._epoch_live)
        return self._epoch_frozen

    def _client_changed(self, c: Client) -> None:
        c.changed()
        self._views = None

    def _touch(self, c: Client, now: float) -> None:
        c.last_seen = now
        self._client_changed(c)
        seen = self._seen
        if c.id in seen:
            seen.move_to_end(c.id)
        seen[c.id] = now
        if now >= self._seen_max:
            self._seen_max = now
        else:  # a clock step back: fall back to one sort at the next health check
            self._seen_ordered = False

    def _expired(self, now: float) -> list[tuple[str, float]]:
        """Live clients silent for longer than health_timeout, with when they were last seen."""
        if not self._seen_ordered:
            self._seen = OrderedDict(sorted(self._seen.items(), key=lambda kv: kv[1]))
            self._seen_ordered = True
        timeout = self._cfg.health_timeout
        out: list[tuple[str, float]] = []
        for cid, seen in self._seen.items():
            if now <= seen + timeout:
                break
            out.append((cid, seen))
        return out

    def _remove(self, cid: str, status: ClientStatus, reason: str) -> None:
        """Take a live client out of the run and out of every wait set."""
        c = self._clients[cid]
        was = c.status
        c.status = status
        c.drop_reason = reason
        self._client_changed(c)
        self._seen.pop(cid, None)
        if was is ClientStatus.PENDING:
            self._pending.discard(cid)
            return
        self._epoch_live.discard(cid)
        del self._epoch_sorted[bisect.bisect_left(self._epoch_sorted, cid)]
        self._epoch_frozen = None
        self._not_warmed.discard(cid)
        self._witness_waiting.discard(cid)
        self._commit_waiting.discard(cid)
        self._vote_waiting.discard(cid)
        self._votes.forget(cid)
        if self._uploader == cid:
            self._uploader = None  # _settle picks the next one


def _config_problems(cfg: CoordinatorConfig, train_set_size: int) -> list[str]:
    """Only what would break the state machine's invariants; config.py reports the rest."""
    problems = []
    for name in ("total_rounds", "rounds_per_epoch", "min_clients"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name} must be >= 1")
    for name in (
        "waiting_for_members_extra_time",
        "warmup_time",
        "max_round_train_time",
        "round_witness_time",
        "cooldown_time",
    ):
        if not getattr(cfg, name) >= 0:
            problems.append(f"{name} must be >= 0")
    if not cfg.health_timeout > 0:
        problems.append("health_timeout must be > 0")
    if cfg.witness_nodes < 0:
        problems.append("witness_nodes must be >= 0")
    if train_set_size < 0:
        problems.append("train_set_size must be >= 0")
    return problems
