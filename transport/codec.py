"""Frames <-> messages. Everything received is checked before it is used; nothing is unpickled.

A message is ``[header, *tensor_frames]``: the header is compact UTF-8 JSON
``{"type": ..., ...fields, "tensors": [{name, dtype, shape}, ...], "v": 1}`` written by msgspec
from the message's declaration, and each tensor's raw bytes follow in their own frame, in header
order. :func:`encode` passes the payloads' buffers through untouched, so
``send_multipart(encode(msg), copy=False)`` sends them without a copy; :func:`decode` returns
payloads whose ``data`` is a ``memoryview`` of the received frame.

:func:`decode` raises :class:`DecodeError` for anything wrong, and only that. The checks run
cheapest first: frame count and sizes (``len`` only), then the envelope (JSON, ``v``, a known
``type``), then every field against its declaration (msgspec), then every tensor's metadata
against its frame's actual length, and only then the values (finiteness), so a lying header
costs nothing and nothing is allocated from claimed sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import zmq

from transport.fields import MAX_TEXT_LEN, Dtype, ErrorCode, MessageError, Shape, TensorName
from transport.messages import MESSAGE_TYPES, PROTOCOL_VERSION, WITH_TENSORS, Error, Message
from transport.tensors import DTYPE_SIZES, TensorPayload

DECODE_ERROR_CODES = (
    ErrorCode.MALFORMED,
    ErrorCode.WRONG_VERSION,
    ErrorCode.TOO_LARGE,
    ErrorCode.BAD_TENSOR,
)
FINITE_CHUNK = 1 << 18  # elements checked per numpy call: bounded scratch memory, same speed


@dataclass(frozen=True)
class Limits:
    """Caps on one received message, checked before its header is parsed."""

    max_frames: int = 512
    max_header_bytes: int = 1 << 20
    max_total_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        for name in ("max_frames", "max_header_bytes", "max_total_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS = Limits()


class DecodeError(ValueError):
    """A received message we refuse. ``code`` is a wire error code, ``ref`` the type if known."""

    def __init__(self, code: str, reason: str, ref: str = "?") -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.ref = ref


# ----------------------------------------------------------------------------- the header


class TensorMeta(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One tensor's entry in the header's ``tensors``; its bytes are the matching frame."""

    name: TensorName
    dtype: Dtype
    shape: Shape


class _Envelope(msgspec.Struct):
    """What every header has, read first: a wrong version is named before any field is."""

    v: int
    type: str


class _BadTensor(Exception):
    """Raised by the decoder's hook (not a ValueError, so msgspec lets it through)."""


def _tensor_meta(obj: TensorPayload) -> dict[str, object]:
    return obj.meta()


def _tensor_from_meta(kind: type, obj: Any) -> TensorPayload:
    """A payload without data yet: :func:`decode` binds its frame once all fields are valid."""
    if kind is not TensorPayload:
        raise NotImplementedError(kind)
    try:
        meta = msgspec.convert(obj, TensorMeta)
    except msgspec.ValidationError as exc:
        raise _BadTensor(f"tensor metadata: {exc}") from None
    return TensorPayload(meta.name, meta.dtype, meta.shape, b"")


_ENCODER = msgspec.json.Encoder(enc_hook=_tensor_meta)
_ENVELOPE = msgspec.json.Decoder(_Envelope)
# One decoder per type: the envelope has named it already (cheaper than the tagged union's).
_DECODERS = {
    name: msgspec.json.Decoder(cls, dec_hook=_tensor_from_meta)
    for name, cls in MESSAGE_TYPES.items()
}


# ----------------------------------------------------------------------------- encode


def encode(msg: Message) -> list[bytes | memoryview]:
    """``[header, *tensor buffers]``; send with ``send_multipart(frames, copy=False)``."""
    header = _ENCODER.encode(msg)
    if type(msg) in WITH_TENSORS:
        return [header, *(t.data for t in msg.tensors)]  # type: ignore[attr-defined]
    return [header]


# ----------------------------------------------------------------------------- decode


def decode(
    frames: Sequence[bytes | zmq.Frame | memoryview],
    limits: Limits = DEFAULT_LIMITS,
    *,
    check_finite: bool = True,
) -> Message:
    """Validate ``frames`` (without the ROUTER identity) and build the message they carry."""
    views = _views(frames, limits)
    ref = _header(views[0]).type
    try:
        msg = _DECODERS[ref].decode(views[0])
    except msgspec.MsgspecError as exc:  # a field out of its declaration; bad UTF-8 in a string
        raise DecodeError(ErrorCode.MALFORMED, str(exc), ref) from None
    except _BadTensor as exc:
        raise DecodeError(ErrorCode.BAD_TENSOR, str(exc), ref) from None
    tensors: tuple[TensorPayload, ...] = msg.tensors if type(msg) in WITH_TENSORS else ()  # type: ignore[attr-defined]
    if len(views) != len(tensors) + 1:
        raise DecodeError(
            ErrorCode.MALFORMED,
            f"{len(views)} frames for {len(tensors)} tensors (expected {len(tensors) + 1})",
            ref,
        )
    for i, (t, frame) in enumerate(zip(tensors, views[1:], strict=True)):
        need = DTYPE_SIZES[t.dtype]
        for d in t.shape:
            need *= d
            if need > frame.nbytes:  # stop multiplying as soon as the claim exceeds the frame
                break
        if need != frame.nbytes:
            raise DecodeError(
                ErrorCode.BAD_TENSOR,
                f"tensors[{i}]: shape {list(t.shape)!r:.80} of {t.dtype} does not match a "
                f"{frame.nbytes}-byte frame",
                ref,
            )
        object.__setattr__(t, "data", frame)  # a payload of our own, made by this decode
    if len({t.name for t in tensors}) != len(tensors):
        raise DecodeError(ErrorCode.BAD_TENSOR, "tensor names are not unique", ref)
    if check_finite:
        for t in tensors:
            if not is_finite(t):
                raise DecodeError(ErrorCode.BAD_TENSOR, f"tensor {t.name!r} holds NaN or Inf", ref)
    return msg


