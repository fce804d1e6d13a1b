"""What nodes send the coordinator: each message checked, then recorded.

Every check comes before any change, so a refused message changes nothing: a check raises
:class:`Refused` and :func:`message` turns it into the call's rejection. A message that may
complete a phase (the last warmup, witness report, vote or checkpoint) only records itself;
the machine's ``_settle`` then asks that phase's ``_tick_<state>`` whether it has ended, so
"what ends a phase" is written once, in ``machine.py``.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from console.coordinator.events import (
    AggregateReported,
    CheckpointSaved,
    ClientBanned,
    ClientDropped,
    ClientJoined,
    ClientKicked,
    ClientLeft,
    ClientUnbanned,
    ClientWarmedUp,
    Event,
    Outcome,
    Rejection,
    ResultCommitted,
    TrainingDeclined,
    VoteCast,
    WitnessReported,
)
from console.coordinator.records import Client, Round, is_id, is_int
from console.coordinator.state import ROUND_STATES, CoordinatorState
from transport.fields import ErrorCode, NodeId
from transport.state import CheckpointRef, ClientStatus, ResultRef, RoundOutcome
from transport.state import RunState as S

_LIVE = (ClientStatus.PENDING, ClientStatus.ACTIVE)
_NODE_ID = re.compile(NodeId.__metadata__[0].pattern)  # what a node's join may name


def no_trainer_left(declined: dict[str, str], live: list[str]) -> str:
    """Why the run ends when every live client declines to train (the first one's reason)."""
    first = live[0] if live else ""
    why = f" ({first}: {declined[first]})" if first in declined else ""
    return f"no client left to train: every live client stopped training{why}"


def reject(code: ErrorCode, reason: str) -> Outcome:
    return Outcome(rejection=Rejection(code, reason))


class Refused(Exception):
    """A message check failed: the call is refused with this code and changes nothing."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.rejection = Rejection(code, reason)


_Handler = TypeVar("_Handler", bound=Callable[..., Outcome])


def message(handler: _Handler) -> _Handler:
    """A message handler: refused once the run is finished, and a :class:`Refused` raised by
    its checks becomes the call's rejection."""

    @functools.wraps(handler)
    def call(self: Messages, *args: Any, **kwargs: Any) -> Outcome:
        if self._state is S.FINISHED:
            return reject(ErrorCode.WRONG_STATE, "the run is finished")
        try:
            return handler(self, *args, **kwargs)
        except Refused as refused:
            return Outcome(rejection=refused.rejection)

    return call  # type: ignore[return-value]


def _check_round(round: object) -> None:
    if not is_int(round):
        raise Refused(ErrorCode.MALFORMED, f"round must be an integer, not {round!r}")


def parse_candidates(raw: object, limit: int) -> tuple[tuple[str, int], ...]:
    """A vote's candidates as (id, weight >= 0) pairs; Refused says what is wrong."""
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
        raise Refused(ErrorCode.MALFORMED, "candidates must be a list of [client_id, weight] pairs")
    if len(raw) > limit:
        raise Refused(
            ErrorCode.MALFORMED, f"{len(raw)} candidates; at most {limit} (the epoch's clients)"
        )
    out: list[tuple[str, int]] = []
    seen: set[str] = set()
    for item in raw:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise Refused(
                ErrorCode.MALFORMED, f"candidate {item!r} is not a [client_id, weight] pair"
            )
        cid, weight = item
        if not is_id(cid) or not is_int(weight) or weight < 0:
            raise Refused(
                ErrorCode.MALFORMED,
                f"candidate {item!r} needs a client id and an integer weight >= 0",
            )
        if cid in seen:
            raise Refused(ErrorCode.MALFORMED, f"candidate {cid!r} is named twice")
        seen.add(cid)
        out.append((cid, weight))
    return tuple(out)


class Messages(CoordinatorState):
    """What nodes (and the server, for checkpoints) send; the base of ``Coordinator``."""

    def _settle(self, now: float, ev: list[Event]) -> None:
        raise NotImplementedError  # machine.py: end every phase whose end is reached

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
        if not (is_id(client_id) and isinstance(gossip_endpoint, str)):
            return reject(
                ErrorCode.MALFORMED, "join needs a non-empty client id and a string endpoint"
            )
        if not isinstance(public_key, str):
            return reject(ErrorCode.MALFORMED, "join's public key must be a string")
        if run_id != self._run_id:
            return reject(
                ErrorCode.WRONG_RUN_ID,
                f"run_id {run_id!r} does not match this run ({self._run_id!r})",
            )
        if client_id in self._bans:  # first: a banned node is told so, finished run or not
            return reject(ErrorCode.BANNED, f"{client_id} is banned: {self._bans[client_id]}")
        if self._state is S.FINISHED:
            return reject(ErrorCode.WRONG_STATE, "the run is finished")
        c = self._clients.get(client_id)
        if c is not None and c.status is ClientStatus.KICKED:
            return reject(ErrorCode.KICKED, f"{client_id} was kicked by the operator")
        if c is not None and c.status in _LIVE and c.public_key != public_key:
            return reject(ErrorCode.DUPLICATE, f"{client_id} is in the run with another key")
        rejoined = c is not None
        if c is None:
            c = Client(client_id, ClientStatus.PENDING, gossip_endpoint, now)
            self._clients[client_id] = c
            bisect.insort(self._sorted_ids, client_id)
            self._pending.add(client_id)
        elif c.status in _LIVE:
            c.endpoint = gossip_endpoint  # a reconnect: same status, fresh endpoint
        else:  # dropped or left: back as pending, for the next epoch
            c.status = ClientStatus.PENDING
            c.endpoint = gossip_endpoint
            c.warmed_up = False
            c.drop_reason = ""
            c.joined_at = now
            self._pending.add(client_id)
        ev: list[Event] = [ClientJoined(client_id, rejoined)]
        c.public_key = public_key
        self._touch(c, now)
        self._settle(now, ev)
        return Outcome(tuple(ev))

    @message
    def heartbeat(self, client_id: str, now: float) -> Outcome:
        self._touch(self._sender(client_id, member=False), now)
        return _OK

    @message
    def leave(self, client_id: str, now: float, reason: str = "") -> Outcome:
        if not isinstance(reason, str):
            raise Refused(ErrorCode.MALFORMED, "a leave reason must be a string")
        self._sender(client_id, member=False)
        status = f"left: {reason}" if reason else "left"
        return self._remove_and_settle(
            client_id, ClientStatus.LEFT, status, ClientLeft(client_id, reason), now
        )

    @message
    def drop(self, client_id: str, reason: str, now: float) -> Outcome:
        if not isinstance(reason, str):
            raise Refused(ErrorCode.MALFORMED, "a drop reason must be a string")
        self._sender(client_id, member=False)
        event = ClientDropped(client_id, reason)
        return self._remove_and_settle(client_id, ClientStatus.DROPPED, reason, event, now)

    @message
    def kick(self, client_id: str, now: float, *, ban: bool = False, reason: str = "") -> Outcome:
        """Take a client out of the run; its requests are refused (``kicked``) from now on, in
        this console. ``ban``: also refuse its joins (``banned``, with ``reason``) until
        :meth:`unban`, across console restarts (bans are in :meth:`to_state`). An id that never
        joined may be banned too."""
        if not isinstance(reason, str):
            raise Refused(ErrorCode.MALFORMED, "a ban reason must be a string")
        if not (isinstance(client_id, str) and _NODE_ID.search(client_id)):
            raise Refused(
                ErrorCode.MALFORMED,
                f"{client_id!r} is not a client id (1-64 letters, digits, '.', '_' or '-')",
            )
        c = self._clients.get(client_id)
        if c is None and not ban:
            raise Refused(ErrorCode.NOT_MEMBER, f"unknown client {client_id!r}")
        if client_id in self._bans:
            raise Refused(ErrorCode.DUPLICATE, f"{client_id} is already banned")
        if c is not None and c.status is ClientStatus.KICKED and not ban:
            raise Refused(ErrorCode.DUPLICATE, f"{client_id} is already kicked")
        why = reason or "banned by the operator"
        ev: list[Event] = []
        if c is None:
            c = Client(client_id, ClientStatus.KICKED, "", now)
            c.drop_reason = why
            self._clients[client_id] = c
            bisect.insort(self._sorted_ids, client_id)
            self._views = None
        elif c.status in _LIVE:
            self._remove(client_id, ClientStatus.KICKED, why if ban else "kicked by the operator")
            ev.append(ClientKicked(client_id))
        elif c.status is not ClientStatus.KICKED:
            c.status = ClientStatus.KICKED
            c.drop_reason = why if ban else "kicked by the operator"
            self._client_changed(c)
            ev.append(ClientKicked(client_id))
        if ban:
            self._bans[client_id] = why
            c.drop_reason = why
            self._client_changed(c)
            ev.append(ClientBanned(client_id, why))
        self._settle(now, ev)
        return Outcome(tuple(ev))

    def unban(self, client_id: str, now: float) -> Outcome:
        """Lift a ban or a kick: the id may join again (as a new pending client)."""
        c = self._clients.get(client_id) if isinstance(client_id, str) else None
        if client_id not in self._bans and (c is None or c.status is not ClientStatus.KICKED):
            return reject(ErrorCode.NOT_MEMBER, f"{client_id!r} is neither banned nor kicked")
        self._bans.pop(client_id, None)
        if c is not None:
            c.status = ClientStatus.LEFT
            c.drop_reason = "unbanned by the operator"
            self._client_changed(c)
        ev: list[Event] = [ClientUnbanned(client_id)]
        self._settle(now, ev)
        return Outcome(tuple(ev))

    # ------------------------------------------------------------------ protocol

    @message
    def warmed_up(self, client_id: str, now: float, *, model_hash: str = "") -> Outcome:
        if not isinstance(model_hash, str):
            raise Refused(ErrorCode.MALFORMED, "model_hash must be a string")
        c = self._sender(client_id, member=True)
        if self._state not in (S.WARMUP, *ROUND_STATES):
            raise Refused(ErrorCode.WRONG_STATE, f"warmed_up is not expected in {self._state}")
        if c.warmed_up:
            raise Refused(ErrorCode.DUPLICATE, f"{client_id} already reported warmed up")
        c.warmed_up = True  # after a Warmup timeout a late report is recorded, nothing waits
        self._not_warmed.discard(client_id)
        return self._touch_and_settle(c, ClientWarmedUp(client_id, model_hash), now)

    @message
    def vote(
        self,
        client_id: str,
        round: int,
        candidates: Sequence[tuple[str, int]],
        now: float,
        declines: str = "",
    ) -> Outcome:
        """A vote for round ``round``'s train set. ``declines``: why the voter will not train
        (its privacy budget is spent); it is then never elected, but still witnesses."""
        _check_round(round)
        c = self._sender(client_id, member=True)
        if self._state not in (S.WARMUP, *ROUND_STATES):
            raise Refused(ErrorCode.WRONG_STATE, f"no round to vote for in {self._state}")
        if round != self._round + 1:
            raise Refused(
                ErrorCode.WRONG_ROUND, f"votes are for round {self._round + 1}, not round {round}"
            )
        if client_id in self._votes:
            raise Refused(ErrorCode.DUPLICATE, f"{client_id} already voted for round {round}")
        if not isinstance(declines, str):
            raise Refused(ErrorCode.MALFORMED, "a vote's declines must be a string")
        self._votes.add(client_id, parse_candidates(candidates, self._epoch_size))
        self._vote_waiting.discard(client_id)
        ev: list[Event] = [VoteCast(round, client_id)]
        if declines and client_id not in self._declined:
            ev.append(TrainingDeclined(round, client_id, declines))
        if declines:
            self._declined[client_id] = declines
        else:
            self._declined.pop(client_id, None)
        self._touch(c, now)
        self._settle(now, ev)
        return Outcome(tuple(ev))

    @message
    def commit(self, client_id: str, round: int, result: ResultRef, now: float) -> Outcome:
        _check_round(round)
        if (
            not isinstance(result, ResultRef)
            or not is_id(result.hash)
            or not is_int(result.samples)
            or result.samples < 0
        ):
            raise Refused(ErrorCode.MALFORMED, "a commit needs a hash and a sample count >= 0")
        c = self._sender(client_id, member=True)
        r = self._open_round(round)
        if client_id not in r.train_set:
            raise Refused(
                ErrorCode.NOT_MEMBER, f"{client_id} is not in the train set of round {round}"
            )
        if client_id in r.commits:
            raise Refused(ErrorCode.DUPLICATE, f"{client_id} already committed round {round}")
        r.commits[client_id] = result
        r.changed()
        self._commit_waiting.discard(client_id)  # informational: no phase waits for commits
        self._touch(c, now)
        return Outcome((ResultCommitted(round, client_id, result.hash),))

    @message
    def witness(
        self, client_id: str, round: int, attestations: Mapping[str, str], now: float
    ) -> Outcome:
        _check_round(round)
        if not isinstance(attestations, Mapping) or not all(
            is_id(t) and is_id(h) for t, h in attestations.items()
        ):
            raise Refused(ErrorCode.MALFORMED, "attestations must map trainer ids to hash strings")
        c = self._sender(client_id, member=True)
        r = self._open_round(round)
        if client_id not in r.witnesses:
            raise Refused(ErrorCode.NOT_WITNESS, f"{client_id} is not a witness of round {round}")
        if client_id in r.attestations:
            raise Refused(
                ErrorCode.DUPLICATE, f"{client_id} already reported as witness of round {round}"
            )
        strangers = [t for t in attestations if t not in r.train_set]
        if strangers:
            raise Refused(
                ErrorCode.MALFORMED, f"{strangers[0]!r} is not in the train set of round {round}"
            )
        r.attestations[client_id] = dict(attestations)
        r.changed()
        self._witness_waiting.discard(client_id)
        return self._touch_and_settle(c, WitnessReported(round, client_id, len(attestations)), now)

    @message
    def report_aggregate(self, client_id: str, round: int, model_hash: str, now: float) -> Outcome:
        if not is_int(round) or not is_id(model_hash):
            raise Refused(ErrorCode.MALFORMED, "an aggregate needs an integer round and a hash")
        c = self._sender(client_id, member=False)
        r = next((x for x in self._rounds[-2:] if x.round == round), None)
        if r is None:
            raise Refused(
                ErrorCode.WRONG_ROUND, f"round {round} is not the current or previous round"
            )
        if r.outcome is not RoundOutcome.ACCEPTED:
            raise Refused(ErrorCode.WRONG_ROUND, f"round {round} has no accepted set ({r.outcome})")
        if client_id not in r.members:
            raise Refused(ErrorCode.NOT_MEMBER, f"{client_id} did not take part in round {round}")
        if client_id in r.aggregates:
            raise Refused(
                ErrorCode.DUPLICATE, f"{client_id} already reported its round {round} model"
            )
        r.aggregates[client_id] = model_hash
        r.changed()
        self._touch(c, now)
        return Outcome((AggregateReported(round, client_id, model_hash),))

    @message
    def checkpoint_saved(self, ref: CheckpointRef, now: float) -> Outcome:
        if (
            not isinstance(ref, CheckpointRef)
            or not is_int(ref.epoch)
            or not is_int(ref.round)
            or not is_id(ref.hash)
        ):
            raise Refused(
                ErrorCode.MALFORMED, "a checkpoint needs an integer epoch and round and a hash"
            )
        if self._checkpoint_round is None:
            raise Refused(ErrorCode.WRONG_STATE, f"no checkpoint is expected in {self._state}")
        if ref.epoch != self._epoch:
            raise Refused(
                ErrorCode.WRONG_STATE, f"checkpoint of epoch {ref.epoch}; this is {self._epoch}"
            )
        if ref.round != self._checkpoint_round:
            raise Refused(
                ErrorCode.WRONG_ROUND,
                f"checkpoint of round {ref.round}; round {self._checkpoint_round} was requested",
            )
        self._checkpoint = ref
        self._checkpoint_round = None
        self._uploader = None
        ev: list[Event] = [CheckpointSaved(ref.epoch, ref.round, ref.hash)]
        self._settle(now, ev)  # in Cooldown, _tick_cooldown ends it: the checkpoint is saved
        return Outcome(tuple(ev))

    # ------------------------------------------------------------------ checks

    def _sender(self, client_id: str, *, member: bool) -> Client:
        """The live client behind a message; Refused says why it may not send it."""
        c = self._clients.get(client_id) if isinstance(client_id, str) else None
        if c is None:
            raise Refused(ErrorCode.NOT_MEMBER, f"unknown client {client_id!r}; join first")
        if client_id in self._bans:
            raise Refused(ErrorCode.BANNED, f"{client_id} is banned: {self._bans[client_id]}")
        if c.status is ClientStatus.KICKED:
            raise Refused(ErrorCode.KICKED, f"{client_id} was kicked by the operator")
        if c.status is ClientStatus.DROPPED:
            raise Refused(
                ErrorCode.NOT_MEMBER, f"{client_id} was dropped ({c.drop_reason}); join again"
            )
        if c.status is ClientStatus.LEFT:
            raise Refused(ErrorCode.NOT_MEMBER, f"{client_id} left the run; join again")
        if member and c.status is not ClientStatus.ACTIVE:
            if self._state in (S.WAITING_FOR_MEMBERS, S.PAUSED):
                raise Refused(ErrorCode.WRONG_STATE, f"no epoch is in progress ({self._state})")
            raise Refused(
                ErrorCode.NOT_MEMBER, f"{client_id} is pending: not a member of epoch {self._epoch}"
            )
        return c

    def _open_round(self, round: int) -> Round:
        """The current round, if ``round`` is it and it is still open."""
        if self._state not in ROUND_STATES:
            raise Refused(ErrorCode.WRONG_STATE, f"no round is open in {self._state}")
        if round != self._round:
            raise Refused(
                ErrorCode.WRONG_ROUND, f"round {round} is not the current round {self._round}"
            )
        if self._rounds[-1].outcome is not RoundOutcome.OPEN:
            raise Refused(ErrorCode.WRONG_STATE, f"round {round} is already decided")
        return self._rounds[-1]

    # ------------------------------------------------------------------ clients

    def _touch_and_settle(self, c: Client, event: Event, now: float) -> Outcome:
        self._touch(c, now)
        ev = [event]
        self._settle(now, ev)
        return Outcome(tuple(ev))

    def _remove_and_settle(
        self, cid: str, status: ClientStatus, reason: str, event: Event, now: float
    ) -> Outcome:
        self._remove(cid, status, reason)
        ev = [event]
        self._settle(now, ev)
        return Outcome(tuple(ev))


_OK = Outcome()
