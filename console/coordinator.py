"""The round state machine: pure, clock-free, seeded.

The coordinator is a plain object over plain data. The server feeds it every message and a
periodic ``tick(now)`` with its own ``time.monotonic()``; the coordinator returns an
:class:`~console.events.Outcome` (events, or a rejection that changed nothing) and never does
I/O, reads a clock or draws from global randomness. That is what lets the tests drive every
transition with a fake clock in milliseconds. ``docs/ARCHITECTURE.md`` is the contract; the
notes below record the choices it leaves open.

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
* A Warmup never starts below ``min_clients`` (it would be abandoned at once), so
  WaitingForMembers needs ``max(init_min_clients, min_clients, 1)`` pending clients.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from console.events import (
    AggregateReported,
    CheckpointRequested,
    CheckpointSaved,
    ClientDropped,
    ClientJoined,
    ClientKicked,
    ClientLeft,
    ClientWarmedUp,
    EpochEnded,
    EpochStarted,
    Event,
    Outcome,
    Paused,
    PauseRequested,
    Rejection,
    ResultAccepted,
    ResultCommitted,
    ResultRejected,
    Resumed,
    RoundEnded,
    RoundStarted,
    RunFinished,
    StateChanged,
    VoteCast,
    WitnessReported,
)
from console.selection import (
    decide_results,
    elect_witnesses,
    quorum,
    round_seed,
    seeded_prefix,
    tally_votes,
    top_candidates,
)
from console.settings import CoordinatorConfig
from transport.state import (
    CheckpointRef,
    ClientStatus,
    ClientView,
    ResultRef,
    RoundOutcome,
    RoundView,
    RunSnapshot,
    RunState,
    round_to_dict,  # a saved state keeps its rounds in the broadcast's form
)

__all__ = [
    "Coordinator",
    "Event",
    "Outcome",
    "Rejection",
    "WaitingOn",
    "elect_witnesses",
    "quorum",
    "round_seed",
    "tally_votes",
]

STATE_VERSION = 1
MAX_AUTO_WITNESSES = 32  # witness_nodes = 0 means "every live client, up to this many"

_OK = Outcome()
_S = RunState
_ROUND_STATES = (RunState.ROUND_TRAIN, RunState.ROUND_WITNESS)
_EPOCH_STATES = (RunState.WARMUP, *_ROUND_STATES, RunState.COOLDOWN)


def _reject(code: str, reason: str) -> Outcome:
    return Outcome(rejection=Rejection(code, reason))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: object) -> bool:
    return isinstance(value, str) and value != ""


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


def _fast_client_view(**fields: Any) -> ClientView:
    """A ClientView without the frozen dataclass's per-field ``object.__setattr__``.

    2-3x cheaper, which matters when an epoch boundary rebuilds 1,000 views in one snapshot.
    Only used while ClientView keeps a plain ``__dict__`` (checked below, and a test compares
    it with the real constructor).
    """
    view = _new(ClientView)
    view.__dict__.update(fields)
    return view


_new = object.__new__
_client_view: Any = (
    _fast_client_view
    if "__slots__" not in vars(ClientView) and not hasattr(ClientView, "__post_init__")
    else ClientView
)


class _Client:
    """One client's mutable record; its :class:`ClientView` is cached until it changes."""

    __slots__ = (
        "id",
        "status",
        "endpoint",
        "warmed_up",
        "last_seen",
        "joined_at",
        "drop_reason",
        "public_key",
        "_view",
    )

    def __init__(self, cid: str, status: ClientStatus, endpoint: str, now: float) -> None:
        self.id = cid
        self.status = status
        self.endpoint = endpoint
        self.warmed_up = False
        self.last_seen = now
        self.joined_at = now
        self.drop_reason = ""
        self.public_key = ""
        self._view: ClientView | None = None

    def view(self) -> ClientView:
        if self._view is None:
            self._view = _client_view(
                id=self.id,
                status=self.status,
                gossip_endpoint=self.endpoint,
                warmed_up=self.warmed_up,
                last_seen=self.last_seen,
                joined_at=self.joined_at,
                drop_reason=self.drop_reason,
                public_key=self.public_key,
            )
        return self._view


