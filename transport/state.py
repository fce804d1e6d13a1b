"""The coordinator's state as both sides see it: the snapshot that is broadcast.

The console's coordinator produces a :class:`RunSnapshot`; the server encodes it into the
state broadcast and the join reply; nodes decode it and follow it. All times are the
console's clock (float seconds): a receiver compares ``deadline`` with the snapshot's own
``now``, never with its local clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


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
    """A snapshot received from the wire that does not have our shape."""


@dataclass(frozen=True)
class ClientView:
    id: str
    status: ClientStatus
    gossip_endpoint: str = ""
    warmed_up: bool = False
    last_seen: float = 0.0  # console clock
    joined_at: float = 0.0
    drop_reason: str = ""
    public_key: str = ""  # Z85 CURVE key it joined with ("" without CURVE): peers connect with it


@dataclass(frozen=True)
class ResultRef:
    """A trainer's model for one round: its hash and how many samples trained it."""

    hash: str
    samples: int


@dataclass(frozen=True)
class RoundView:
    round: int  # global round number, 1-based, counts every round started
    epoch: int
    seed: int
    train_set: tuple[str, ...]
    witnesses: tuple[str, ...]
    quorum: int
    started: float
    ended: float | None = None
    outcome: RoundOutcome = RoundOutcome.OPEN
    commits: dict[str, ResultRef] = field(default_factory=dict)  # trainer -> what it committed
    attestations: dict[str, dict[str, str]] = field(
        default_factory=dict
    )  # witness -> trainer -> hash
    accepted: dict[str, ResultRef] = field(default_factory=dict)  # trainer -> accepted result
    aggregates: dict[str, str] = field(default_factory=dict)  # node -> hash of its aggregate


@dataclass(frozen=True)
class CheckpointRef:
    epoch: int  # the epoch whose Cooldown wrote it
    round: int  # the last accepted round folded into it
    hash: str


@dataclass(frozen=True)
class RunSnapshot:
    run_id: str
    state: RunState
    now: float
    phase_started: float
    deadline: float | None  # None: the phase has no timeout (WaitingForMembers, Paused, Finished)
    epoch: int
    round: int  # the current (or last) round number; 0 before the first
    epoch_rounds: int  # rounds started in this epoch
    accepted_rounds: int
    total_rounds: int
    rounds_per_epoch: int
    init_min_clients: int
    min_clients: int
    pending_pause: bool
    clients: tuple[ClientView, ...]  # sorted by id
    current: RoundView | None = None  # the round in progress, or the last one
    previous: RoundView | None = (
        None  # the round before it (its accepted set may still be aggregating)
    )
    checkpoint: CheckpointRef | None = None
    checkpoint_uploader: str | None = None  # the node asked to upload the last accepted aggregate
    data_server: str | None = None  # data.serve: where epoch clients fetch their shard

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
        """JSON shapes, written out field by field: the server pays this per broadcast, and
        ``dataclasses.asdict`` (recursion plus a deepcopy of every leaf) cost 6x more at 1,000
        clients (bench/scale_bench.py)."""
        return {
            "run_id": self.run_id,
            "state": self.state.value,
            "now": self.now,
            "phase_started": self.phase_started,
            "deadline": self.deadline,
            "epoch": self.epoch,
            "round": self.round,
            "epoch_rounds": self.epoch_rounds,
            "accepted_rounds": self.accepted_rounds,
            "total_rounds": self.total_rounds,
            "rounds_per_epoch": self.rounds_per_epoch,
            "init_min_clients": self.init_min_clients,
            "min_clients": self.min_clients,
            "pending_pause": self.pending_pause,
            "clients": [_client_dict(c) for c in self.clients],
            "current": _round_dict(self.current),
            "previous": _round_dict(self.previous),
            "checkpoint": None
            if self.checkpoint is None
            else {
                "epoch": self.checkpoint.epoch,
                "round": self.checkpoint.round,
                "hash": self.checkpoint.hash,
            },
            "checkpoint_uploader": self.checkpoint_uploader,
            "data_server": self.data_server,
        }

    @classmethod
    def from_dict(cls, raw: Any) -> RunSnapshot:
        try:
            return _snapshot_from_dict(raw)
        except SnapshotError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise SnapshotError(f"malformed snapshot: {exc}") from exc


def _client_dict(c: ClientView) -> dict[str, Any]:
    return {
        "id": c.id,
        "status": c.status.value,
        "gossip_endpoint": c.gossip_endpoint,
        "warmed_up": c.warmed_up,
        "last_seen": c.last_seen,
        "joined_at": c.joined_at,
        "drop_reason": c.drop_reason,
        "public_key": c.public_key,
    }


def _results_dict(results: dict[str, ResultRef]) -> dict[str, Any]:
    return {k: {"hash": v.hash, "samples": v.samples} for k, v in results.items()}


