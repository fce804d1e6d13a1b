from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from tests.factories import round_view, run_snapshot
from transport import messages as m
from transport.spec import RunSpec
from transport.state import ClientStatus, ClientView, RunSnapshot
from transport.tensors import TensorPayload

H = "ab" * 32


def snapshot() -> RunSnapshot:
    return run_snapshot(
        now=10.0,
        phase_started=9.0,
        deadline=12.5,
        epoch=1,
        round=3,
        epoch_rounds=1,
        accepted_rounds=2,
        total_rounds=10,
        rounds_per_epoch=5,
        clients=(ClientView(id="a", status=ClientStatus.ACTIVE, gossip_endpoint="tcp://x:1"),),
        current=round_view(
            round=3, epoch=1, seed=7, train_set=("a",), witnesses=("a",), started=9.0
        ),
    )


def test_every_wire_name_is_registered_once() -> None:
    expected = {
        "join", "join_ack", "heartbeat", "leave", "warmed_up", "vote", "commit", "witness",
        "aggregate", "metrics", "checkpoint_upload", "model_request", "model_reply",
        "data_request", "data_reply", "ack", "error", "state", "model_push", "model_ack",
        "model_fetch",
    }  # fmt: skip
    assert set(m.MESSAGE_TYPES) == expected
    assert all(cls.TYPE == name for name, cls in m.MESSAGE_TYPES.items())
    assert m.PROTOCOL_VERSION == 1


def test_messages_are_frozen() -> None:
    msg = m.Heartbeat(node_id="n1", stage="train", round=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.round = 3  # type: ignore[misc]


@pytest.mark.parametrize("bad", ["", "a" * 65, "bad id", "ñ", "a/b", 5, None])
def test_invalid_node_id_is_refused(bad: object) -> None:
    with pytest.raises(m.MessageError, match="node id"):
        m.Leave(node_id=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["AB" * 32, "ab" * 31, "zz" * 32, "ab" * 32 + "\n", 1])
def test_invalid_hash_is_refused(bad: object) -> None:
    with pytest.raises(m.MessageError, match="hex"):
        m.WarmedUp(node_id="n", epoch=0, model_hash=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, True, 1.0, 2**63, "3"])
def test_counters_are_non_negative_integers(bad: object) -> None:
    with pytest.raises(m.MessageError, match="round"):
        m.Heartbeat(node_id="n", round=bad)  # type: ignore[arg-type]


def test_metric_ints_become_floats_and_caller_dict_is_copied() -> None:
    raw = {"samples_per_s": 3, "loss": 0.5}
    msg = m.Metrics(node_id="n", round=1, metrics=raw)
    raw["loss"] = 9.0
    assert msg.metrics == {"samples_per_s": 3.0, "loss": 0.5}
    assert type(msg.metrics["samples_per_s"]) is float


@pytest.mark.parametrize(
    "bad",
    [
        {"loss": math.nan},
        {"loss": math.inf},
        {"loss": True},
        {"loss": "1"},
        {"": 1.0},
        {"k" * 65: 1.0},
        {f"m{i}": 1.0 for i in range(65)},
        {"big": 10**400},
    ],
)
def test_bad_metrics_are_refused(bad: dict) -> None:
    with pytest.raises(m.MessageError):
        m.Aggregate(node_id="n", round=1, hash=H, metrics=bad)


def test_vote_candidates_are_normalised_to_tuples() -> None:
    msg = m.Vote(node_id="n", round=1, candidates=[["a", 3], ("b", 4)])  # type: ignore[arg-type]
    assert msg.candidates == (("a", 3), ("b", 4))
    with pytest.raises(m.MessageError):
        m.Vote(node_id="n", round=1, candidates=(("a", 3, 4),))  # type: ignore[arg-type]


def test_witness_attestations_need_node_ids_and_hashes() -> None:
    assert m.Witness(node_id="w", round=1, attestations={"t": H}).attestations == {"t": H}
    with pytest.raises(m.MessageError):
        m.Witness(node_id="w", round=1, attestations={"t": "nothex"})


def test_join_ack_carries_spec_and_snapshot_that_rebuild() -> None:
    spec = RunSpec(run_id="r", seed=3)
    snap = snapshot()
    msg = m.JoinAck(
        node_id="n",
        state_endpoint="tcp://127.0.0.1:1",
        seq=4,
        spec=spec.to_dict(),
        snapshot=snap.to_dict(),
    )
    assert RunSpec.from_dict(msg.spec) == spec
    assert RunSnapshot.from_dict(msg.snapshot) == snap
    with pytest.raises(m.MessageError, match="object"):
        m.JoinAck(node_id="n", state_endpoint="", seq=0, spec=[], snapshot={})  # type: ignore[arg-type]
    with pytest.raises(m.MessageError, match="finite"):
        m.StateUpdate(seq=1, snapshot={"now": math.nan})


def test_tensor_payload_length_must_match_shape() -> None:
    ok = TensorPayload("w", "float32", (2, 3), np.zeros((2, 3), np.float32).tobytes())
    assert m.DataReply(epoch=0, tensors=[ok]).tensors == (ok,)  # type: ignore[arg-type]
    bad = [
        TensorPayload("w", "float32", (2, 3), b"\0" * 20),
        TensorPayload("w", "complex64", (1,), b"\0" * 8),
        TensorPayload("w", "float32", (0,), b""),
        TensorPayload("", "float32", (1,), b"\0" * 4),
        TensorPayload("w", "float32", [1], b"\0" * 4),  # type: ignore[arg-type]
    ]
    for t in bad:
        with pytest.raises(m.MessageError) as info:
            m.DataReply(epoch=0, tensors=(t,))
        assert info.value.code == "bad_tensor"
    with pytest.raises(m.MessageError, match="unique"):
        m.DataReply(epoch=0, tensors=(ok, ok))


def test_error_code_is_a_word() -> None:
    assert m.Error(ref="join", code="wrong_run_id", reason="x").code in m.ERROR_CODES
    with pytest.raises(m.MessageError):
        m.Error(ref="join", code="Bad Code", reason="x")


def test_transport_imports_neither_torch_nor_console_nor_node() -> None:
    import subprocess
    import sys

    code = (
        "import sys, transport.codec, transport.sockets, transport.messages;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'console', 'node')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
