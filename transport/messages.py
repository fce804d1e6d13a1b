"""Every wire message, declared once: a frozen msgspec Struct tagged with its wire name.

A message is plain data. Its fields are declared with the kinds of ``transport.fields``
(``NodeId``, ``Hash``, ``MetricMap``, ...), whose limits msgspec checks when
``transport.codec`` decodes a header; a message we build ourselves is not checked again.

``TYPE`` is the wire name (the header's ``type``); ``docs/ARCHITECTURE.md`` lists which socket
carries which message.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from msgspec import Meta, Struct

from transport.fields import (
    Attestations,
    Candidates,
    Count,
    ErrorCode,
    Hash,
    MessageError,
    MetricMap,
    NodeId,
    NodeIds,
    Text,
    check_node_id,
)
from transport.spec import RunSpec
from transport.state import RunSnapshot
from transport.tensors import TensorPayload

PROTOCOL_VERSION = 1

__all__ = [
    "PROTOCOL_VERSION",
    "ErrorCode",
    "MESSAGE_TYPES",
    "MessageError",
    "check_node_id",
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
    "OPERATOR_VERBS",
    "OperatorRequest",
    "OperatorReply",
    "ViewRequest",
    "ViewReply",
]

Tensors = tuple[TensorPayload, ...]  # metadata in the header, each tensor's bytes in a frame


class Message(Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=True):
    """Base of every wire message. ``v``, the protocol version, is written first on the wire."""

    TYPE: ClassVar[str] = ""
    v: int = PROTOCOL_VERSION


class Join(Message, tag="join"):
    run_id: Text
    node_id: NodeId
    gossip_endpoint: Text
    pid: Count = 0
    host: Text = ""


class JoinAck(Message, tag="join_ack"):
    node_id: NodeId
    state_endpoint: Text
    seq: Count
    spec: RunSpec
    snapshot: RunSnapshot


class Heartbeat(Message, tag="heartbeat"):
    node_id: NodeId
    stage: Text = ""  # the node's current workflow stage, shown in the console
    round: Count = 0
    gossip_refused: Count = 0  # model pushes its gossip ROUTER refused so far
    gossip_refusal: Text = ""  # the latest of them, "code: reason"


class Leave(Message, tag="leave"):
    node_id: NodeId
    reason: Text = ""


class WarmedUp(Message, tag="warmed_up"):
    node_id: NodeId
    epoch: Count
    model_hash: Hash


class Vote(Message, tag="vote"):
    node_id: NodeId
    round: Count
    candidates: Candidates
    declines: Text = ""  # why the voter will not train any more ("": it will); it still witnesses


class Commit(Message, tag="commit"):
    node_id: NodeId
    round: Count
    hash: Hash
    samples: Count
    metrics: MetricMap


class Witness(Message, tag="witness"):
    node_id: NodeId
    round: Count
    attestations: Attestations  # trainer -> hash of the model received from it


class Aggregate(Message, tag="aggregate"):
    node_id: NodeId
    round: Count
    hash: Hash
    metrics: MetricMap


class Metrics(Message, tag="metrics"):
    node_id: NodeId
    round: Count
    metrics: MetricMap  # bytes_sent, bytes_received, train_time, update_norm, ...


class CheckpointUpload(Message, tag="checkpoint_upload"):
    node_id: NodeId
    epoch: Count
    round: Count
    hash: Hash
    tensors: Tensors


class ModelRequest(Message, tag="model_request"):
    node_id: NodeId
    epoch: Count


class ModelReply(Message, tag="model_reply"):
    round: Count
    hash: Hash
    tensors: Tensors


class SpecRequest(Message, tag="spec_request"):
    """A node whose run spec is older than the broadcast's ``spec_version`` asks for the new
    one (live settings reach the nodes at a Warmup)."""

    node_id: NodeId


class SpecReply(Message, tag="spec_reply"):
    version: Count
    spec: RunSpec


class DataRequest(Message, tag="data_request"):
    node_id: NodeId
    epoch: Count


class DataReply(Message, tag="data_reply"):
    epoch: Count
    tensors: Tensors  # x, y: the node's shard; x_test, y_test: the held-out split
    classes: Count = 0  # classes of the whole dataset (a shard may lack some); 0: from the labels


class Ack(Message, tag="ack"):
    ref: Text  # the TYPE acknowledged
    seq: Count = 0


class Error(Message, tag="error"):
    ref: Text  # the TYPE refused ("?" when the header could not be read)
    code: ErrorCode
    reason: Text


class StateUpdate(Message, tag="state"):
    seq: Count
    snapshot: RunSnapshot


class ModelPush(Message, tag="model_push"):
    """A trainer's encoded update for one round, from the trainer or a relay (``sender``).

    ``hash`` is the hash of ``tensors`` as sent (what witnesses attest). ``route`` is the relay
    order the trainer chose (``[learning] gossip_fanout`` > 0): receivers forward to their
    children in it; empty when the trainer pushes to every peer itself. Its ids are distinct.
    """

    run_id: Text
    sender: NodeId
    round: Count
    trainer: NodeId
    hash: Hash
    samples: Count
    tensors: Tensors
    route: NodeIds = ()

    def __post_init__(self) -> None:
        if len(set(self.route)) != len(self.route):
            raise ValueError("route: a node id appears twice")


class ModelAck(Message, tag="model_ack"):
    round: Count
    trainer: NodeId
    hash: Hash


class ModelFetch(Message, tag="model_fetch"):
    """Ask a peer for a trainer's update it holds (a relay on the way died, or it is late).

    Answered with a ``model_push`` from the holder, or an ``error`` (``unavailable``).
    """

    run_id: Text
    sender: NodeId
    round: Count
    trainer: NodeId


# ----------------------------------------------------------------- operators (ctl, attach)

# What ``fl-console ctl`` asks of a running console; "status" reads, the others act.
OPERATOR_VERBS = ("status", "pause", "resume", "end_phase", "kick", "unban", "set")
OperatorVerb = Literal[OPERATOR_VERBS]  # type: ignore[valid-type]
MAX_SETTINGS = 64  # settings one ``set`` may change
# "section.key" as data.toml names it (a top-level key has no dot)
SettingKey = Annotated[str, Meta(pattern=r"\A[A-Za-z0-9_]{1,64}(\.[A-Za-z0-9_]{1,64}){0,3}\Z")]
SettingChanges = Annotated[dict[SettingKey, Text], Meta(max_length=MAX_SETTINGS)]
Changed = Annotated[tuple[tuple[Text, Text, Text], ...], Meta(max_length=MAX_SETTINGS)]
# A console view as ``console.record.replay.view_to_dict`` writes it; the console's own
# declaration of the view is its schema (``view_from_dict`` checks it on arrival).
ViewData = dict[str, Any]


class OperatorRequest(Message, tag="operator"):
    """An operator's request over the console's control ROUTER (``fl-console ctl``, ``attach``).

    ``node``: the client a ``kick`` (``ban``: and bans it) or ``unban`` names; ``changes``: what
    a ``set`` changes, "section.key" -> the value as typed in data.toml (TOML syntax). Answered
    ``operator_reply``, or ``error`` (``not_operator``: the asker may not act; ``wrong_state``
    and others: the console refused the action, with the reason).
    """

    run_id: Text
    verb: OperatorVerb
    node: NodeId | None = None
    ban: bool = False
    changes: SettingChanges = {}


class OperatorReply(Message, tag="operator_reply"):
    """What an operator request did. ``operator``: whether this asker may act (``refusal``
    says why not); ``snapshot`` (status): the run as broadcast; ``changed`` (set): each
    setting changed as (key, old, new)."""

    verb: OperatorVerb
    message: Text  # one line: what happened
    who: Text  # how the console names the asker in its log
    operator: bool
    refusal: Text = ""
    seq: Count = 0
    state_endpoint: Text = ""  # the state PUB, for an attached screen's SUB
    snapshot: RunSnapshot | None = None
    changed: Changed = ()


class ViewRequest(Message, tag="view_request"):
    """``fl-console attach``: the rows the broadcast does not carry (clients, rounds, log).

    ``rounds_from``: only the rows of the rounds numbered from it (0: every round's row), for
    a screen that holds the older, settled ones already.
    """

    run_id: Text
    rounds_from: Count = 0


class ViewReply(Message, tag="view_reply"):
    seq: Count
    operator: bool  # whether this asker may act (the attached screen shows operator keys)
    view: ViewData
    refusal: Text = ""
    rounds_from: Count = 0  # the view's rows start at this round (0: every round's row)


MESSAGE_TYPES: dict[str, type[Message]] = {}
for _cls in Message.__subclasses__():
    _cls.TYPE = _cls.__struct_config__.tag  # type: ignore[assignment]
    MESSAGE_TYPES[_cls.TYPE] = _cls
# Message types whose header lists tensors, each followed by its frame.
WITH_TENSORS = frozenset(c for c in MESSAGE_TYPES.values() if "tensors" in c.__struct_fields__)
