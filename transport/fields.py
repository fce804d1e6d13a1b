"""What each kind of message field may hold: the checks :class:`~transport.messages.Message` runs.

A message field is declared with one of the aliases below (``NodeId``, ``Hash``, ``MetricMap``,
...); :data:`VALIDATORS` maps the alias name to the function that checks a value and returns it
normalised (ints to floats in metrics, lists to tuples, JSON data copied). A failed check
raises :class:`MessageError` with a wire error code.
"""

from __future__ import annotations

import math
import re
from typing import Any, TypeAlias

from transport.tensors import DTYPE_SIZES, TensorPayload

MAX_ID_LEN = 64
MAX_TEXT_LEN = 4096  # free text: endpoints, hosts, reasons, stage names
MAX_ENTRIES = 1024  # candidates, attestations
MAX_METRICS = 64
MAX_INT = (1 << 63) - 1
MAX_JSON_DEPTH = 32
MAX_TENSOR_NAME = 256
MAX_DIMS = 8

# Error codes a reply may carry: ARCHITECTURE.md's list plus the codec's two size/tensor codes.
ERROR_CODES = frozenset(
    {
        "malformed",
        "wrong_version",
        "too_large",
        "bad_tensor",
        "wrong_run_id",
        "not_member",
        "not_witness",
        "wrong_round",
        "wrong_state",
        "duplicate",
        "bad_model",
        "hash_mismatch",
        "wrong_sender",
        "kicked",
        "unavailable",
    }
)

_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HASH_RE = re.compile(r"[0-9a-f]{64}")
_CODE_RE = re.compile(r"[a-z_]{1,64}")

# Field kinds. The annotation names select the validator (see _VALIDATORS).
NodeId: TypeAlias = str
Hash: TypeAlias = str
MetricMap: TypeAlias = dict[str, float]
ErrorCode: TypeAlias = str
Candidates: TypeAlias = tuple[tuple[NodeId, int], ...]
Attestations: TypeAlias = dict[NodeId, Hash]
NodeIds: TypeAlias = tuple[NodeId, ...]
JsonObject: TypeAlias = dict[str, Any]
Tensors: TypeAlias = tuple[TensorPayload, ...]


