"""Tensors on the wire: named raw buffers with a dtype and a shape, and the model hash.

No torch here: a tensor is its bytes. ``node/`` turns torch tensors into
:class:`TensorPayload` (``memoryview`` of contiguous storage, zero-copy) and back; the console
hashes and stores them without importing torch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class TensorPayload:
    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes | memoryview  # exactly numel * itemsize bytes, C order

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES[self.dtype]

    def meta(self) -> dict[str, object]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


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
