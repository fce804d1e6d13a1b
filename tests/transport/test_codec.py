from __future__ import annotations

import json
import time
import tracemalloc

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.transport.strategies import json_values, messages
from transport import messages as m
from transport.codec import (
    DECODE_ERROR_CODES,
    DecodeError,
    Limits,
    decode,
    encode,
    error_for,
    is_finite,
    peek_type,
)
from transport.tensors import TensorPayload, model_hash

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
H = "cd" * 32


def header(**fields: object) -> bytes:
    return json.dumps({"v": 1, **fields}).encode()


def decode_error(frames: object, **kw: object) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(frames, **kw)  # type: ignore[arg-type]
    assert info.value.code in DECODE_ERROR_CODES
    return info.value


def push(*tensors: TensorPayload) -> m.ModelPush:
    return m.ModelPush(
        run_id="r",
        sender="a",
        round=1,
        trainer="a",
        hash=model_hash(tensors),
        samples=3,
        tensors=tensors,
    )


def f32(name: str, values: np.ndarray) -> TensorPayload:
    a = np.ascontiguousarray(values, np.float32)
    return TensorPayload(name, "float32", a.shape, memoryview(a).cast("B"))


# ----------------------------------------------------------------------------- round trips


@FUZZ
@given(messages)
def test_every_message_round_trips(msg: m.Message) -> None:
    frames = encode(msg)
    assert decode(frames) == msg
    assert decode([zmq.Frame(bytes(f)) for f in frames]) == msg
    assert json.loads(frames[0])["type"] == msg.TYPE
    assert peek_type(frames) == msg.TYPE


def test_header_is_compact_json_with_tensor_metadata() -> None:
    t = f32("layer.w", np.ones((2, 3)))
    frames = encode(push(t))
    head = json.loads(frames[0])
    assert b" " not in bytes(frames[0])
    assert head["v"] == 1 and head["type"] == "model_push"
    assert head["tensors"] == [{"name": "layer.w", "dtype": "float32", "shape": [2, 3]}]
    assert frames[1] is t.data  # passed through untouched, for send_multipart(copy=False)


def test_decoded_tensors_are_views_of_the_received_frames() -> None:
    t = f32("w", np.arange(100_000))
    frames = [zmq.Frame(bytes(f)) for f in encode(push(t))]
    got = decode(frames)
    assert isinstance(got, m.ModelPush)
    data = got.tensors[0].data
    assert isinstance(data, memoryview) and data.obj is frames[1]
    assert np.shares_memory(
        np.frombuffer(data, np.uint8), np.frombuffer(frames[1].buffer, np.uint8)
    )
    assert model_hash(got.tensors) == got.hash


def test_messages_without_defaults_fields_fill_defaults() -> None:
    assert decode([header(type="heartbeat", node_id="n")]) == m.Heartbeat(node_id="n")


# ----------------------------------------------------------------------------- fuzzing


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_decode_error(data: bytes) -> None:
    decode_error([data])


@FUZZ
@given(
    st.lists(st.binary(max_size=64) | st.integers() | st.none(), max_size=6) | st.none() | st.text()
)
def test_random_frame_lists_are_decode_errors(frames: object) -> None:
    decode_error(frames)


@FUZZ
@given(messages, st.data())
def test_truncated_or_dropped_frames_are_decode_errors(msg: m.Message, data: st.DataObject) -> None:
    frames = [bytes(f) for f in encode(msg)]
    cut = data.draw(st.integers(0, len(frames[0]) - 1))
    decode_error([frames[0][:cut], *frames[1:]])
    decode_error([*frames, b"extra"])
    tensors = [i for i in range(1, len(frames)) if frames[i]]
    if tensors:
        i = data.draw(st.sampled_from(tensors))
        decode_error(frames[:i] + frames[i + 1 :])
        decode_error(frames[:i] + [frames[i][:-1]] + frames[i + 1 :])


@FUZZ
@given(messages, st.data())
def test_corrupted_headers_are_decode_errors_or_valid_messages(
    msg: m.Message, data: st.DataObject
) -> None:
    frames = [bytes(f) for f in encode(msg)]
    head = bytearray(frames[0])
    for _ in range(data.draw(st.integers(1, 4))):
        head[data.draw(st.integers(0, len(head) - 1))] = data.draw(st.integers(0, 255))
    try:
        assert isinstance(decode([bytes(head), *frames[1:]]), m.Message)
    except DecodeError as exc:
        assert exc.code in DECODE_ERROR_CODES


@FUZZ
@given(messages, st.data())
def test_wrong_field_values_are_decode_errors_or_valid(msg: m.Message, data: st.DataObject) -> None:
    frames = [bytes(f) for f in encode(msg)]
    head = json.loads(frames[0])
    key = data.draw(st.sampled_from(sorted(head)))
    head[key] = data.draw(json_values)
    try:
        decode([json.dumps(head).encode(), *frames[1:]])
    except DecodeError as exc:
        assert exc.code in DECODE_ERROR_CODES


# ----------------------------------------------------------------------------- specific refusals


def test_unknown_missing_extra_and_mistyped_fields_are_malformed() -> None:
    cases = [
        [header(type="nope")],
        [header(type="leave")],  # node_id missing
        [header(type="leave", node_id="n", colour="red")],
        [header(type="leave", node_id=7)],
        [header(type="heartbeat", node_id="n", round=True)],
        [header(type="heartbeat", node_id="n", round=1.0)],
        [json.dumps({"type": "leave", "node_id": "n"}).encode()],  # no version
        [b'{"v":1,"type":"metrics","node_id":"n","round":1,"metrics":{"x":NaN}}'],
        [b"[1,2]"],
        [b"\xff\xfe"],
        [b"{" * 100_000],
        [header(type="leave", node_id="n"), b"stray frame"],
        [],
    ]
    for frames in cases:
        assert decode_error(frames).code == "malformed", frames


