"""Model *updates* on the wire: pure, deterministic codecs for ``trained - global``.

A trainer sends Δ = trained − base (per state_dict entry, computed in fp32) encoded by the
run's codec; every receiver validates the payloads and decodes them to the same fp32 bits,
whatever its thread count (only element-wise IEEE operations, exact selections and indexed
writes at unique positions: no BLAS, no threaded reductions whose rounding could vary).

What travels for each entry of the model's reference state_dict (payloads in its key order):

- trainable float parameters (``trainable``: float params with ``requires_grad``; see
  :func:`trainable_names`) are encoded by the codec;
- float entries that are not trainable (BatchNorm ``running_mean``/``running_var``) travel as
  the plain float32 Δ under their own name, whatever the codec;
- non-float entries (``num_batches_tracked``) travel as the trained *value* in their own dtype,
  not as a difference; decoding returns that value as it is.

Codecs (``CodecSpec.name``) for a trainable entry ``w`` (``|`` never appears in torch names;
a reference whose names hold one is refused):

- ``none``: ``w`` float32, the entry's shape.
- ``fp16``: ``w`` float16, the entry's shape. Δ is clamped to ±65504 (fp16's largest finite
  value) before the cast, so an outsized Δ arrives saturated instead of as inf; values below
  2**-24 in magnitude become 0, and the relative error in fp16's normal range is <= 2**-11.
- ``int8``: per chunk of :data:`INT8_CHUNK` consecutive elements of the flattened Δ,
  ``scale = max|x| / 127`` (fp32) and ``q = round(x / scale)`` (half to even) clamped to
  [-127, 127], 0 where scale is 0. Parts ``w|q`` int8 [numel] and ``w|scale`` float32
  [ceil(numel / INT8_CHUNK)]. Decode: ``q.float() * scale`` of its chunk; |error| <= scale/2.
- ``topk``: k = max(1, ceil(topk_fraction * numel)) elements of largest |Δ + residual|, ties
  broken toward the lower flat index (the k-th largest magnitude is found first, then every
  larger element and the first tied ones in index order: no dependence on torch.topk's order).
  Parts ``w|idx`` int32 [k] (int64 when numel >= 2**31), strictly increasing, and ``w|val``
  float32 [k]. Decode: zeros with ``val`` written at ``idx``. Error feedback stays at the
  trainer: :attr:`UpdateEncoder.residual` keeps (Δ + previous residual) − what was sent.

Decoding trusts nothing in the payloads: names, dtypes, shapes and byte counts are checked
against what the reference model implies before any tensor is built (``torch.frombuffer`` +
``clone``, as in :mod:`node.weights`), then the values (finite floats, scales >= 0, q != -128,
indices in range and strictly increasing).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from node.weights import WeightsError, dtype_name, to_payloads
from transport.fields import MAX_TENSOR_NAME
from transport.spec import COMPRESSIONS
from transport.tensors import DTYPE_SIZES, TensorPayload

StateDict = Mapping[str, torch.Tensor]

CODECS: tuple[str, ...] = COMPRESSIONS  # declared with the run's spec: [learning] compression
# 256 elements per int8 scale: 4 scale bytes per 256 q bytes adds 1.6% to the int8 payload
# (ratio 0.254 of fp32 instead of 0.251 at 1024), and one outlier coarsens only 256 neighbours.
INT8_CHUNK = 256
FP16_MAX = 65504.0
SEPARATOR = "|"


class CompressionError(WeightsError):
    """An update that cannot be encoded or decoded: a bad codec spec, a state that does not fit
    the reference model, or a received payload that is not what the codec produces."""


@dataclass(frozen=True)
class CodecSpec:
    """The run's update codec: its name (one of :data:`CODECS`) and top-k's kept fraction."""

    name: str = "none"
    topk_fraction: float = 0.1  # topk only: 0 < fraction <= 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in CODECS:
            raise CompressionError(f"unknown codec {self.name!r:.40}; allowed: {list(CODECS)}")
        f = self.topk_fraction
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f <= 1:
            raise CompressionError(f"topk_fraction must be in (0, 1], got {f!r:.40}")

    def topk_k(self, numel: int) -> int:
        """How many elements top-k sends for a tensor of ``numel`` (all of them at most).

        ``ceil(fraction * numel)`` in float64 as written, the same on every node (so 0.07 of
        100 is 8, not 7: 0.07 * 100 is 7.000000000000001)."""
        return min(numel, max(1, math.ceil(self.topk_fraction * numel)))


@dataclass(frozen=True)
class _Part:
    """One payload the codec sends for an entry: name, wire dtype, shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _Entry:
    """One state_dict entry: how it travels (``codec``, ``float`` or ``value``) and its parts."""

    key: str
    kind: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    numel: int
    parts: tuple[_Part, ...]


