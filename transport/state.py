"""The coordinator's state as both sides see it: the snapshot that is broadcast.

The console's coordinator produces a :class:`RunSnapshot`; the server encodes it into the
state broadcast and the join reply; nodes decode it and follow it. All times are the
console's clock (float seconds): a receiver compares ``deadline`` with the snapshot's own
``now``, never with its local clock.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar

import msgspec
from msgspec import Struct

from transport.fields import Count, NodeId, Text

_T = TypeVar("_T")


class RunState(StrEnum):
    """Psyche's RunState."""

    UNINITIALIZED = "Uninitialized"
    WAITING_FOR_MEMBERS = "WaitingForMembers"
    WARMUP = "Warmup"
    ROUND_TRAIN = "RoundTrain"
    ROUND_WITNESS = "RoundWitness"
    COOLDOWN = "Cooldown"
    FINISHED = "Finished"
    PAUSED = "Paused"


class ClientStatus(StrEnum):
    PENDING = "pending"  # joined; waits for the next epoch
    ACTIVE = "active"  # a member of the current epoch
    DROPPED = "dropped"  # silent past health_timeout, or disconnected
    KICKED = "kicked"  # removed by the operator
    LEFT = "left"  # withdrew on its own


LIVE_STATUSES = frozenset({ClientStatus.PENDING, ClientStatus.ACTIVE})


class RoundOutcome(StrEnum):
    OPEN = "open"  # still collecting
    ACCEPTED = "accepted"  # at least one trainer's result reached a witness quorum
    NO_QUORUM = "no_quorum"  # no result reached a quorum
    ABANDONED = "abandoned"  # the epoch ended (too few clients, operator) before an outcome


class SnapshotError(ValueError):
    """A snapshot (or round) that does not have our shape."""


class _Data(Struct, frozen=True, forbid_unknown_fields=True):
    """Base of the snapshot's parts: frozen, no unknown fields."""


class ClientView(_Data):
    id: NodeId
    status: ClientStatus
    gossip_endpoint: Text = ""
    warmed_up: bool = False
    last_seen: float = 0.0  # console clock
    joined_at: float = 0.0
    drop_reason: Text = ""
    public_key: Text = ""  # Z85 CURVE key it joined with ("" without CURVE): peers connect with it


class ResultRef(_Data):
    """A trainer's model for one round: its hash and how many samples trained it."""

    hash: Text
    samples: Count


class RoundView(_Data):
    round: Count  # global round number, 1-based, counts every round started
    epoch: Count
    seed: int  # drawn from 64 bits
    train_set: tuple[NodeId, ...]
    witnesses: tuple[NodeId, ...]
    quorum: Count
    started: float
    ended: float | None = None
    outcome: RoundOutcome = RoundOutcome.OPEN
    commits: dict[str, ResultRef] = {}  # trainer -> what it committed
    attestations: dict[str, dict[str, str]] = {}  # witness -> trainer -> hash
    accepted: dict[str, ResultRef] = {}  # trainer -> accepted result
    aggregates: dict[str, str] = {}  # node -> hash of its aggregate

    @classmethod
    def from_dict(cls, raw: Any) -> RoundView:
        """A round from plain data (a saved state's or a broadcast's), else SnapshotError."""
        return _convert(raw, cls)


class CheckpointRef(_Data):
    epoch: Count  # the epoch whose Cooldown wrote it
    round: Count  # the last accepted round folded into it
    hash: Text


class RunSnapshot(_Data):
    run_id: Text
    state: RunState
    now: float
    phase_started: float
    deadline: float | None  # None: the phase has no timeout (WaitingForMembers, Paused, Finished)
    epoch: Count
    round: Count  # the current (or last) round number; 0 before the first
    epoch_rounds: Count  # rounds started in this epoch
    accepted_rounds: Count
    total_rounds: Count
    rounds_per_epoch: Count
    init_min_clients: Count
    min_clients: Count
    pending_pause: bool
    clients: tuple[ClientView, ...]  # sorted by id
    current: RoundView | None = None  # the round in progress, or the last one
    previous: RoundView | None = None  # the round before it (its accepted set may still aggregate)
    checkpoint: CheckpointRef | None = None
    checkpoint_uploader: str | None = None  # the node asked to upload the last accepted aggregate
    data_server: str | None = None  # data.serve: where epoch clients fetch their shard
    # the run spec's version: it grows when live settings reach the nodes (at a Warmup); a node
    # holding an older one asks for the new spec (spec_request) before it warms up
    spec_version: Count = 0

    def client(self, client_id: str) -> ClientView | None:
        for c in self.clients:
            if c.id == client_id:
                return c
        return None

    @property
    def live_clients(self) -> tuple[ClientView, ...]:
        return tuple(c for c in self.clients if c.status in LIVE_STATUSES)

    @property
    def epoch_clients(self) -> tuple[ClientView, ...]:
        return tuple(c for c in self.clients if c.status is ClientStatus.ACTIVE)

    @property
    def waiting_for(self) -> int:
        """How many more members WaitingForMembers needs (pending against init_min_clients)."""
        pending = sum(1 for c in self.clients if c.status is ClientStatus.PENDING)
        return max(0, self.init_min_clients - pending)

    @property
    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - self.now)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (a replay record's form); :meth:`from_dict` reads it back."""
        return _plain(self)

    @classmethod
    def from_dict(cls, raw: Any) -> RunSnapshot:
        return _convert(raw, cls)


def round_to_dict(view: RoundView) -> dict[str, Any]:
    """A round as plain JSON data (the broadcast's and a checkpoint state's form)."""
    return _plain(view)


def _plain(data: Struct) -> Any:
    """JSON's own shapes (lists, not the tuples ``msgspec.to_builtins`` keeps), as loaded."""
    return msgspec.json.decode(msgspec.json.encode(data))


def _convert(raw: Any, kind: type[_T]) -> _T:
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise SnapshotError(f"malformed {kind.__name__}: {exc}") from None
