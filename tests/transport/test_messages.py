from __future__ import annotations

import json

import numpy as np
import pytest

from tests.transport.strategies import snapshot
from transport import messages as m
from transport.codec import DecodeError, decode, encode
from transport.fields import ErrorCode
from transport.spec import RunSpec, SpecError
from transport.state import RunSnapshot, SnapshotError
from transport.tensors import TensorPayload

H = "ab" * 32


def test_every_wire_name_is_registered_once() -> None:
    expected = {
        "join", "join_ack", "heartbeat", "leave", "warmed_up", "vote", "commit", "witness",
        "aggregate", "metrics", "checkpoint_upload", "model_request", "model_reply",
        "data_request", "data_reply", "ack", "error", "state", "model_push", "model_ack",
        "model_fetch", "spec_request", "spec_reply", "operator", "operator_reply",
        "view_request", "view_reply",
    }  # fmt: skip
    assert set(m.MESSAGE_TYPES) == expected
    assert all(cls.TYPE == name for name, cls in m.MESSAGE_TYPES.items())
    assert m.PROTOCOL_VERSION == 1


def test_messages_are_frozen() -> None:
    msg = m.Heartbeat(node_id="n1", stage="train", round=2)
    with pytest.raises(AttributeError):
        msg.round = 3  # type: ignore[misc]


def refused(type_: str, **fields: object) -> str:
    """Decode a header holding ``fields``: it must be refused as malformed; the reason."""
    with pytest.raises(DecodeError) as info:
        decode([json.dumps({"v": 1, "type": type_, **fields}).encode()])
    assert info.value.code == "malformed" and info.value.ref == type_
    return info.value.reason


@pytest.mark.parametrize("bad", ["", "a" * 65, "bad id", "ñ", "a/b", "a\n", 5, None])
def test_invalid_node_id_is_refused(bad: object) -> None:
    assert "node_id" in refused("leave", node_id=bad)


@pytest.mark.parametrize("bad", ["AB" * 32, "ab" * 31, "zz" * 32, "ab" * 32 + "\n", 1])
def test_invalid_hash_is_refused(bad: object) -> None:
    assert "model_hash" in refused("warmed_up", node_id="n", epoch=0, model_hash=bad)


@pytest.mark.parametrize("bad", [-1, True, 1.5, 2**63, "3"])
def test_counters_are_non_negative_integers(bad: object) -> None:
    assert "round" in refused("heartbeat", node_id="n", round=bad)


def test_metric_ints_become_floats() -> None:
    head = {"v": 1, "type": "metrics", "node_id": "n", "round": 1}
    msg = decode([json.dumps({**head, "metrics": {"samples_per_s": 3, "loss": 0.5}}).encode()])
    assert isinstance(msg, m.Metrics) and msg.metrics == {"samples_per_s": 3.0, "loss": 0.5}
    assert type(msg.metrics["samples_per_s"]) is float


@pytest.mark.parametrize(
    "bad",
    [
        {"loss": True},
        {"loss": "1"},
        {"": 1.0},
        {"k" * 65: 1.0},
        {f"m{i}": 1.0 for i in range(65)},
        {"big": 10**400},
        [],
    ],
)
def test_bad_metrics_are_refused(bad: object) -> None:
    assert "metrics" in refused("aggregate", node_id="n", round=1, hash=H, metrics=bad)


@pytest.mark.parametrize("bad", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_metrics_are_refused(bad: bytes) -> None:
    head = b'{"v":1,"type":"metrics","node_id":"n","round":1,"metrics":{"loss":' + bad + b"}}"
    with pytest.raises(DecodeError) as info:
        decode([head])
    assert info.value.code == "malformed"


def test_vote_candidates_are_pairs_and_become_tuples() -> None:
    head = {"v": 1, "type": "vote", "node_id": "n", "round": 1}
    msg = decode([json.dumps({**head, "candidates": [["a", 3], ["b", 4]]}).encode()])
    assert isinstance(msg, m.Vote) and msg.candidates == (("a", 3), ("b", 4))
    assert "candidates" in refused("vote", node_id="n", round=1, candidates=[["a", 3, 4]])


def test_witness_attestations_need_node_ids_and_hashes() -> None:
    msg = m.Witness(node_id="w", round=1, attestations={"t": H})
    assert decode(encode(msg)) == msg
    assert "attestations" in refused("witness", node_id="w", round=1, attestations={"t": "x"})


def test_relay_route_ids_are_distinct() -> None:
    push = {"run_id": "r", "sender": "a", "round": 1, "trainer": "a", "hash": H, "samples": 1}
    assert "twice" in refused("model_push", **push, tensors=[], route=["b", "c", "b"])


def test_join_ack_carries_spec_and_snapshot_typed() -> None:
    spec = RunSpec(run_id="r", seed=3)
    snap = snapshot()
    msg = m.JoinAck(
        node_id="n", state_endpoint="tcp://127.0.0.1:1", seq=4, spec=spec, snapshot=snap
    )
    back = decode(encode(msg))
    assert isinstance(back, m.JoinAck) and back.spec == spec and back.snapshot == snap
    assert RunSpec.from_dict(spec.to_dict()) == spec
    assert RunSnapshot.from_dict(snap.to_dict()) == snap
    raw = json.loads(encode(msg)[0])
    assert "spec" in refused("join_ack", **{**raw, "spec": []})
    with pytest.raises(SpecError, match="learning_rate"):
        RunSpec.from_dict({**spec.to_dict(), "learning": {"learning_rate": "fast"}})
    with pytest.raises(SnapshotError, match="colour"):
        RunSnapshot.from_dict({**snap.to_dict(), "colour": "red"})
    state = json.loads(encode(m.StateUpdate(seq=1, snapshot=snap))[0])
    state["snapshot"]["state"] = "Dancing"
    assert "snapshot.state" in refused("state", **state)


def test_tensor_metadata_must_match_its_frame() -> None:
    ok = TensorPayload("w", "float32", (2, 3), np.zeros((2, 3), np.float32).tobytes())
    assert decode(encode(m.DataReply(epoch=0, tensors=(ok,)))) == m.DataReply(
        epoch=0, tensors=(ok,)
    )
    bad = [
        TensorPayload("w", "float32", (2, 3), b"\0" * 20),
        TensorPayload("w", "complex64", (1,), b"\0" * 8),
        TensorPayload("w", "float32", (0,), b""),
        TensorPayload("", "float32", (1,), b"\0" * 4),
        TensorPayload("w" * 257, "float32", (1,), b"\0" * 4),
    ]
    for t in bad:
        with pytest.raises(DecodeError) as info:
            decode(encode(m.DataReply(epoch=0, tensors=(t,))))
        assert info.value.code == "bad_tensor", t
    with pytest.raises(DecodeError, match="unique") as info:
        decode(encode(m.DataReply(epoch=0, tensors=(ok, ok))))
    assert info.value.code == "bad_tensor"


def test_error_codes_are_one_enum_with_the_wire_strings() -> None:
    reply = decode(encode(m.Error(ref="join", code=ErrorCode.WRONG_RUN_ID, reason="x")))
    assert isinstance(reply, m.Error) and reply.code is ErrorCode.WRONG_RUN_ID
    assert reply.code == "wrong_run_id"
    assert "code" in refused("error", ref="join", code="Bad Code", reason="x")


def test_transport_imports_neither_torch_nor_console_nor_node() -> None:
    import subprocess
    import sys

    code = (
        "import sys, transport.codec, transport.sockets, transport.messages;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'console', 'node')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
