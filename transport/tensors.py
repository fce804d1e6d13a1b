"""Tensors on the wire: named raw buffers with a dtype and a shape, and the model hash.

No torch here: a tensor is its bytes. ``node/`` turns torch tensors into
:class:`TensorPayload` (``memoryview`` of contiguous storage, zero-copy) and back; the console
hashes and stores them without importing torch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

# dtype name (torch's spelling without "torch.") -> bytes per element
DTYPE_SIZES: dict[str, int] = {
    "float32": 4,
    "float64": 8,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "uint8": 1,
    "int8": 1,  # int8-quantised model updates (node/compression.py)
}
FLOAT_DTYPES = frozenset({"float32", "float64", "float16", "bfloat16"})


_set = object.__setattr__


class TensorPayload:
    """A named tensor as bytes: ``data`` is exactly ``numel * itemsize`` bytes, C order.

    A plain class, not a dataclass, on purpose: msgspec leaves it to ``transport.codec``, which
    writes its metadata into the header and passes ``data`` through as its own frame.
    """

    __slots__ = ("name", "dtype", "shape", "data")

    def __init__(
        self, name: str, dtype: str, shape: tuple[int, ...], data: bytes | memoryview
    ) -> None:
        _set(self, "name", name)
        _set(self, "dtype", dtype)
        _set(self, "shape", shape)
        _set(self, "data", data)

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes | memoryview

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"TensorPayload is immutable: cannot set {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorPayload):
            return NotImplemented
        return (self.name, self.dtype, self.shape, self.data) == (
            other.name,
            other.dtype,
            other.shape,
            other.data,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TensorPayload(name={self.name!r}, dtype={self.dtype!r}, shape={self.shape!r})"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES[self.dtype]

    def meta(self) -> dict[str, object]:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape}


def model_hash(tensors: Iterable[TensorPayload]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes, in the given order (hex, 64 chars).

    Both sides hash the same ordered payloads, so a node's hash of its torch model and the
    console's hash of the received frames agree bit for bit.
    """
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.name.encode())
        h.update(b"\0")
        h.update(t.dtype.encode())
        h.update(b"\0")
        h.update(",".join(str(d) for d in t.shape).encode())
        h.update(b"\0")
        h.update(t.data)
    return h.hexdigest()


def total_bytes(tensors: Sequence[TensorPayload]) -> int:
    return sum(t.nbytes for t in tensors)
