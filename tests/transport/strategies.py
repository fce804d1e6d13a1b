"""Hypothesis strategies for every wire message, built from the messages' declared field types."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
from hypothesis import strategies as st

from transport import fields as f
from transport import messages as m
from transport.messages import MESSAGE_TYPES, Message, Tensors
from transport.spec import RunSpec
from transport.state import ClientStatus, ClientView, ResultRef, RoundView, RunSnapshot, RunState
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


def snapshot() -> RunSnapshot:
    """One fixed snapshot: a round in progress with one client."""
    return RunSnapshot(
        run_id="r",
        state=RunState.ROUND_TRAIN,
        now=10.0,
        phase_started=9.0,
        deadline=12.5,
        epoch=1,
        round=3,
        epoch_rounds=1,
        accepted_rounds=2,
        total_rounds=10,
        rounds_per_epoch=5,
        init_min_clients=2,
        min_clients=2,
        pending_pause=False,
        clients=(ClientView(id="a", status=ClientStatus.ACTIVE, gossip_endpoint="tcp://x:1"),),
        current=RoundView(
            round=3, epoch=1, seed=7, train_set=("a",), witnesses=("a",), quorum=1, started=9.0
        ),
    )


snapshots = st.builds(
    RunSnapshot,
    run_id=texts,
    state=st.sampled_from(RunState),
    now=finite_floats,
    phase_started=finite_floats,
    deadline=st.none() | finite_floats,
    epoch=counts,
    round=counts,
    epoch_rounds=counts,
    accepted_rounds=counts,
    total_rounds=counts,
    rounds_per_epoch=counts,
    init_min_clients=counts,
    min_clients=counts,
    pending_pause=st.booleans(),
    clients=st.lists(
        st.builds(ClientView, id=node_ids, status=st.sampled_from(ClientStatus)), max_size=3
    ).map(tuple),
    current=st.none()
    | st.builds(
        RoundView,
        round=counts,
        epoch=counts,
        seed=counts,
        train_set=st.lists(node_ids, max_size=3).map(tuple),
        witnesses=st.lists(node_ids, max_size=3).map(tuple),
        quorum=counts,
        started=finite_floats,
        commits=st.dictionaries(node_ids, st.builds(ResultRef, hash=hashes, samples=counts)),
    ),
)

# (declared field type, values for it): the kinds of transport.fields, and the nested data.
TYPE_STRATEGIES: list[tuple[Any, st.SearchStrategy[Any]]] = [
    (int, counts),
    (f.Count, counts),
    (f.Text, texts),
    (f.NodeId, node_ids),
    (f.Hash, hashes),
    (f.MetricMap, metric_maps),
    (f.Candidates, st.lists(st.tuples(node_ids, counts), max_size=5).map(tuple)),
    (f.Attestations, st.dictionaries(node_ids, hashes, max_size=5)),
    (f.NodeIds, st.lists(node_ids, max_size=5, unique=True).map(tuple)),
    (f.ErrorCode, st.sampled_from(f.ErrorCode)),
    (Tensors, tensor_tuples()),
    (RunSpec, st.builds(RunSpec, run_id=texts, seed=st.integers(-(2**63), 2**63 - 1))),
    (RunSnapshot, snapshots),
    (bool, st.booleans()),
    (m.OperatorVerb, st.sampled_from(m.OPERATOR_VERBS)),
    (f.NodeId | None, st.none() | node_ids),
    (RunSnapshot | None, st.none() | snapshots),
    (
        m.SettingChanges,
        st.dictionaries(
            st.from_regex(r"[a-z_]{1,12}\.[a-z_]{1,12}", fullmatch=True), texts, max_size=3
        ),
    ),
    (m.Changed, st.lists(st.tuples(texts, texts, texts), max_size=3).map(tuple)),
    (m.ViewData, json_objects),
]


def _strategy(kind: Any) -> st.SearchStrategy[Any]:
    return next(s for t, s in TYPE_STRATEGIES if t == kind)


def message_of(cls: type[Message]) -> st.SearchStrategy[Message]:
    kwargs = {x.name: _strategy(x.type) for x in msgspec.structs.fields(cls) if x.name != "v"}
    return st.builds(cls, **kwargs)


messages = st.sampled_from(sorted(MESSAGE_TYPES)).flatmap(lambda t: message_of(MESSAGE_TYPES[t]))