class MessageError(ValueError):
    """A field that does not hold what the protocol allows. ``code`` is a wire error code."""

    def __init__(self, reason: str, code: str = "malformed") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# ----------------------------------------------------------------------------- validators


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError(f"{what}: expected an integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_INT:
        raise MessageError(f"{what}: {value} is outside 0..2**63-1")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise MessageError(f"{what}: expected a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT_LEN:
        raise MessageError(f"{what}: longer than {MAX_TEXT_LEN} characters")
    return value


def _node_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise MessageError(
            f"{what}: node id must be 1-64 characters of [A-Za-z0-9._-], got {value!r:.80}"
        )
    return value


def check_node_id(value: Any) -> str:
    """``value`` if it is a valid node id (also a routing id), else :class:`MessageError`."""
    return _node_id(value, "node id")


def _code(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _CODE_RE.fullmatch(value):
        raise MessageError(
            f"{what}: error code must be 1-64 characters of [a-z_], got {value!r:.80}"
        )
    return value


def _hash(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _HASH_RE.fullmatch(value):
        raise MessageError(f"{what}: expected 64 lowercase hex characters, got {value!r:.80}")
    return value


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MessageError(f"{what}: expected a number, got {type(value).__name__}")
    try:
        out = float(value)
    except OverflowError:
        raise MessageError(f"{what}: {value} does not fit a float") from None
    if not math.isfinite(out):
        raise MessageError(f"{what}: {out} is not finite")
    return out


def _metrics(value: Any, what: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise MessageError(f"{what}: expected an object, got {type(value).__name__}")
    if len(value) > MAX_METRICS:
        raise MessageError(f"{what}: {len(value)} entries, at most {MAX_METRICS}")
    out: dict[str, float] = {}
    for key, v in value.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_ID_LEN:
            raise MessageError(f"{what}: key {key!r:.80} must be a string of 1-{MAX_ID_LEN} chars")
        out[key] = _finite(v, f"{what}.{key}")
    return out


def _candidates(value: Any, what: str) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list | tuple):
        raise MessageError(f"{what}: expected a list, got {type(value).__name__}")
    if len(value) > MAX_ENTRIES:
        raise MessageError(f"{what}: {len(value)} entries, at most {MAX_ENTRIES}")
    out = []
    for i, pair in enumerate(value):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise MessageError(f"{what}[{i}]: expected a [node_id, integer] pair")
        out.append((_node_id(pair[0], f"{what}[{i}]"), _int(pair[1], f"{what}[{i}]")))
    return tuple(out)


def _node_ids(value: Any, what: str) -> tuple[str, ...]:
    """A list of distinct node ids (a relay route)."""
    if not isinstance(value, list | tuple):
        raise MessageError(f"{what}: expected a list, got {type(value).__name__}")
    if len(value) > MAX_ENTRIES:
        raise MessageError(f"{what}: {len(value)} entries, at most {MAX_ENTRIES}")
    out = tuple(_node_id(v, f"{what}[{i}]") for i, v in enumerate(value))
    if len(set(out)) != len(out):
        raise MessageError(f"{what}: a node id appears twice")
    return out


def _attestations(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise MessageError(f"{what}: expected an object, got {type(value).__name__}")
    if len(value) > MAX_ENTRIES:
        raise MessageError(f"{what}: {len(value)} entries, at most {MAX_ENTRIES}")
    return {_node_id(k, f"{what} key"): _hash(v, f"{what}.{k}") for k, v in value.items()}


def _json(value: Any, what: str) -> Any:
    """A copy of ``value`` in JSON's own shapes (tuples become lists); rejects anything else."""
    try:
        return _json_copy(value, 0)
    except _NotJson as exc:
        raise MessageError(f"{what}{''.join(reversed(exc.path))}: {exc.reason}") from None


class _NotJson(Exception):
    """Raised deep in :func:`_json_copy`; the path is added on the way out, so the walk
    formats no strings unless something is wrong (a snapshot has thousands of values)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []


def _json_copy(value: Any, depth: int) -> Any:
    if depth > MAX_JSON_DEPTH:
        raise _NotJson(f"nested deeper than {MAX_JSON_DEPTH}")
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NotJson(f"{value} is not finite")
        return float(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _NotJson(f"key {k!r:.80} is not a string")
            try:
                out[str(k)] = _json_copy(v, depth + 1)
            except _NotJson as exc:
                exc.path.append(f".{k}")
                raise
        return out
    if isinstance(value, list | tuple):
        items = []
        for v in value:
            try:
                items.append(_json_copy(v, depth + 1))
            except _NotJson as exc:
                exc.path.append("[]")
                raise
        return items
    raise _NotJson(f"{type(value).__name__} is not JSON data")


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MessageError(f"{what}: expected an object, got {type(value).__name__}")
    return _json(value, what)


def check_tensor(t: Any, what: str) -> TensorPayload:
    """Check one payload's metadata and that its buffer is exactly ``numel * itemsize`` bytes."""
    if not isinstance(t, TensorPayload):
        raise MessageError(f"{what}: expected a TensorPayload", "bad_tensor")
    if not isinstance(t.name, str) or not 0 < len(t.name) <= MAX_TENSOR_NAME:
        raise MessageError(f"{what}: name must be 1-{MAX_TENSOR_NAME} characters", "bad_tensor")
    if t.dtype not in DTYPE_SIZES:
        raise MessageError(
            f"{what} {t.name!r:.80}: dtype {t.dtype!r:.40} not one of {sorted(DTYPE_SIZES)}",
            "bad_tensor",
        )
    shape = t.shape
    if not isinstance(shape, tuple) or len(shape) > MAX_DIMS:
        raise MessageError(
            f"{what} {t.name!r:.80}: shape must be a tuple of <= {MAX_DIMS} dims", "bad_tensor"
        )
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or not 0 < d <= MAX_INT:
            raise MessageError(
                f"{what} {t.name!r:.80}: shape {shape!r:.80} has a non-positive entry", "bad_tensor"
            )
    try:
        view = memoryview(t.data)
    except TypeError:
        raise MessageError(f"{what} {t.name!r:.80}: data is not a buffer", "bad_tensor") from None
    if not view.c_contiguous:
        raise MessageError(f"{what} {t.name!r:.80}: data is not C-contiguous", "bad_tensor")
    if view.nbytes != t.nbytes:
        raise MessageError(
            f"{what} {t.name!r:.80}: {view.nbytes} bytes, shape {list(shape)} of {t.dtype} needs {t.nbytes}",
            "bad_tensor",
        )
    return t


def _tensors(value: Any, what: str) -> tuple[TensorPayload, ...]:
    if not isinstance(value, list | tuple):
        raise MessageError(f"{what}: expected a sequence of TensorPayload", "bad_tensor")
    out = tuple(check_tensor(t, f"{what}[{i}]") for i, t in enumerate(value))
    if len({t.name for t in out}) != len(out):
        raise MessageError(f"{what}: tensor names are not unique", "bad_tensor")
    return out


VALIDATORS = {
    "int": _int,
    "str": _text,
    "NodeId": _node_id,
    "Hash": _hash,
    "MetricMap": _metrics,
    "ErrorCode": _code,
    "Candidates": _candidates,
    "Attestations": _attestations,
    "NodeIds": _node_ids,
    "JsonObject": _object,
    "Tensors": _tensors,
}