def trainable_names(model: nn.Module) -> frozenset[str]:
    """The entries the codec compresses: float parameters with ``requires_grad``."""
    return frozenset(
        name
        for name, p in model.named_parameters(remove_duplicate=False)  # tied weights: every name
        if p.requires_grad and p.dtype.is_floating_point
    )


def raw_bytes(reference: StateDict) -> int:
    """Bytes of the uncompressed update (fp32 Δ per float entry, the raw value otherwise)."""
    return sum(
        t.numel() * (4 if t.dtype.is_floating_point else t.element_size())
        for t in reference.values()
    )


def _layout(spec: CodecSpec, reference: StateDict, trainable: frozenset[str]) -> list[_Entry]:
    unknown = sorted(trainable - reference.keys())
    if unknown:
        raise CompressionError(f"trainable names not in the model: {unknown[:8]}")
    entries = []
    for key, ref in reference.items():
        if SEPARATOR in key:
            raise CompressionError(f"tensor {key!r}: names must not contain {SEPARATOR!r}")
        if dtype_name(ref.dtype) not in DTYPE_SIZES:
            raise CompressionError(
                f"tensor {key!r}: dtype {dtype_name(ref.dtype)} is not carried by the wire"
            )
        shape, numel = tuple(ref.shape), ref.numel()
        if not ref.dtype.is_floating_point:
            if key in trainable:
                raise CompressionError(f"tensor {key!r}: trainable but not float ({ref.dtype})")
            kind, parts = "value", (_Part(key, dtype_name(ref.dtype), shape),)
        elif key not in trainable or spec.name == "none":
            kind, parts = "float", (_Part(key, "float32", shape),)
        elif spec.name == "fp16":
            kind, parts = "codec", (_Part(key, "float16", shape),)
        elif spec.name == "int8":
            chunks = -(-numel // INT8_CHUNK)
            parts = (
                _Part(f"{key}|q", "int8", (numel,)),
                _Part(f"{key}|scale", "float32", (chunks,)),
            )
            kind = "codec"
        else:
            k = spec.topk_k(numel)
            idx_dtype = "int32" if numel < 2**31 else "int64"
            parts = (_Part(f"{key}|idx", idx_dtype, (k,)), _Part(f"{key}|val", "float32", (k,)))
            kind = "codec"
        too_long = [p.name for p in parts if len(p.name) > MAX_TENSOR_NAME]
        if too_long:
            raise CompressionError(f"tensor {key!r}: payload name longer than {MAX_TENSOR_NAME}")
        entries.append(_Entry(key, kind, ref.dtype, shape, numel, parts))
    return entries


def _check_state(state: StateDict, entries: list[_Entry], what: str) -> None:
    keys = {e.key: e for e in entries}
    if state.keys() != keys.keys():
        missing = [k for k in keys if k not in state]
        extra = [k for k in state if k not in keys]
        raise CompressionError(f"{what} state: missing {missing[:8]}, unexpected {extra[:8]}")
    for e in entries:
        t = state[e.key]
        if t.dtype != e.dtype or tuple(t.shape) != e.shape:
            raise CompressionError(
                f"{what} state: {e.key!r} is {t.dtype} {list(t.shape)}, "
                f"the model has {e.dtype} {list(e.shape)}"
            )


# ----------------------------------------------------------------------------- encode


class UpdateEncoder:
    """Encodes a trainer's updates with the run's codec; keeps top-k's error feedback.

    One encoder per trainer and model: ``residual`` carries what top-k has not sent yet into
    the next :meth:`encode`; :meth:`reset` drops it (a new run, a model replaced by a sync).
    """

    def __init__(self, spec: CodecSpec, reference: StateDict, trainable: frozenset[str]) -> None:
        self.spec = spec
        self._entries = _layout(spec, reference, frozenset(trainable))
        self.residual: dict[str, torch.Tensor] = {}  # topk: fp32, each entry's shape

    @property
    def payload_bytes(self) -> int:
        """Bytes of every update this encoder sends (fixed by the codec and the model)."""
        return sum(
            math.prod(part.shape) * DTYPE_SIZES[part.dtype]
            for entry in self._entries
            for part in entry.parts
        )

    def reset(self) -> None:
        """Forget the error feedback (the next top-k update starts from plain Δ)."""
        self.residual = {}

    def encode(self, trained: StateDict, base: StateDict) -> tuple[TensorPayload, ...]:
        """The payloads of Δ = trained − base (fp32), in reference order, ready to hash/send.

        Payload data are byte views of fresh CPU tensors (nothing aliases the live model).
        Raises :class:`CompressionError` when a state does not fit the reference or Δ is not
        finite; the residual is only updated once the whole update has been encoded.
        """
        _check_state(trained, self._entries, "trained")
        _check_state(base, self._entries, "base")
        parts: dict[str, torch.Tensor] = {}
        residual: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for e in self._entries:
                new = trained[e.key].detach().to("cpu")
                if e.kind == "value":
                    parts[e.key] = new.clone().contiguous()
                    continue
                delta = new.to(torch.float32) - base[e.key].detach().to("cpu", torch.float32)
                if self.spec.name == "topk" and e.kind == "codec" and e.key in self.residual:
                    delta = delta + self.residual[e.key]
                if not bool(torch.isfinite(delta).all()):
                    raise CompressionError(f"tensor {e.key!r}: the update holds NaN or inf")
                if e.kind == "float":
                    parts[e.key] = delta.contiguous()
                elif self.spec.name == "fp16":
                    parts[e.key] = delta.clamp(-FP16_MAX, FP16_MAX).to(torch.float16)
                elif self.spec.name == "int8":
                    q, scale = _int8_encode(delta.reshape(-1))
                    parts[e.parts[0].name], parts[e.parts[1].name] = q, scale
                else:
                    idx, val = _topk_encode(delta.reshape(-1), e.parts[0].shape[0])
                    parts[e.parts[0].name] = idx.to(_torch_dtype(e.parts[0].dtype))
                    parts[e.parts[1].name] = val
                    left = delta.reshape(-1).clone()
                    left[idx] = 0.0  # (Δ + residual) − decoded(sent), exactly
                    residual[e.key] = left.reshape(e.shape)
        if self.spec.name == "topk":
            self.residual = residual
        return to_payloads(parts)


def _int8_encode(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    numel = flat.numel()
    chunks = -(-numel // INT8_CHUNK)
    rows = torch.zeros(chunks * INT8_CHUNK, dtype=torch.float32)
    rows[:numel] = flat
    rows = rows.view(chunks, INT8_CHUNK)
    scale = rows.abs().amax(dim=1) / 127.0
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero chunks: q = 0
    q = torch.round(rows / divisor[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(-1)[:numel].contiguous(), scale


def _topk_encode(flat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (int64, increasing) and values of the k largest |x|; ties to the lower index."""
    numel = flat.numel()
    if k >= numel:
        idx = torch.arange(numel)
    else:
        magnitude = flat.abs()
        threshold = torch.topk(magnitude, k, sorted=False).values.min()  # k-th largest |x|
        chosen = magnitude > threshold
        ties = (magnitude == threshold).nonzero().reshape(-1)
        chosen[ties[: k - int(chosen.sum())]] = True
        idx = chosen.nonzero().reshape(-1)
    return idx, flat[idx]


# ----------------------------------------------------------------------------- decode


def decode_update(
    payloads: Iterable[TensorPayload],
    spec: CodecSpec,
    reference: StateDict,
    trainable: frozenset[str],
) -> dict[str, torch.Tensor]:
    """Validate received update payloads and decode them (reference key order).

    Returns the fp32 Δ (the entry's shape) for float entries and the raw value (the entry's
    dtype) for the others. Raises :class:`CompressionError` naming the tensor and the problem;
    nothing else, whatever the payloads hold.
    """
    entries = _layout(spec, reference, frozenset(trainable))
    received: dict[str, TensorPayload] = {}
    for p in payloads:
        if not isinstance(p, TensorPayload) or not isinstance(p.name, str):
            raise CompressionError(f"not a named tensor payload: {type(p).__name__}")
        if p.name in received:
            raise CompressionError(f"tensor {p.name!r:.80} appears twice")
        received[p.name] = p
    expected = {part.name: part for e in entries for part in e.parts}
    missing = [n for n in expected if n not in received]
    extra = [n for n in received if n not in expected]
    if missing or extra:
        raise CompressionError(
            f"update payloads do not match the {spec.name} codec for this model: "
            f"missing {_names(missing)}; unexpected {_names(extra)}"
        )
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for e in entries:
            tensors = [_part_from(received[part.name], part) for part in e.parts]
            out[e.key] = _decode_entry(e, spec.name, tensors)
    return out


def _decode_entry(e: _Entry, codec: str, tensors: list[torch.Tensor]) -> torch.Tensor:
    if e.kind == "value":
        return tensors[0]
    if e.kind == "float" or codec == "fp16":
        value = tensors[0]
        _require(bool(torch.isfinite(value).all()), e, "holds NaN or inf")
        return value.float()
    if codec == "int8":
        q, scale = tensors
        _require(bool(torch.isfinite(scale).all()), e, "int8 scales hold NaN or inf")
        _require(bool((scale >= 0).all()), e, "int8 scales must be >= 0")
        _require(not bool((q == -128).any()), e, "int8 values must be in [-127, 127]")
        chunks = scale.numel()
        rows = torch.zeros(chunks * INT8_CHUNK, dtype=torch.float32)
        rows[: e.numel] = q
        rows = rows.view(chunks, INT8_CHUNK) * scale[:, None]
        delta = rows.reshape(-1)[: e.numel]
        _require(bool(torch.isfinite(delta).all()), e, "int8 values overflow float32")
        return delta.reshape(e.shape).clone()
    idx, val = tensors
    k = idx.numel()
    _require(bool(torch.isfinite(val).all()), e, "top-k values hold NaN or inf")
    if k:
        idx = idx.long()
        _require(int(idx[0]) >= 0 and int(idx[-1]) < e.numel, e, f"index out of [0, {e.numel})")
        _require(bool((idx[1:] > idx[:-1]).all()), e, "indices must be strictly increasing")
    delta = torch.zeros(e.numel, dtype=torch.float32)
    delta[idx] = val
    return delta.reshape(e.shape)


def _require(ok: bool, e: _Entry, problem: str) -> None:
    if not ok:
        raise CompressionError(f"tensor {e.key!r}: {problem}")


def _part_from(payload: TensorPayload, part: _Part) -> torch.Tensor:
    """The payload as a new tensor, after checking dtype, shape and byte count against ``part``."""
    name = part.name
    if payload.dtype != part.dtype:
        raise CompressionError(
            f"tensor {name!r}: dtype {payload.dtype!r:.40}, expected {part.dtype}"
        )
    shape = payload.shape
    if not isinstance(shape, tuple | list) or tuple(shape) != part.shape:
        detail = " (k, the number of top-k elements)" if name.endswith(("|idx", "|val")) else ""
        raise CompressionError(
            f"tensor {name!r}: shape {shape!r:.80}, expected {list(part.shape)}{detail}"
        )
    try:
        view = memoryview(payload.data)
        if not view.c_contiguous:
            raise CompressionError(f"tensor {name!r}: buffer is not contiguous")
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    except (TypeError, ValueError) as exc:
        raise CompressionError(f"tensor {name!r}: data is not a byte buffer ({exc})") from None
    nbytes = math.prod(part.shape) * DTYPE_SIZES[part.dtype]
    if view.nbytes != nbytes:
        raise CompressionError(
            f"tensor {name!r}: {view.nbytes} bytes, {part.dtype} {list(part.shape)} needs {nbytes}"
        )
    dtype = _torch_dtype(part.dtype)
    if nbytes == 0:
        return torch.empty(part.shape, dtype=dtype)
    with warnings.catch_warnings():
        # frombuffer warns on read-only buffers (bytes, zmq frames); we clone before any use.
        warnings.simplefilter("ignore", UserWarning)
        raw = torch.frombuffer(view, dtype=torch.uint8)
    return raw.clone().view(dtype).reshape(part.shape)


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _names(names: list[str]) -> str:
    return "[" + ", ".join(repr(n)[:40] for n in names[:8]) + (" ...]" if len(names) > 8 else "]")


# ----------------------------------------------------------------------------- apply


def apply_update(base: StateDict, delta: StateDict) -> dict[str, torch.Tensor]:
    """The new state: float entries ``base + Δ`` (computed in fp32, or fp64 for fp64 entries,
    then cast to the entry's dtype), non-float entries take the update's value."""
    if set(base.keys()) != set(delta.keys()):
        raise CompressionError("update names do not match the model's")
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, b in base.items():
            d = delta[key]
            if tuple(d.shape) != tuple(b.shape):
                raise CompressionError(
                    f"tensor {key!r}: update shape {list(d.shape)} != {list(b.shape)}"
                )
            if b.dtype.is_floating_point:
                wide = torch.promote_types(b.dtype, torch.float32)
                out[key] = (b.to(wide) + d.to(b.device, wide)).to(b.dtype)
            else:
                out[key] = d.to(b.device, b.dtype).clone()
    return out