class _Round:
    """One round's mutable record; its :class:`RoundView` is cached until it changes."""

    __slots__ = (
        "round",
        "epoch",
        "seed",
        "train_set",
        "witnesses",
        "quorum",
        "started",
        "ended",
        "outcome",
        "commits",
        "attestations",
        "accepted",
        "aggregates",
        "members",
        "_view",
        "_dict",
    )

    def __init__(self, view: RoundView, members: frozenset[str] = frozenset()) -> None:
        self.round = view.round
        self.epoch = view.epoch
        self.seed = view.seed
        self.train_set = view.train_set
        self.witnesses = view.witnesses
        self.quorum = view.quorum
        self.started = view.started
        self.ended = view.ended
        self.outcome = view.outcome
        self.commits: dict[str, ResultRef] = dict(view.commits)
        self.attestations: dict[str, dict[str, str]] = {
            w: dict(a) for w, a in view.attestations.items()
        }
        self.accepted: dict[str, ResultRef] = dict(view.accepted)
        self.aggregates: dict[str, str] = dict(view.aggregates)
        self.members = members  # live epoch clients at the start (not persisted)
        self._view: RoundView | None = None
        self._dict: dict[str, Any] | None = None

    def changed(self) -> None:
        self._view = None
        self._dict = None

    def as_dict(self) -> dict[str, Any]:
        """:func:`round_to_dict` of the view, cached like it (treat it as read-only)."""
        if self._dict is None:
            self._dict = round_to_dict(self.view())
        return self._dict

    def view(self) -> RoundView:
        if self._view is None:
            self._view = RoundView(
                round=self.round,
                epoch=self.epoch,
                seed=self.seed,
                train_set=self.train_set,
                witnesses=self.witnesses,
                quorum=self.quorum,
                started=self.started,
                ended=self.ended,
                outcome=self.outcome,
                commits=dict(self.commits),
                attestations={w: dict(a) for w, a in self.attestations.items()},
                accepted=dict(self.accepted),
                aggregates=dict(self.aggregates),
            )
        return self._view


def round_from_dict(raw: Any) -> RoundView:
    """Parse one round of a saved state (``to_state``); ValueError names what is wrong."""
    try:
        return _parse_round(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"saved round is malformed: {exc!r}") from exc


def _parse_round(raw: dict[str, Any]) -> RoundView:
    def ref(x: dict[str, Any]) -> ResultRef:
        if not isinstance(x["hash"], str) or not _is_int(x["samples"]):
            raise ValueError(f"bad result {x!r}")
        return ResultRef(hash=x["hash"], samples=x["samples"])

    for key in ("round", "epoch", "seed", "quorum"):
        if not _is_int(raw[key]):
            raise ValueError(f"{key} must be an integer, not {raw[key]!r}")
    ended = raw.get("ended")
    return RoundView(
        round=raw["round"],
        epoch=raw["epoch"],
        seed=raw["seed"],
        train_set=tuple(str(x) for x in raw["train_set"]),
        witnesses=tuple(str(x) for x in raw["witnesses"]),
        quorum=raw["quorum"],
        started=float(raw["started"]),
        ended=None if ended is None else float(ended),
        outcome=RoundOutcome(raw["outcome"]),
        commits={str(k): ref(v) for k, v in raw.get("commits", {}).items()},
        attestations={
            str(w): {str(t): str(h) for t, h in a.items()}
            for w, a in raw.get("attestations", {}).items()
        },
        accepted={str(k): ref(v) for k, v in raw.get("accepted", {}).items()},
        aggregates={str(k): str(v) for k, v in raw.get("aggregates", {}).items()},
    )