def test_wrong_version_is_named() -> None:
    err = decode_error([json.dumps({"v": 2, "type": "leave", "node_id": "n"}).encode()])
    assert err.code == "wrong_version" and err.ref == "leave"


def test_oversized_header_is_refused_before_parsing() -> None:
    err = decode_error([b"x" * ((1 << 20) + 1)])  # not JSON: too_large proves it was never parsed
    assert err.code == "too_large"
    assert decode_error([b"x" * 100], limits=Limits(max_header_bytes=10)).code == "too_large"


def test_total_size_and_frame_count_caps() -> None:
    frames = encode(push(f32("w", np.zeros(1000))))
    assert decode_error(frames, limits=Limits(max_total_bytes=2000)).code == "too_large"
    many = [header(type="leave", node_id="n")] + [b""] * 600
    assert decode_error(many).code == "too_large"


def test_lying_shape_is_refused_fast_without_allocating() -> None:
    head = header(
        type="data_reply", epoch=0, tensors=[{"name": "x", "dtype": "float32", "shape": [10**12]}]
    )
    tracemalloc.start()
    start = time.perf_counter()
    err = decode_error([head, b"\0\0\0\0"])
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert err.code == "bad_tensor" and err.ref == "data_reply"
    assert elapsed < 0.5 and peak < 1 << 20


@pytest.mark.parametrize(
    "meta",
    [
        {"name": "x", "dtype": "complex64", "shape": [1]},
        {"name": "x", "dtype": ["float32"], "shape": [1]},
        {"name": "x", "dtype": "float32", "shape": [0]},
        {"name": "x", "dtype": "float32", "shape": [-1]},
        {"name": "x", "dtype": "float32", "shape": [1.0]},
        {"name": "x", "dtype": "float32", "shape": [1] * 9},
        {"name": "x", "dtype": "float32", "shape": 1},
        {"name": "x", "dtype": "float32", "shape": [2]},  # 8 bytes claimed, 4 sent
        {"name": 3, "dtype": "float32", "shape": [1]},
        {"name": "x", "dtype": "float32"},
    ],
)
def test_bad_tensor_metadata(meta: dict) -> None:
    err = decode_error([header(type="data_reply", epoch=0, tensors=[meta]), b"\0" * 4])
    assert err.code == "bad_tensor"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "bfloat16"])
def test_non_finite_floats_are_refused(dtype: str, bad: float) -> None:
    values = np.zeros(300_000, np.float32)  # more than one check chunk
    values[-1] = bad
    if dtype == "bfloat16":
        raw = (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    else:
        raw = values.astype(dtype).tobytes()
    t = TensorPayload("w", dtype, (values.size,), raw)
    assert not is_finite(t)
    msg = m.DataReply(epoch=0, tensors=(t,))
    err = decode_error(encode(msg))
    assert err.code == "bad_tensor" and "NaN or Inf" in err.reason
    assert decode(encode(msg), check_finite=False) == msg


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_huge_finite_values_pass(dtype: str) -> None:
    big = np.finfo(np.dtype(dtype)).max
    values = np.full(300_000, big / 2, dtype=dtype)  # x.x overflows; every x is finite
    values[::7] = -big
    assert is_finite(TensorPayload("w", dtype, (values.size,), values.tobytes()))


def test_int8_tensors_round_trip_bit_exact() -> None:
    values = np.arange(-128, 128, dtype=np.int8)  # every int8 value, -128 included
    t = TensorPayload("w|q", "int8", (values.size,), values.tobytes())
    got = decode([zmq.Frame(bytes(f)) for f in encode(push(t))])
    assert isinstance(got, m.ModelPush)
    (back,) = got.tensors
    assert (back.name, back.dtype, back.shape) == ("w|q", "int8", (256,))
    assert np.array_equal(np.frombuffer(back.data, np.int8), values)
    assert model_hash(got.tensors) == got.hash == model_hash((t,))
    assert is_finite(back)


def test_integer_tensors_need_no_finiteness() -> None:
    t = TensorPayload("y", "uint8", (4,), b"\xff" * 4)
    assert is_finite(t)
    assert decode(encode(m.DataReply(epoch=1, tensors=(t,)))).tensors[0].data == t.data


def test_bfloat16_large_finite_values_pass() -> None:
    raw = np.array([0x7F7F, 0xFF7F, 0x0001], np.uint16).tobytes()  # max, -max, subnormal
    assert is_finite(TensorPayload("w", "bfloat16", (3,), raw))


def test_error_for_turns_refusals_into_replies() -> None:
    err = decode_error([json.dumps({"v": 9, "type": "vote"}).encode()])
    reply = error_for(err)
    assert reply == m.Error(ref="vote", code="wrong_version", reason=err.reason)
    assert error_for(err, "join").ref == "join"
    assert error_for(m.MessageError("bad hash"), "commit").code == "malformed"
    assert error_for(RuntimeError("x" * 10_000)).reason.startswith("RuntimeError")
    assert decode(encode(reply)) == reply
    assert peek_type([b"garbage"]) == "?"
