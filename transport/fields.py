"""The kinds of value a wire field may hold, declared once with their limits, and the error codes.

Messages (``transport.messages``), the snapshot (``transport.state``) and the run spec
(``transport.spec``) declare their fields with these ``Annotated`` kinds; msgspec checks them
when ``transport.codec`` decodes a header, and only then: what we build ourselves is not checked
again. A refused value becomes a ``malformed`` error whose reason is msgspec's message, with the
path (``Expected `int`, got `str` - at `$.round```).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from transport.tensors import DTYPE_SIZES

MAX_ID_LEN = 64
MAX_TEXT_LEN = 4096  # free text: endpoints, hosts, reasons, stage names
MAX_ENTRIES = 1024  # candidates, attestations, a relay route
MAX_METRICS = 64
MAX_INT = (1 << 63) - 1
MAX_TENSOR_NAME = 256
MAX_DIMS = 8


class ErrorCode(StrEnum):
    """What an ``error`` reply says went wrong (docs/ARCHITECTURE.md, "Wire")."""

    MALFORMED = "malformed"  # not our shape: bad JSON, a field out of its limits, ...
    WRONG_VERSION = "wrong_version"
    TOO_LARGE = "too_large"  # over the receiver's Limits
    BAD_TENSOR = "bad_tensor"  # tensor metadata that does not match its frame, NaN/Inf
    WRONG_RUN_ID = "wrong_run_id"
    NOT_MEMBER = "not_member"
    NOT_WITNESS = "not_witness"
    WRONG_ROUND = "wrong_round"
    WRONG_STATE = "wrong_state"
    DUPLICATE = "duplicate"
    BAD_MODEL = "bad_model"
    HASH_MISMATCH = "hash_mismatch"
    WRONG_SENDER = "wrong_sender"
    KICKED = "kicked"
    BANNED = "banned"  # the operator banned this node id: its joins are refused
    UNAVAILABLE = "unavailable"
    RATE_LIMITED = "rate_limited"  # too many refusals: ignored for a while (transport/flood.py)
    NOT_OPERATOR = "not_operator"  # an operator request from one who may not act
    BAD_SETTING = "bad_setting"  # a ``set`` the config rules or the run's state refused


Count = Annotated[int, Meta(ge=0, le=MAX_INT)]
Text = Annotated[str, Meta(max_length=MAX_TEXT_LEN)]
# \A...\Z: msgspec matches with re.search, and "$" would let a trailing newline through.
NodeId = Annotated[str, Meta(pattern=r"\A[A-Za-z0-9._-]{1,64}\Z")]
Hash = Annotated[str, Meta(pattern=r"\A[0-9a-f]{64}\Z")]
MetricName = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN)]
MetricMap = Annotated[dict[MetricName, float], Meta(max_length=MAX_METRICS)]
Candidates = Annotated[tuple[tuple[NodeId, Count], ...], Meta(max_length=MAX_ENTRIES)]
Attestations = Annotated[dict[NodeId, Hash], Meta(max_length=MAX_ENTRIES)]
NodeIds = Annotated[tuple[NodeId, ...], Meta(max_length=MAX_ENTRIES)]
Dtype = Literal[tuple(DTYPE_SIZES)]  # type: ignore[valid-type]
Dim = Annotated[int, Meta(ge=1, le=MAX_INT)]
Shape = Annotated[tuple[Dim, ...], Meta(max_length=MAX_DIMS)]
TensorName = Annotated[str, Meta(min_length=1, max_length=MAX_TENSOR_NAME)]


class MessageError(ValueError):
    """A value that does not hold what the protocol allows. ``code`` is a wire error code."""

    def __init__(self, reason: str, code: str = ErrorCode.MALFORMED) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def check_node_id(value: Any) -> str:
    """``value`` if it is a valid node id (also a routing id), else :class:`MessageError`."""
    try:
        return msgspec.convert(value, NodeId)
    except msgspec.ValidationError as exc:
        raise MessageError(f"node id must be 1-64 characters of [A-Za-z0-9._-]: {exc}") from None
