"""Frames <-> messages. Everything received is checked before it is used; nothing is unpickled.

A message is ``[header, *tensor_frames]``: the header is compact UTF-8 JSON
``{"v": 1, "type": ..., ...fields, "tensors": [{name, dtype, shape}, ...]}`` and each tensor's
raw bytes follow in their own frame, in header order. :func:`encode` passes the payloads'
buffers through untouched, so ``send_multipart(encode(msg), copy=False)`` sends them without a
copy; :func:`decode` returns payloads whose ``data`` is a ``memoryview`` of the received frame.

:func:`decode` raises :class:`DecodeError` for anything wrong, and only that. The checks run
cheapest first: frame count and sizes (``len`` only), then the header, then every tensor's
metadata against its frame's actual length, then the fields, and only then the values
(finiteness), so a lying header costs nothing and nothing is allocated from claimed sizes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from transport.fields import MAX_DIMS, MAX_TEXT_LEN, MessageError
from transport.messages import MESSAGE_TYPES, PROTOCOL_VERSION, Error, Message
from transport.tensors import DTYPE_SIZES, TensorPayload

DECODE_ERROR_CODES = ("malformed", "wrong_version", "too_large", "bad_tensor")
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


# ----------------------------------------------------------------------------- encode


def encode(msg: Message) -> list[bytes | memoryview]:
    """``[header, *tensor buffers]``; send with ``send_multipart(frames, copy=False)``."""
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": msg.TYPE}
    buffers: list[bytes | memoryview] = []
    for name, kind in msg.KINDS.items():
        value = getattr(msg, name)
        if kind == "Tensors":
            header[name] = [t.meta() for t in value]
            buffers.extend(t.data for t in value)
        else:
            header[name] = value
    # ensure_ascii (the default): strings with lone surrogates still encode.
    text = json.dumps(header, separators=(",", ":"), allow_nan=False)
    return [text.encode(), *buffers]


# ----------------------------------------------------------------------------- decode


def decode(
    frames: Sequence[bytes | zmq.Frame | memoryview],
    limits: Limits = DEFAULT_LIMITS,
    *,
    check_finite: bool = True,
) -> Message:
    """Validate ``frames`` (without the ROUTER identity) and build the message they carry."""
    views = _views(frames, limits)
    header = _header(views[0])
    ref = header.pop("type")
    del header["v"]
    cls = MESSAGE_TYPES[ref]
    if not header.keys() <= cls.KINDS.keys():
        extra = sorted(header.keys() - cls.KINDS.keys())
        raise DecodeError("malformed", f"unknown fields {_names(extra)}", ref)
    if not cls.REQUIRED <= header.keys():
        raise DecodeError(
            "malformed", f"missing fields {sorted(cls.REQUIRED - header.keys())}", ref
        )
    tensors: tuple[TensorPayload, ...] = ()
    if cls.TENSOR_FIELD is not None and cls.TENSOR_FIELD in header:
        tensors = header[cls.TENSOR_FIELD] = _payloads(header[cls.TENSOR_FIELD], views[1:], ref)
    if len(views) != len(tensors) + 1:
        raise DecodeError(
            "malformed",
            f"{len(views)} frames for {len(tensors)} tensors (expected {len(tensors) + 1})",
            ref,
        )
    try:
        msg = cls(**header)
    except MessageError as exc:
        raise DecodeError(exc.code, exc.reason, ref) from None
    if check_finite:
        for t in tensors:
            if not is_finite(t):
                raise DecodeError("bad_tensor", f"tensor {t.name!r} holds NaN or Inf", ref)
    return msg


def peek_type(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> str:
    """The message type named by a header that parses (for routing and error replies), else "?"."""
    try:
        return _header(_views(frames, limits)[0])["type"]
    except DecodeError:
        return "?"


def error_for(exc: BaseException, ref: str | None = None) -> Error:
    """The ``error`` reply for a refused message (``ref``: the refused type, if known better)."""
    if isinstance(exc, DecodeError | MessageError):
        code, reason = exc.code, exc.reason
        ref = ref or getattr(exc, "ref", None)
    else:
        code, reason = "malformed", f"{type(exc).__name__}: {exc}"
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
        raise DecodeError("malformed", f"expected a list of frames, got {type(frames).__name__}")
    if not frames:
        raise DecodeError("malformed", "no frames")
    if len(frames) > limits.max_frames:
        raise DecodeError("too_large", f"{len(frames)} frames, at most {limits.max_frames}")
    views = [_view(f, i) for i, f in enumerate(frames)]
    if views[0].nbytes > limits.max_header_bytes:
        raise DecodeError(
            "too_large", f"header of {views[0].nbytes} bytes, at most {limits.max_header_bytes}"
        )
    total = sum(v.nbytes for v in views)
    if total > limits.max_total_bytes:
        raise DecodeError("too_large", f"{total} bytes, at most {limits.max_total_bytes}")
    return views


def _view(frame: Any, index: int) -> memoryview:
    if isinstance(frame, zmq.Frame):
        frame = frame.buffer
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise DecodeError("malformed", f"frame {index} is a {type(frame).__name__}, not bytes")
    view = memoryview(frame)
    if view.ndim != 1 or view.format != "B":
        if not view.c_contiguous:
            raise DecodeError("malformed", f"frame {index} is not contiguous")
        view = view.cast("B")
    return view


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate keys in an object")
    return out


_JSON = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique_keys)


def _header(view: memoryview) -> dict[str, Any]:
    try:
        header = _JSON.decode(str(view, "utf-8"))
    except UnicodeDecodeError:
        raise DecodeError("malformed", "header is not UTF-8") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise DecodeError("malformed", f"header is not JSON: {str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise DecodeError("malformed", f"header is a JSON {type(header).__name__}, not an object")
    version = header.get("v")
    if isinstance(version, bool) or not isinstance(version, int):
        raise DecodeError("malformed", 'header has no integer "v"')
    kind = header.get("type")
    ref = kind if isinstance(kind, str) and kind in MESSAGE_TYPES else "?"
    if version != PROTOCOL_VERSION:
        raise DecodeError(
            "wrong_version", f"protocol version {version}, this side speaks {PROTOCOL_VERSION}", ref
        )
    if ref == "?":
        raise DecodeError("malformed", f"unknown message type {kind!r:.80}")
    return header


def _payloads(metas: Any, frames: list[memoryview], ref: str) -> tuple[TensorPayload, ...]:
    """Tensor metadata checked against the actual frames; data = the frames themselves."""
    if not isinstance(metas, list):
        raise DecodeError("malformed", "tensors: expected a list", ref)
    if len(metas) != len(frames):
        raise DecodeError(
            "malformed", f"{len(metas)} tensors declared, {len(frames)} tensor frames sent", ref
        )
    out = []
    for i, (meta, frame) in enumerate(zip(metas, frames, strict=True)):
        if not isinstance(meta, dict) or set(meta) != {"name", "dtype", "shape"}:
            raise DecodeError("bad_tensor", f"tensors[{i}]: expected {{name, dtype, shape}}", ref)
        name, dtype, shape = meta["name"], meta["dtype"], meta["shape"]
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise DecodeError(
                "bad_tensor",
                f"tensors[{i}]: dtype {dtype!r:.40} not one of {sorted(DTYPE_SIZES)}",
                ref,
            )
        if not isinstance(shape, list) or len(shape) > MAX_DIMS:
            raise DecodeError(
                "bad_tensor", f"tensors[{i}]: shape must be a list of <= {MAX_DIMS}", ref
            )
        need = DTYPE_SIZES[dtype]
        for d in shape:
            if isinstance(d, bool) or not isinstance(d, int) or d < 1:
                raise DecodeError(
                    "bad_tensor", f"tensors[{i}]: shape {shape!r:.80} not positive", ref
                )
            need *= d
            if need > frame.nbytes:  # stop multiplying as soon as the claim exceeds the frame
                break
        if need != frame.nbytes:
            raise DecodeError(
                "bad_tensor",
                f"tensors[{i}]: shape {shape!r:.80} of {dtype} does not match a {frame.nbytes}-byte frame",
                ref,
            )
        out.append(TensorPayload(name=name, dtype=dtype, shape=tuple(shape), data=frame))
    return tuple(out)


def _names(names: list[str]) -> str:
    return ", ".join(repr(n)[:40] for n in names[:8]) + (" ..." if len(names) > 8 else "")
