"""Hypothesis strategies for every wire message, built from the messages' field kinds."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from hypothesis import strategies as st

from transport.messages import MESSAGE_TYPES, Message
from transport.tensors import DTYPE_SIZES, TensorPayload

node_ids = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
hashes = st.binary(min_size=32, max_size=32).map(bytes.hex)
counts = st.integers(0, 2**63 - 1)
texts = st.text(max_size=40)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
metric_maps = st.dictionaries(
    st.text(min_size=1, max_size=64), finite_floats | st.integers(-(2**53), 2**53), max_size=8
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite_floats | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(texts, json_values, max_size=6)


def _array(dtype: str, values: list[int]) -> bytes:
    """Finite, exactly-sized bytes for ``dtype`` (bfloat16: the top half of float32)."""
    if dtype == "bfloat16":
        return (np.array(values, np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
    return np.array(values, np.dtype(dtype)).tobytes()


@st.composite
def tensor_payloads(draw: st.DrawFn, name: str) -> TensorPayload:
    dtype = draw(st.sampled_from(sorted(DTYPE_SIZES)))
    shape = tuple(draw(st.lists(st.integers(1, 4), max_size=3)))
    numel = int(np.prod(shape, dtype=np.int64))
    values = draw(st.lists(st.integers(0, 100), min_size=numel, max_size=numel))
    return TensorPayload(name=name, dtype=dtype, shape=shape, data=_array(dtype, values))


@st.composite
def tensor_tuples(draw: st.DrawFn) -> tuple[TensorPayload, ...]:
    names = draw(st.lists(st.text(min_size=1, max_size=20), unique=True, max_size=4))
    return tuple(draw(tensor_payloads(n)) for n in names)


KIND_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "int": counts,
    "str": texts,
    "NodeId": node_ids,
    "Hash": hashes,
    "MetricMap": metric_maps,
    "Candidates": st.lists(st.tuples(node_ids, counts), max_size=5).map(tuple),
    "Attestations": st.dictionaries(node_ids, hashes, max_size=5),
    "NodeIds": st.lists(node_ids, max_size=5, unique=True).map(tuple),
    "JsonObject": json_objects,
    "ErrorCode": st.from_regex(r"[a-z_]{1,64}", fullmatch=True),
    "Tensors": tensor_tuples(),
}


def message_of(cls: type[Message]) -> st.SearchStrategy[Message]:
    kwargs = {f.name: KIND_STRATEGIES[cls.KINDS[f.name]] for f in dataclasses.fields(cls)}
    return st.builds(cls, **kwargs)


messages = st.sampled_from(sorted(MESSAGE_TYPES)).flatmap(lambda t: message_of(MESSAGE_TYPES[t]))