def _round_dict(view: RoundView | None) -> dict[str, Any] | None:
    return None if view is None else round_to_dict(view)


def round_to_dict(view: RoundView) -> dict[str, Any]:
    """A round as plain JSON-able data (the broadcast's and a checkpoint state's form)."""
    return {
        "round": view.round,
        "epoch": view.epoch,
        "seed": view.seed,
        "train_set": list(view.train_set),
        "witnesses": list(view.witnesses),
        "quorum": view.quorum,
        "started": view.started,
        "ended": view.ended,
        "outcome": view.outcome.value,
        "commits": _results_dict(view.commits),
        "attestations": {w: dict(m) for w, m in view.attestations.items()},
        "accepted": _results_dict(view.accepted),
        "aggregates": dict(view.aggregates),
    }


def _result(raw: Any) -> ResultRef:
    _require(raw, dict, "result")
    return ResultRef(hash=_str(raw["hash"]), samples=_int(raw["samples"]))


def _round(raw: Any) -> RoundView | None:
    if raw is None:
        return None
    _require(raw, dict, "round")
    return RoundView(
        round=_int(raw["round"]),
        epoch=_int(raw["epoch"]),
        seed=_int(raw["seed"]),
        train_set=tuple(_str(x) for x in _list(raw["train_set"])),
        witnesses=tuple(_str(x) for x in _list(raw["witnesses"])),
        quorum=_int(raw["quorum"]),
        started=_float(raw["started"]),
        ended=None if raw.get("ended") is None else _float(raw["ended"]),
        outcome=RoundOutcome(raw.get("outcome", "open")),
        commits={_str(k): _result(v) for k, v in _dict(raw.get("commits", {})).items()},
        attestations={
            _str(w): {_str(t): _str(h) for t, h in _dict(m).items()}
            for w, m in _dict(raw.get("attestations", {})).items()
        },
        accepted={_str(k): _result(v) for k, v in _dict(raw.get("accepted", {})).items()},
        aggregates={_str(k): _str(v) for k, v in _dict(raw.get("aggregates", {})).items()},
    )


def _snapshot_from_dict(raw: Any) -> RunSnapshot:
    _require(raw, dict, "snapshot")
    clients = tuple(
        ClientView(
            id=_str(c["id"]),
            status=ClientStatus(c["status"]),
            gossip_endpoint=_str(c.get("gossip_endpoint", "")),
            warmed_up=bool(c.get("warmed_up", False)),
            last_seen=_float(c.get("last_seen", 0.0)),
            joined_at=_float(c.get("joined_at", 0.0)),
            drop_reason=_str(c.get("drop_reason", "")),
            public_key=_str(c.get("public_key", "")),
        )
        for c in _list(raw["clients"])
    )
    cp = raw.get("checkpoint")
    checkpoint = (
        None
        if cp is None
        else CheckpointRef(epoch=_int(cp["epoch"]), round=_int(cp["round"]), hash=_str(cp["hash"]))
    )
    uploader = raw.get("checkpoint_uploader")
    data_server = raw.get("data_server")
    return RunSnapshot(
        run_id=_str(raw["run_id"]),
        state=RunState(raw["state"]),
        now=_float(raw["now"]),
        phase_started=_float(raw["phase_started"]),
        deadline=None if raw.get("deadline") is None else _float(raw["deadline"]),
        epoch=_int(raw["epoch"]),
        round=_int(raw["round"]),
        epoch_rounds=_int(raw["epoch_rounds"]),
        accepted_rounds=_int(raw["accepted_rounds"]),
        total_rounds=_int(raw["total_rounds"]),
        rounds_per_epoch=_int(raw["rounds_per_epoch"]),
        init_min_clients=_int(raw["init_min_clients"]),
        min_clients=_int(raw["min_clients"]),
        pending_pause=bool(raw["pending_pause"]),
        clients=clients,
        current=_round(raw.get("current")),
        previous=_round(raw.get("previous")),
        checkpoint=checkpoint,
        checkpoint_uploader=None if uploader is None else _str(uploader),
        data_server=None if data_server is None else _str(data_server),
    )


def _require(value: Any, kind: type, what: str) -> None:
    if not isinstance(value, kind):
        raise SnapshotError(f"{what}: expected {kind.__name__}, got {type(value).__name__}")


def _str(value: Any) -> str:
    _require(value, str, "field")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SnapshotError(f"expected an integer, got {value!r}")
    return value


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SnapshotError(f"expected a number, got {value!r}")
    return float(value)


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise SnapshotError(f"expected a list, got {type(value).__name__}")
    return list(value)


def _dict(value: Any) -> dict[Any, Any]:
    _require(value, dict, "mapping")
    return value