class Coordinator:
    """Psyche's coordinator state machine, with ARCHITECTURE.md's round protocol."""

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
        self._clients: dict[str, _Client] = {}
        self._sorted_ids: list[str] = []
        self._views: tuple[ClientView, ...] | None = None
        # Live clients by last_seen, oldest first, so health checks look at the front only.
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._seen_max = -math.inf
        self._seen_ordered = True
        self._pending: set[str] = set()
        self._epoch_live: set[str] = set()  # ACTIVE clients
        self._epoch_sorted: list[str] = []  # the same, sorted (elections need sorted ids)
        self._epoch_frozen: frozenset[str] | None = None  # cached for _Round.members
        self._epoch_size = 0  # clients the epoch started with (bounds a vote's length)
        self._not_warmed: set[str] = set()
        self._witness_waiting: set[str] = set()
        self._commit_waiting: set[str] = set()
        self._vote_waiting: set[str] = set()
        # Votes for round + 1, and their running sum, so a round start only ranks.
        self._next_votes: dict[str, tuple[tuple[str, int], ...]] = {}
        self._tally: defaultdict[str, int] = defaultdict(int)
        self._named: defaultdict[str, int] = defaultdict(int)  # how many votes name each
        self._rounds: list[_Round] = []
        self._last_accepted: _Round | None = None
        self._checkpoint: CheckpointRef | None = None
        self._checkpoint_round: int | None = None  # the accepted round still to be saved
        self._uploader: str | None = None
        if restore is not None:
            self._restore(restore, now)

    # ------------------------------------------------------------------ read side

    @property
    def state(self) -> RunState:
        return self._state

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
        if s in _ROUND_STATES:
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
        if self._seen:
            oldest = next(iter(self._seen.values())) if self._seen_ordered else None
            if oldest is None:
                oldest = min(self._seen.values())
            # A client is dropped when now > last_seen + timeout: the first such float.
            expiry = math.nextafter(oldest + self._cfg.health_timeout, math.inf)
            best = expiry if best is None else min(best, expiry)
        return best

    # ------------------------------------------------------------------ membership

    def join(
        self,
        client_id: str,
        run_id: str,
        now: float,
        *,
        gossip_endpoint: str = "",
        public_key: str = "",
    ) -> Outcome:
        """``public_key``: the CURVE key the client connected with ("" without CURVE); it is
        broadcast so peers can reach its gossip socket, and a live client's id stays bound to it.
        """
        if not (_is_id(client_id) and isinstance(gossip_endpoint, str)):
            return _reject("malformed", "join needs a non-empty client id and a string endpoint")
        if not isinstance(public_key, str):
            return _reject("malformed", "join's public key must be a string")
        if run_id != self._run_id:
            return _reject(
                "wrong_run_id", f"run_id {run_id!r} does not match this run ({self._run_id!r})"
            )
        if self._state is _S.FINISHED:
            return _reject("wrong_state", "the run is finished")
        c = self._clients.get(client_id)
        if c is not None and c.status is ClientStatus.KICKED:
            return _reject("kicked", f"{client_id} was kicked by the operator")
        if (
            c is not None
            and c.status in (ClientStatus.PENDING, ClientStatus.ACTIVE)
            and c.public_key != public_key
        ):
            return _reject("duplicate", f"{client_id} is in the run with another key")
        ev: list[Event] = []
        if c is None:
            c = _Client(client_id, ClientStatus.PENDING, gossip_endpoint, now)
            self._clients[client_id] = c
            bisect.insort(self._sorted_ids, client_id)
            self._pending.add(client_id)
            ev.append(ClientJoined(client_id, rejoined=False))
        elif c.status in (ClientStatus.PENDING, ClientStatus.ACTIVE):
            c.endpoint = gossip_endpoint  # a reconnect: same status, fresh endpoint
            ev.append(ClientJoined(client_id, rejoined=True))
        else:  # dropped or left: back as pending, for the next epoch
            c.status = ClientStatus.PENDING
            c.endpoint = gossip_endpoint
            c.warmed_up = False
            c.drop_reason = ""
            c.joined_at = now
            self._pending.add(client_id)
            ev.append(ClientJoined(client_id, rejoined=True))
        c.public_key = public_key
        self._touch(c, now)
        self._settle(now, ev)
        return Outcome(tuple(ev))

    def heartbeat(self, client_id: str, now: float) -> Outcome:
        if self._state is _S.FINISHED:
            return _reject("wrong_state", "the run is finished")
        c = self._sender(client_id, member=False)
        if isinstance(c, Rejection):
            return Outcome(rejection=c)
        self._touch(c, now)
        return _OK

    def leave(self, client_id: str, now: float) -> Outcome:
        if self._state is _S.FINISHED:
            return _reject("wrong_state", "the run is finished")
        c = self._sender(client_id, member=False)
        if isinstance(c, Rejection):
            return Outcome(rejection=c)
        ev: list[Event] = []
        self._remove(client_id, ClientStatus.LEFT, "left")
        ev.append(ClientLeft(client_id))
        self._settle(now, ev)
        return Outcome(tuple(ev))

    def drop(self, client_id: str, reason: str, now: float) -> Outcome:
        if self._state is _S.FINISHED:
            return _reject("wrong_state", "the run is finished")
        if not isinstance(reason, str):
            return _reject("malformed", "a drop reason must be a string")
        c = self._sender(client_id, member=False)
        if isinstance(c, Rejection):
            return Outcome(rejection=c)
        ev: list[Event] = []
        self._remove(client_id, ClientStatus.DROPPED, reason)
        ev.append(ClientDropped(client_id, reason))
        self._settle(now, ev)
        return Outcome(tuple(ev))

    def kick(self, client_id: str, now: float) -> Outcome:
        if self._state is _S.FINISHED:
            return _reject("wrong_state", "the run is finished")
        c = self._clients.get(client_id) if isinstance(client_id, str) else None
        if c is None:
            return _reject("not_member", f"unknown client {client_id!r}")
        if c.status is ClientStatus.KICKED:
            return _reject("duplicate", f"{client_id} is already kicked")
        ev: list[Event] = []
        if c.status in (ClientStatus.PENDING, ClientStatus.ACTIVE):
            self._remove(client_id, ClientStatus.KICKED, "kicked by the operator")
        else:
            c.status = ClientStatus.KICKED
            c.drop_reason = "kicked by the operator"
            self._client_changed(c)
        ev.append(ClientKicked(client_id))
        self._settle(now, ev)
        return Outcome(tuple(ev))

    # ------------------------------------------------------------------ protocol

    def warmed_up(self, client_id: str, now: float, *, model_hash: str = "") -> Outcome:
        if self._state is _S.FINISHED:
            return _reject("wrong_state", "the run is finished")
        if not isinstance(model_hash, str):
            return _reject("malformed", "model_hash must be a string")
        c = self._sender(client_id, member=True)
        if isinstance(c, Rejection):
            return Outcome(rejection=c)
        if self._state not in (_S.WARMUP, *_ROUND_STATES):
            return _reject("wrong_state", f"warmed_up is not expected in {self._state}")
        if c.warmed_up:
            return _reject("duplicate", f"{client_id} already reported warmed up")
        c.warmed_up = True  # after a Warmup timeout a late report is recorded, nothing waits
        self._not_warmed.discard(client_id)
        self._touch(c, now)
        ev: list[Event] = [ClientWarmedUp(client_id, model_hash)]
        self._settle(now, ev)
        return Outcome(tuple(ev))

    def vote(
        self, client_id: str, round: int, candidates: Sequence[tuple[str, int]], now: float
    ) -> Outcome:
        if self._state is _S.FINISHED:
            return _reject("wrong_state", "the run is finished")
        if not _is_int(round):
            return _reject("malformed", f"round must be an integer, not {round!r}")
        c = self._sender(client_id, member=True)
        if isinstance(c, Rejection):
            return Outcome(rejection=c)
        if self._state not in (_S.WARMUP, *_ROUND_STATES):
            return _reject("wrong_state", f"no round to vote for in {self._state}")
        if round != self._round + 1:
            return _reject(
                "wrong_round", f"votes are for round {self._round + 1}, not round {round}"
            )
        if client_id in self._next_votes:
            return _reject("duplicate", f"{client_id} already voted for round {round}")
        parsed = _parse_candidates(candidates, self._epoch_size)
        if isinstance(parsed, str):
            return _reject("malformed", parsed)
        self._next_votes[client_id] = parsed
        for candidate, weight in parsed:
            self._tally[candidate] += weight
            self._named[candidate] += 1
        self._vote_waiting.discard(client_id)
        self._touch(c, now)
        ev: list[Event] = [VoteCast(round, client_id)]
        self._settle(now, ev)
        return Outcome(tuple(ev))

    def commit(self, client_id: str, round: int, result: ResultRef, now: float) -> Outcome:
        if self._state is _S.FINISHED:
            return _reject("wrong_state", "the run is finished")
        if not _is_int(round):
            return _reject("malformed", f"round must be an integer, not {round!r}")
        if (
            not isinstance(result, ResultRef)
            or not _is_id(result.hash)
            or not _is_int(result.samples)
            or result.samples < 0
        ):
            return _reject("malformed", "a commit needs a hash and a sample count >= 0")
        c = self._sender(client_id, member=True)
        if isinstance(c, Rejection):
            return Outcome(rejection=c)
        refused = self._open_round_check(round)
        if refused is not None:
            return Outcome(rejection=refused)
        r = self._rounds[-1]
        if client_id not in r.train_set:
            return _reject("not_member", f"{client_id} is not in the train set of round {round}")
        if client_id in r.commits:
            return _reject("duplicate", f"{client_id} already committed round {round}")
        r.commits[client_id] = result
        r.changed()
        self._commit_waiting.discard(client_id)
        self._touch(c, now)
        return Outcome((ResultCommitted(round, client_id, result.hash),))

    def witness(
        self, client_id: str, round: int, attestations: Mapping[str, str], now: float
    ) -> Outcome:
        if self._state is _S.FINISHED:
            return _reject("wrong_state", "the run is finished")
        if not _is_int(round):
            return _reject("malformed", f"round must be an integer, not {round!r}")
        if not isinstance(attestations, Mapping) or not all(
            _is_id(t) and _is_id(h) for t, h in attestations.items()
        ):
            return _reject("malformed", "attestations must map trainer ids to hash strings")
        c = self._sender(client_id, member=True)
        if isinstance(c, Rejection):
            return Outcome(rejection=c)
        refused = self._open_round_check(round)
        if refused is not None:
            return Outcome(rejection=refused)
        r = self._rounds[-1]
        if client_id not in r.witnesses:
            return _reject("not_witness", f"{client_id} is not a witness of round {round}")
        if client_id in r.attestations:
            return _reject("duplicate", f"{client_id} already reported as witness of round {round}")
        strangers = [t for t in attestations if t not in r.train_set]
        if strangers:
            return _reject(
                "malformed", f"{strangers[0]!r} is not in the train set of round {round}"
            )
        r.attestations[client_id] = dict(attestations)
        r.changed()
        self._witness_waiting.discard(client_id)
        self._touch(c, now)
        ev: list[Event] = [WitnessReported(round, client_id, len(attestations))]
        self._settle(now, ev)
        return Outcome(tuple(ev))

    def report_aggregate(self, client_id: str, round: int, model_hash: str, now: float) -> Outcome:
        if self._state is _S.FINISHED:
            return _reject("wrong_state", "the run is finished")
        if not _is_int(round) or not _is_id(model_hash):
            return _reject("malformed", "an aggregate needs an integer round and a hash")
        c = self._sender(client_id, member=False)
        if isinstance(c, Rejection):
            return Outcome(rejection=c)
        r = next((x for x in self._rounds[-2:] if x.round == round), None)
        if r is None:
            return _reject("wrong_round", f"round {round} is not the current or previous round")
        if r.outcome is not RoundOutcome.ACCEPTED:
            return _reject("wrong_round", f"round {round} has no accepted set ({r.outcome})")
        if client_id not in r.members:
            return _reject("not_member", f"{client_id} did not take part in round {round}")
        if client_id in r.aggregates:
            return _reject("duplicate", f"{client_id} already reported its round {round} model")
        r.aggregates[client_id] = model_hash
        r.changed()
        self._touch(c, now)
        return Outcome((AggregateReported(round, client_id, model_hash),))

    def checkpoint_saved(self, ref: CheckpointRef, now: float) -> Outcome:
        if self._state is _S.FINISHED:
            return _reject("wrong_state", "the run is finished")
        if (
            not isinstance(ref, CheckpointRef)
            or not _is_int(ref.epoch)
            or not _is_int(ref.round)
            or not _is_id(ref.hash)
        ):
            return _reject("malformed", "a checkpoint needs an integer epoch and round and a hash")
        if self._checkpoint_round is None:
            return _reject("wrong_state", f"no checkpoint is expected in {self._state}")
        if ref.epoch != self._epoch:
            return _reject("wrong_state", f"checkpoint of epoch {ref.epoch}; this is {self._epoch}")
        if ref.round != self._checkpoint_round:
            return _reject(
                "wrong_round",
                f"checkpoint of round {ref.round}; round {self._checkpoint_round} was requested",
            )
        self._checkpoint = ref
        self._checkpoint_round = None
        self._uploader = None
        ev: list[Event] = [CheckpointSaved(ref.epoch, ref.round, ref.hash)]
        if self._state is _S.COOLDOWN:
            self._end_cooldown(now, ev, f"checkpoint of round {ref.round} saved")
        self._settle(now, ev)
        return Outcome(tuple(ev))

    # ------------------------------------------------------------------ operator and clock

    def pause(self, now: float) -> Outcome:
        s = self._state
        if s in (_S.FINISHED, _S.PAUSED):
            return _reject("wrong_state", f"cannot pause in {s}")
        if self._pending_pause:
            return _reject("duplicate", "a pause is already pending")
        ev: list[Event] = []
        if s is _S.WAITING_FOR_MEMBERS:
            self._change(now, ev, _S.PAUSED, "paused by the operator")
            ev.append(Paused())
        elif s is _S.WARMUP:
            self._abandon_epoch(now, ev, _S.PAUSED, "paused by the operator during warmup")
            ev.append(Paused())
        else:
            self._pending_pause = True
            ev.append(PauseRequested())
        self._settle(now, ev)
        return Outcome(tuple(ev))

    def resume(self, now: float) -> Outcome:
        if self._state is not _S.PAUSED:
            return _reject("wrong_state", f"only a paused run resumes, not {self._state}")
        ev: list[Event] = []
        self._change(now, ev, _S.WAITING_FOR_MEMBERS, "resumed by the operator")
        ev.append(Resumed())
        self._settle(now, ev)
        return Outcome(tuple(ev))

    def end_phase(self, now: float) -> Outcome:
        """The operator's "next": act as if the current phase's deadline were reached now."""
        s = self._state
        if s in (_S.FINISHED, _S.PAUSED):
            return _reject("wrong_state", f"{s} has no phase to end")
        ev: list[Event] = []
        if s is _S.WAITING_FOR_MEMBERS:
            missing = self._members_needed() - len(self._pending)
            if missing > 0:
                return _reject("wrong_state", f"waiting for {missing} more members")
            self._start_epoch(now, ev, "the operator ended the wait for members")
        else:
            self._expire(now, ev, "ended by the operator")
        self._settle(now, ev)
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
            self._expire(now, ev, None)
            self._settle(now, ev)
        return Outcome(tuple(ev)) if ev else _OK

    # ------------------------------------------------------------------ persistence

    def rounds_after(self, round: int) -> list[RoundView]:
        """The rounds numbered above ``round``, oldest first (read-only views)."""
        return [r.view() for r in self._rounds_after(round)]

    def _rounds_after(self, round: int) -> list[_Round]:
        start = len(self._rounds)
        while start > 0 and self._rounds[start - 1].round > round:
            start -= 1
        return self._rounds[start:]

    def to_state(self, since: int = 0) -> dict[str, Any]:
        """JSON-able progress: enough to resume the run in a new console process.

        ``since``: leave out the rounds numbered up to it (the caller keeps them elsewhere and
        hands them back to ``restore``), so the state's size does not grow with the run.
        """
        return {
            "version": STATE_VERSION,
            "run_id": self._run_id,
            "seed": self._seed,
            # a console resumed from this state starts a new epoch
            "epoch": self._epoch + (1 if self._state in _EPOCH_STATES else 0),
            "round": self._round,
            "accepted_rounds": self._accepted_rounds,
            "checkpoint": msgspec.to_builtins(self._checkpoint),
            "rounds": [r.as_dict() for r in self._rounds_after(since)],
            "kicked": sorted(
                cid for cid, c in self._clients.items() if c.status is ClientStatus.KICKED
            ),
        }

    def _restore(self, raw: dict[str, Any], now: float) -> None:
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            raise ValueError(f"saved state must be a dict with version {STATE_VERSION}")
        if raw.get("run_id") != self._run_id:
            raise ValueError(f"saved state is for run {raw.get('run_id')!r}, not {self._run_id!r}")
        if raw.get("seed") != self._seed:
            raise ValueError(f"saved state has seed {raw.get('seed')!r}, not {self._seed}")
        for key in ("epoch", "round", "accepted_rounds"):
            if not _is_int(raw.get(key)) or raw[key] < 0:
                raise ValueError(f"saved state: {key} must be an integer >= 0")
        rounds = [_Round(round_from_dict(x)) for x in raw.get("rounds", [])]
        numbers = [r.round for r in rounds]
        if any(b <= a for a, b in zip(numbers, numbers[1:], strict=False)):
            raise ValueError("saved state: round numbers must increase")
        for r in rounds:
            if r.outcome is RoundOutcome.OPEN:  # the console stopped mid-round
                r.outcome = RoundOutcome.ABANDONED
        cp = raw.get("checkpoint")
        if cp is not None:
            if not (_is_int(cp.get("epoch")) and _is_int(cp.get("round"))):
                raise ValueError("saved state: checkpoint needs an integer epoch and round")
            cp = CheckpointRef(epoch=cp["epoch"], round=cp["round"], hash=str(cp["hash"]))
        self._epoch = raw["epoch"]
        self._round = max([raw["round"], *numbers])
        self._accepted_rounds = raw["accepted_rounds"]
        self._rounds = rounds
        self._last_accepted = next(
            (r for r in reversed(rounds) if r.outcome is RoundOutcome.ACCEPTED), None
        )
        self._checkpoint = cp
        for cid in raw.get("kicked", []):
            c = _Client(str(cid), ClientStatus.KICKED, "", 0.0)
            c.drop_reason = "kicked by the operator"
            self._clients[c.id] = c
            bisect.insort(self._sorted_ids, c.id)
        if self._accepted_rounds >= self._cfg.total_rounds:
            self._state = _S.FINISHED  # nothing left to do; raise total_rounds to go on

    # ------------------------------------------------------------------ internals: clients

    def _sender(self, client_id: str, *, member: bool) -> _Client | Rejection:
        """The live client behind a message, or why it may not send it."""
        c = self._clients.get(client_id) if isinstance(client_id, str) else None
        if c is None:
            return Rejection("not_member", f"unknown client {client_id!r}; join first")
        if c.status is ClientStatus.KICKED:
            return Rejection("kicked", f"{client_id} was kicked by the operator")
        if c.status is ClientStatus.DROPPED:
            return Rejection("not_member", f"{client_id} was dropped ({c.drop_reason}); join again")
        if c.status is ClientStatus.LEFT:
            return Rejection("not_member", f"{client_id} left the run; join again")
        if member and c.status is not ClientStatus.ACTIVE:
            if self._state in (_S.WAITING_FOR_MEMBERS, _S.PAUSED):
                return Rejection("wrong_state", f"no epoch is in progress ({self._state})")
            return Rejection(
                "not_member", f"{client_id} is pending: not a member of epoch {self._epoch}"
            )
        return c

    def _client_changed(self, c: _Client) -> None:
        c._view = None
        self._views = None

    def _touch(self, c: _Client, now: float) -> None:
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
        self._forget_vote(cid)
        if self._uploader == cid:
            self._uploader = None  # _settle picks the next one

    def _forget_vote(self, cid: str) -> None:
        """A departed voter's vote no longer counts (as if it had never been cast)."""
        vote = self._next_votes.pop(cid, None)
        for candidate, weight in vote or ():
            self._tally[candidate] -= weight
            self._named[candidate] -= 1
            if not self._named[candidate]:
                del self._named[candidate], self._tally[candidate]

    def _reset_votes(self) -> None:
        self._next_votes = {}
        self._tally = defaultdict(int)
        self._named = defaultdict(int)

    def _members_needed(self) -> int:
        return max(self._cfg.init_min_clients, self._cfg.min_clients, 1)

    # ------------------------------------------------------------------ internals: phases

    def _deadline(self) -> float | None:
        cfg = self._cfg
        duration = {
            _S.WARMUP: cfg.warmup_time,
            _S.ROUND_TRAIN: cfg.max_round_train_time,
            _S.ROUND_WITNESS: cfg.round_witness_time,
            _S.COOLDOWN: cfg.cooldown_time,
        }.get(self._state)
        return None if duration is None else self._phase_started + duration

    def _change(self, now: float, ev: list[Event], new: RunState, reason: str) -> None:
        ev.append(StateChanged(self._state, new, reason, now))
        self._state = new
        self._phase_started = now

    def _open_round_check(self, round: int) -> Rejection | None:
        if self._state not in _ROUND_STATES:
            return Rejection("wrong_state", f"no round is open in {self._state}")
        if round != self._round:
            return Rejection("wrong_round", f"round {round} is not the current round {self._round}")
        if self._rounds[-1].outcome is not RoundOutcome.OPEN:
            return Rejection("wrong_state", f"round {round} is already decided")
        return None

    def _settle(self, now: float, ev: list[Event]) -> None:
        """Apply every condition-driven transition until none applies (terminates: each
        cycle through the phases needs a new message or a timeout)."""
        for _ in range(32):
            if not self._step(now, ev):
                return
        raise RuntimeError("coordinator did not settle; this is a bug")

    def _step(self, now: float, ev: list[Event]) -> bool:
        s = self._state
        cfg = self._cfg
        live = len(self._epoch_live)
        if s is _S.WAITING_FOR_MEMBERS:
            n = len(self._pending)
            if (
                n >= self._members_needed()
                and now >= self._phase_started + cfg.waiting_for_members_extra_time
            ):
                self._start_epoch(now, ev, f"{n} clients pending")
                return True
        elif s is _S.WARMUP:
            if live < cfg.min_clients:
                self._abandon_epoch(
                    now, ev, _S.WAITING_FOR_MEMBERS, f"fewer than min_clients ({live} live)"
                )
                return True
            if not self._not_warmed:
                self._start_round(now, ev, "every live epoch client warmed up")
                return True
        if s in _ROUND_STATES and self._checkpoint_round is not None and self._uploader is None:
            if not self._pick_uploader(ev):  # nobody left to ask: Cooldown asks again
                self._checkpoint_round = None
            return True
        if s is _S.ROUND_TRAIN:
            if live < cfg.min_clients:
                self._abandon_round(now, ev, f"fewer than min_clients ({live} live)")
                return True
            if not self._witness_waiting:
                self._change(now, ev, _S.ROUND_WITNESS, "every live witness reported")
                return True
        elif s is _S.ROUND_WITNESS:
            if self._rounds[-1].outcome is RoundOutcome.OPEN:
                if not self._witness_waiting:
                    self._decide(now, ev)
                    return True
            elif self._cooldown_reason() is not None or not self._vote_waiting:
                self._end_round(now, ev, "every live epoch client voted")
                return True
        elif s is _S.COOLDOWN:
            if self._checkpoint_round is None:
                saved = self._checkpoint
                why = "nothing to checkpoint"
                if saved is not None and self._last_accepted is not None:
                    if saved.round == self._last_accepted.round:
                        why = f"checkpoint of round {saved.round} saved"
                self._end_cooldown(now, ev, why)
                return True
            if self._uploader is None:
                if not self._pick_uploader(ev):
                    self._end_cooldown(now, ev, "no live client left to upload the checkpoint")
                return True
        return False

    def _expire(self, now: float, ev: list[Event], why: str | None) -> None:
        """The current phase's deadline is reached (``why`` None: by the clock)."""
        s = self._state
        cfg = self._cfg
        if s is _S.WARMUP:
            self._start_round(now, ev, why or f"warmup_time ({cfg.warmup_time:g}s) reached")
        elif s is _S.ROUND_TRAIN:
            reason = why or f"max_round_train_time ({cfg.max_round_train_time:g}s) reached"
            self._change(now, ev, _S.ROUND_WITNESS, reason)
        elif s is _S.ROUND_WITNESS:
            if self._rounds[-1].outcome is RoundOutcome.OPEN:
                self._decide(now, ev)
            self._end_round(
                now, ev, why or f"round_witness_time ({cfg.round_witness_time:g}s) reached"
            )
        elif s is _S.COOLDOWN:
            self._end_cooldown(now, ev, why or f"cooldown_time ({cfg.cooldown_time:g}s) reached")

    def _start_epoch(self, now: float, ev: list[Event], reason: str) -> None:
        members = sorted(self._pending)
        for cid in members:
            c = self._clients[cid]
            c.status = ClientStatus.ACTIVE
            c.warmed_up = False
            c._view = None
        self._views = None
        self._pending = set()
        self._epoch_live = set(members)
        self._epoch_sorted = members
        self._epoch_frozen = None
        self._epoch_size = len(members)
        self._not_warmed = set(members)
        self._vote_waiting = set(members)
        self._reset_votes()
        self._epoch_rounds = 0
        self._change(now, ev, _S.WARMUP, reason)
        ev.append(EpochStarted(self._epoch, tuple(members)))

    def _release_epoch(self) -> None:
        """Every live epoch client goes back to pending; the epoch's wait sets empty, and a
        checkpoint still asked of one of them is asked again in the next Cooldown."""
        self._uploader = None
        self._checkpoint_round = None
        for cid in self._epoch_live:
            c = self._clients[cid]
            c.status = ClientStatus.PENDING
            c._view = None
        self._views = None
        self._pending |= self._epoch_live
        self._epoch_live = set()
        self._epoch_sorted = []
        self._epoch_frozen = None
        self._not_warmed = set()
        self._witness_waiting = set()
        self._commit_waiting = set()
        self._vote_waiting = set()
        self._reset_votes()

    def _abandon_epoch(self, now: float, ev: list[Event], to: RunState, reason: str) -> None:
        self._release_epoch()
        ev.append(EpochEnded(self._epoch, abandoned=True))
        self._change(now, ev, to, reason)

    def _start_round(self, now: float, ev: list[Event], reason: str) -> None:
        live = self._epoch_sorted
        self._round += 1
        self._epoch_rounds += 1
        seed = round_seed(self._seed, self._round)
        # Same result as tally_votes(votes of live voters) and elect_witnesses(live), without
        # re-summing every vote or re-sorting every id at each round start.
        train = tuple(
            sorted(top_candidates(self._tally, self._epoch_live, self._train_set_size, seed))
        )
        wanted = self._cfg.witness_nodes if self._cfg.witness_nodes > 0 else MAX_AUTO_WITNESSES
        n_witnesses = min(wanted, len(live))
        witnesses = tuple(sorted(seeded_prefix(live, seed, n_witnesses, "witness", presorted=True)))
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
        if self._epoch_frozen is None:
            self._epoch_frozen = frozenset(live)
        self._rounds.append(_Round(view, self._epoch_frozen))
        self._witness_waiting = set(witnesses)
        self._commit_waiting = set(train)
        self._vote_waiting = set(self._epoch_live)
        self._reset_votes()
        self._change(now, ev, _S.ROUND_TRAIN, reason)
        ev.append(RoundStarted(self._round, self._epoch, train, witnesses, q))

    def _decide(self, now: float, ev: list[Event]) -> None:
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
        r.outcome = RoundOutcome.ACCEPTED if r.accepted else RoundOutcome.NO_QUORUM
        r.ended = now
        r.changed()
        if r.accepted:
            self._accepted_rounds += 1
            self._last_accepted = r
            self._checkpoint_round = r.round  # _settle asks a live client to upload it
            self._uploader = None
        self._witness_waiting = set()
        self._commit_waiting = set()
        ev.append(RoundEnded(r.round, r.outcome, tuple(sorted(r.accepted))))

    def _abandon_round(self, now: float, ev: list[Event], reason: str) -> None:
        r = self._rounds[-1]
        r.outcome = RoundOutcome.ABANDONED
        r.ended = now
        r.changed()
        self._witness_waiting = set()
        self._commit_waiting = set()
        ev.append(RoundEnded(r.round, r.outcome, ()))
        self._enter_cooldown(now, ev, reason)

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
            self._enter_cooldown(now, ev, reason)
        else:
            self._start_round(now, ev, f"round {self._round} decided; {why}")

    def _enter_cooldown(self, now: float, ev: list[Event], reason: str) -> None:
        self._vote_waiting = set()
        self._reset_votes()
        last = self._last_accepted
        needed = last is not None and (
            self._checkpoint is None or self._checkpoint.round < last.round
        )
        if not needed or last is None:
            self._checkpoint_round = self._uploader = None
        elif self._checkpoint_round != last.round:  # else: the round's upload is on its way
            self._checkpoint_round, self._uploader = last.round, None
        self._change(now, ev, _S.COOLDOWN, reason)

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

    def _end_cooldown(self, now: float, ev: list[Event], reason: str) -> None:
        self._uploader = None
        self._checkpoint_round = None
        ended = self._epoch
        self._epoch += 1
        self._release_epoch()
        ev.append(EpochEnded(ended))
        if self._accepted_rounds >= self._cfg.total_rounds:
            self._pending_pause = False
            self._change(now, ev, _S.FINISHED, reason)
            ev.append(RunFinished(self._accepted_rounds))
        elif self._pending_pause:
            self._pending_pause = False
            self._change(now, ev, _S.PAUSED, f"{reason}; pause requested")
            ev.append(Paused())
        else:
            self._change(now, ev, _S.WAITING_FOR_MEMBERS, reason)


def _parse_candidates(raw: object, limit: int) -> tuple[tuple[str, int], ...] | str:
    """A vote's candidates as (id, weight >= 0) pairs, or what is wrong with them."""
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
        return "candidates must be a list of [client_id, weight] pairs"
    if len(raw) > limit:
        return f"{len(raw)} candidates; at most {limit} (the epoch's clients)"
    out: list[tuple[str, int]] = []
    seen: set[str] = set()
    for item in raw:
        if not isinstance(item, tuple | list) or len(item) != 2:
            return f"candidate {item!r} is not a [client_id, weight] pair"
        cid, weight = item
        if not _is_id(cid) or not _is_int(weight) or weight < 0:
            return f"candidate {item!r} needs a client id and an integer weight >= 0"
        if cid in seen:
            return f"candidate {cid!r} is named twice"
        seen.add(cid)
        out.append((cid, weight))
    return tuple(out)


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
