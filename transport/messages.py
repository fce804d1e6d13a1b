"""Every wire message: one frozen dataclass each, validated when built.

A message is plain data. Its fields are declared with the kinds of ``transport.fields``
(``NodeId``, ``Hash``, ``MetricMap``, ...); :class:`Message` checks and normalises every field
in ``__post_init__`` from that declaration, so a message that exists is well formed, whether a
node built it or ``transport.codec`` decoded it from the wire. Bad values raise
:class:`MessageError`.

``TYPE`` is the wire name (the header's ``type``); ``docs/ARCHITECTURE.md`` lists which socket
carries which message.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

from transport.fields import (
    ERROR_CODES,
    VALIDATORS,
    Attestations,
    Candidates,
    ErrorCode,
    Hash,
    JsonObject,
    MessageError,
    MetricMap,
    NodeId,
    NodeIds,
    Tensors,
    check_node_id,
    check_tensor,
)

PROTOCOL_VERSION = 1

__all__ = [
    "PROTOCOL_VERSION",
    "ERROR_CODES",
    "MESSAGE_TYPES",
    "MessageError",
    "check_node_id",
    "check_tensor",
    "Message",
    "Join",
    "JoinAck",
    "Heartbeat",
    "Leave",
    "WarmedUp",
    "Vote",
    "Commit",
    "Witness",
    "Aggregate",
    "Metrics",
    "CheckpointUpload",
    "ModelRequest",
    "ModelReply",
    "DataRequest",
    "DataReply",
    "Ack",
    "Error",
    "StateUpdate",
    "ModelPush",
    "ModelAck",
    "ModelFetch",
]

# ----------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Message:
    """Base of every wire message: validates and normalises its fields from their kinds."""

    TYPE: ClassVar[str] = ""
    # Filled by _register: field name -> kind, the fields without a default, the tensor field.
    KINDS: ClassVar[dict[str, str]] = {}
    REQUIRED: ClassVar[frozenset[str]] = frozenset()
    TENSOR_FIELD: ClassVar[str | None] = None

    _CHECKS: ClassVar[tuple[tuple[str, Any, str], ...]] = ()  # (field, validator, label)

    def __post_init__(self) -> None:
        for name, check, label in self._CHECKS:
            object.__setattr__(self, name, check(getattr(self, name), label))


MESSAGE_TYPES: dict[str, type[Message]] = {}


def _register(cls: type[Message]) -> type[Message]:
    kinds = {f.name: str(f.type) for f in fields(cls)}
    unknown = {k for k in kinds.values() if k not in VALIDATORS}
    assert not unknown, f"{cls.__name__}: no validator for {unknown}"
    assert cls.TYPE and cls.TYPE not in MESSAGE_TYPES, cls
    tensor_fields = [name for name, kind in kinds.items() if kind == "Tensors"]
    assert len(tensor_fields) <= 1, cls
    cls.KINDS = kinds
    cls.REQUIRED = frozenset(
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    )
    cls.TENSOR_FIELD = tensor_fields[0] if tensor_fields else None
    cls._CHECKS = tuple((n, VALIDATORS[k], f"{cls.TYPE}.{n}") for n, k in kinds.items())
    MESSAGE_TYPES[cls.TYPE] = cls
    return cls


@_register
@dataclass(frozen=True)
class Join(Message):
    TYPE: ClassVar[str] = "join"
    run_id: str
    node_id: NodeId
    gossip_endpoint: str
    pid: int = 0
    host: str = ""


@_register
@dataclass(frozen=True)
class JoinAck(Message):
    TYPE: ClassVar[str] = "join_ack"
    node_id: NodeId
    state_endpoint: str
    seq: int
    spec: JsonObject  # RunSpec.to_dict(); the node calls RunSpec.from_dict
    snapshot: JsonObject  # RunSnapshot.to_dict(); the node calls RunSnapshot.from_dict


@_register
@dataclass(frozen=True)
class Heartbeat(Message):
    TYPE: ClassVar[str] = "heartbeat"
    node_id: NodeId
    stage: str = ""  # the node's current workflow stage, shown in the console
    round: int = 0
    gossip_refused: int = 0  # model pushes its gossip ROUTER refused so far
    gossip_refusal: str = ""  # the latest of them, "code: reason"


@_register
@dataclass(frozen=True)
class Leave(Message):
    TYPE: ClassVar[str] = "leave"
    node_id: NodeId
    reason: str = ""


@_register
@dataclass(frozen=True)
class WarmedUp(Message):
    TYPE: ClassVar[str] = "warmed_up"
    node_id: NodeId
    epoch: int
    model_hash: Hash


@_register
@dataclass(frozen=True)
class Vote(Message):
    TYPE: ClassVar[str] = "vote"
    node_id: NodeId
    round: int
    candidates: Candidates


@_register
@dataclass(frozen=True)
class Commit(Message):
    TYPE: ClassVar[str] = "commit"
    node_id: NodeId
    round: int
    hash: Hash
    samples: int
    metrics: MetricMap


@_register
@dataclass(frozen=True)
class Witness(Message):
    TYPE: ClassVar[str] = "witness"
    node_id: NodeId
    round: int
    attestations: Attestations  # trainer -> hash of the model received from it


@_register
@dataclass(frozen=True)
class Aggregate(Message):
    TYPE: ClassVar[str] = "aggregate"
    node_id: NodeId
    round: int
    hash: Hash
    metrics: MetricMap


@_register
@dataclass(frozen=True)
class Metrics(Message):
    TYPE: ClassVar[str] = "metrics"
    node_id: NodeId
    round: int
    metrics: MetricMap  # bytes_sent, bytes_received, train_time, update_norm, ...


@_register
@dataclass(frozen=True)
class CheckpointUpload(Message):
    TYPE: ClassVar[str] = "checkpoint_upload"
    node_id: NodeId
    epoch: int
    round: int
    hash: Hash
    tensors: Tensors


@_register
@dataclass(frozen=True)
class ModelRequest(Message):
    TYPE: ClassVar[str] = "model_request"
    node_id: NodeId
    epoch: int


@_register
@dataclass(frozen=True)
class ModelReply(Message):
    TYPE: ClassVar[str] = "model_reply"
    round: int
    hash: Hash
    tensors: Tensors


@_register
@dataclass(frozen=True)
class DataRequest(Message):
    TYPE: ClassVar[str] = "data_request"
    node_id: NodeId
    epoch: int


@_register
@dataclass(frozen=True)
class DataReply(Message):
    TYPE: ClassVar[str] = "data_reply"
    epoch: int
    tensors: Tensors  # x, y: the node's shard; x_test, y_test: the held-out split
    classes: int = 0  # classes of the whole dataset (a shard may lack some); 0: from the labels


@_register
@dataclass(frozen=True)
class Ack(Message):
    TYPE: ClassVar[str] = "ack"
    ref: str  # the TYPE acknowledged
    seq: int = 0


@_register
@dataclass(frozen=True)
class Error(Message):
    TYPE: ClassVar[str] = "error"
    ref: str  # the TYPE refused ("?" when the header could not be read)
    code: ErrorCode  # one of ERROR_CODES (any [a-z_] word is accepted, for newer peers)
    reason: str


@_register
@dataclass(frozen=True)
class StateUpdate(Message):
    TYPE: ClassVar[str] = "state"
    seq: int
    snapshot: JsonObject  # RunSnapshot.to_dict()


@_register
@dataclass(frozen=True)
class ModelPush(Message):
    """A trainer's encoded update for one round, from the trainer or a relay (``sender``).

    ``hash`` is the hash of ``tensors`` as sent (what witnesses attest). ``route`` is the relay
    order the trainer chose (``[learning] gossip_fanout`` > 0): receivers forward to their
    children in it; empty when the trainer pushes to every peer itself.
    """

    TYPE: ClassVar[str] = "model_push"
    run_id: str
    sender: NodeId
    round: int
    trainer: NodeId
    hash: Hash
    samples: int
    tensors: Tensors
    route: NodeIds = ()


@_register
@dataclass(frozen=True)
class ModelAck(Message):
    TYPE: ClassVar[str] = "model_ack"
    round: int
    trainer: NodeId
    hash: Hash


@_register
@dataclass(frozen=True)
class ModelFetch(Message):
    """Ask a peer for a trainer's update it holds (a relay on the way died, or it is late).

    Answered with a ``model_push`` from the holder, or an ``error`` (``unavailable``).
    """

    TYPE: ClassVar[str] = "model_fetch"
    run_id: str
    sender: NodeId
    round: int
    trainer: NodeId
