"""The bridge between torch state_dicts and the wire's :class:`~transport.tensors.TensorPayload`.

Out: :func:`to_payloads` exposes each tensor's storage as a ``memoryview`` without copying (a
CPU, contiguous tensor is not copied; anything else is made so first). The payloads alias the
model's live memory: hash or send them before the model changes again, or pass a cloned
state_dict (``{k: v.clone() for k, v in model.state_dict().items()}``) when they must outlive
the next optimiser step.

In: :func:`from_payloads` checks every payload against a reference model (same names, dtypes,
shapes, byte counts, finite values) and builds new tensors from the raw bytes with
``torch.frombuffer`` + ``clone``. Nothing is ever unpickled or ``torch.load``-ed.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from transport.tensors import DTYPE_SIZES, FLOAT_DTYPES, TensorPayload, model_hash

logger = logging.getLogger(__name__)

StateDict = Mapping[str, torch.Tensor]

_TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_SIZES}


class WeightsError(ValueError):
    """Received weights that do not fit the model (names, dtypes, shapes, sizes, values)."""


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float32 -> "float32" (the wire's spelling)."""
    return str(dtype).removeprefix("torch.")


def _state_of(model_or_state: nn.Module | StateDict) -> StateDict:
    if isinstance(model_or_state, nn.Module):
        return model_or_state.state_dict()
    return model_or_state


def to_payloads(model_or_state_dict: nn.Module | StateDict) -> tuple[TensorPayload, ...]:
    """The model's tensors as wire payloads, in state_dict order, sharing their memory.

    Each payload's ``data`` is a flat byte ``memoryview`` over a NumPy view of the tensor's
    storage; the view holds a reference to the tensor, so the memory stays alive as long as the
    payload does. bfloat16 (which NumPy lacks) is viewed as raw bytes like every other dtype.
    """
    payloads = []
    for name, tensor in _state_of(model_or_state_dict).items():
        dtype = dtype_name(tensor.dtype)
        if dtype not in DTYPE_SIZES:
            raise WeightsError(
                f"tensor {name!r} has dtype {dtype}, which the wire does not carry; "
                f"allowed: {sorted(DTYPE_SIZES)}"
            )
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        data = memoryview(flat.view(torch.uint8).numpy())
        payloads.append(TensorPayload(name, dtype, tuple(tensor.shape), data))
    return tuple(payloads)


def model_hash_of(model_or_state_dict: nn.Module | StateDict) -> str:
    """The wire's model hash (``transport.tensors.model_hash``) of a model or state_dict."""
    return model_hash(to_payloads(model_or_state_dict))


def from_payloads(
    payloads: Iterable[TensorPayload], reference: nn.Module | StateDict
) -> dict[str, torch.Tensor]:
    """New tensors (reference key order) from received payloads, validated against ``reference``.

    Raises :class:`WeightsError` naming the first problem: duplicate, missing or unexpected
    names; a dtype or shape different from the reference; a buffer of the wrong size; NaN/inf.
    """
    ref = _state_of(reference)
    received: dict[str, TensorPayload] = {}
    for payload in payloads:
        if payload.name in received:
            raise WeightsError(f"tensor {payload.name!r} appears twice")
        received[payload.name] = payload
    missing = [k for k in ref if k not in received]
    extra = [k for k in received if k not in ref]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unexpected {extra}")
        raise WeightsError("tensor names do not match the model: " + "; ".join(parts))
    out: dict[str, torch.Tensor] = {}
    for name, expected in ref.items():
        out[name] = _tensor_from(received[name], expected)
    return out


def _tensor_from(payload: TensorPayload, expected: torch.Tensor) -> torch.Tensor:
    name = payload.name
    want_dtype = dtype_name(expected.dtype)
    if payload.dtype != want_dtype:
        raise WeightsError(f"tensor {name!r}: dtype {payload.dtype}, the model has {want_dtype}")
    want_shape = tuple(expected.shape)
    if tuple(payload.shape) != want_shape:
        raise WeightsError(
            f"tensor {name!r}: shape {list(payload.shape)}, the model has {list(want_shape)}"
        )
    view = memoryview(payload.data)
    if not view.c_contiguous:
        raise WeightsError(f"tensor {name!r}: buffer is not contiguous")
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    nbytes = expected.numel() * DTYPE_SIZES[want_dtype]
    if view.nbytes != nbytes:
        raise WeightsError(
            f"tensor {name!r}: {view.nbytes} bytes, {want_dtype} {list(want_shape)} needs {nbytes}"
        )
    dtype = _TORCH_DTYPES[want_dtype]
    if nbytes == 0:
        return torch.empty(want_shape, dtype=dtype)
    with warnings.catch_warnings():
        # frombuffer warns on read-only buffers (bytes, zmq frames); we clone before any write.
        warnings.simplefilter("ignore", UserWarning)
        raw = torch.frombuffer(view, dtype=torch.uint8)
    # Clone the bytes first: the new storage is aligned for any dtype, the frame may not be.
    tensor = raw.clone().view(dtype).reshape(want_shape)
    if want_dtype in FLOAT_DTYPES:
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise WeightsError(f"tensor {name!r}: {bad} non-finite values (NaN or inf)")
    return tensor


def load_into(model: nn.Module, state_dict: StateDict) -> None:
    """Copy ``state_dict`` into ``model``'s parameters and buffers in place (strict)."""
    try:
        with torch.no_grad():
            model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"cannot load weights into the model: {exc}") from exc