def peek_type(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> str:
    """The message type named by a header that parses (for routing and error replies), else "?"."""
    try:
        return _header(_views(frames, limits)[0]).type
    except DecodeError:
        return "?"


def error_for(exc: BaseException, ref: str | None = None) -> Error:
    """The ``error`` reply for a refused message (``ref``: the refused type, if known better)."""
    if isinstance(exc, DecodeError | MessageError):
        code, reason = exc.code, exc.reason
        ref = ref or getattr(exc, "ref", None)
    else:
        code, reason = ErrorCode.MALFORMED, f"{type(exc).__name__}: {exc}"
    return Error(ref=(ref or "?")[:MAX_TEXT_LEN], code=code, reason=reason[:MAX_TEXT_LEN])


def is_finite(t: TensorPayload) -> bool:
    """True unless a float tensor holds NaN or +-Inf (integer tensors always are)."""
    if t.dtype == "bfloat16":  # no numpy bf16: exponent bits all ones means Inf or NaN
        bits = np.frombuffer(t.data, dtype=np.uint16)
        for start in range(0, bits.size, FINITE_CHUNK):
            chunk = bits[start : start + FINITE_CHUNK]
            if np.any((chunk & 0x7F80) == 0x7F80):
                return False
        return True
    if t.dtype not in ("float32", "float64", "float16"):
        return True
    values = np.frombuffer(t.data, dtype=np.dtype(t.dtype))
    fast = t.dtype != "float16"  # no BLAS dot for float16
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, values.size, FINITE_CHUNK):
            chunk = values[start : start + FINITE_CHUNK]
            # One BLAS pass and no scratch array: x.x is NaN or Inf when any element is (every
            # term is >= 0, so infinities cannot cancel). It also overflows for huge finite
            # values (|x| > ~1e19 in float32); then the exact check decides.
            if fast and np.isfinite(np.dot(chunk, chunk)):
                continue
            if not np.isfinite(chunk).all():
                return False
    return True


# ----------------------------------------------------------------------------- internals


def _views(frames: Any, limits: Limits) -> list[memoryview]:
    if not isinstance(frames, list | tuple):
        raise DecodeError(
            ErrorCode.MALFORMED, f"expected a list of frames, got {type(frames).__name__}"
        )
    if not frames:
        raise DecodeError(ErrorCode.MALFORMED, "no frames")
    if len(frames) > limits.max_frames:
        raise DecodeError(ErrorCode.TOO_LARGE, f"{len(frames)} frames, at most {limits.max_frames}")
    views = [_view(f, i) for i, f in enumerate(frames)]
    if views[0].nbytes > limits.max_header_bytes:
        raise DecodeError(
            ErrorCode.TOO_LARGE,
            f"header of {views[0].nbytes} bytes, at most {limits.max_header_bytes}",
        )
    total = sum(v.nbytes for v in views)
    if total > limits.max_total_bytes:
        raise DecodeError(ErrorCode.TOO_LARGE, f"{total} bytes, at most {limits.max_total_bytes}")
    return views


def _view(frame: Any, index: int) -> memoryview:
    if isinstance(frame, zmq.Frame):
        frame = frame.buffer
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise DecodeError(
            ErrorCode.MALFORMED, f"frame {index} is a {type(frame).__name__}, not bytes"
        )
    view = memoryview(frame)
    if view.ndim != 1 or view.format != "B":
        if not view.c_contiguous:
            raise DecodeError(ErrorCode.MALFORMED, f"frame {index} is not contiguous")
        view = view.cast("B")
    return view


def _header(view: memoryview) -> _Envelope:
    try:
        envelope = _ENVELOPE.decode(view)
    except msgspec.DecodeError as exc:
        raise DecodeError(ErrorCode.MALFORMED, f"header is not JSON: {str(exc)[:200]}") from None
    except msgspec.ValidationError as exc:
        raise DecodeError(ErrorCode.MALFORMED, f"header: {exc}") from None
    known = envelope.type in MESSAGE_TYPES
    if envelope.v != PROTOCOL_VERSION:
        raise DecodeError(
            ErrorCode.WRONG_VERSION,
            f"protocol version {envelope.v}, this side speaks {PROTOCOL_VERSION}",
            envelope.type if known else "?",
        )
    if not known:
        raise DecodeError(ErrorCode.MALFORMED, f"unknown message type {envelope.type!r:.80}")
    return envelope
