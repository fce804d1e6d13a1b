"""Update codecs: round trips within each codec's bound, error feedback, buffers, determinism,
hostile payloads refused with CompressionError only, and the bytes each codec saves."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from node.compression import (
    CODECS,
    INT8_CHUNK,
    CodecSpec,
    CompressionError,
    UpdateEncoder,
    apply_update,
    decode_update,
    raw_bytes,
    trainable_names,
)
from node.models import build_model
from node.weights import WeightsError
from tests.factories import payloads_with
from transport.codec import decode, encode
from transport.messages import ModelPush
from transport.spec import ModelSpec
from transport.tensors import DTYPE_SIZES, TensorPayload, model_hash, total_bytes

torch.set_num_threads(1)

SPECS = [CodecSpec("none"), CodecSpec("fp16"), CodecSpec("int8"), CodecSpec("topk", 0.25)]
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(30, 20), nn.BatchNorm1d(20), nn.ReLU(), nn.Linear(20, 3))


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def _trained_pair(steps: int = 3) -> tuple[dict, dict, frozenset[str]]:
    """(base, trained, trainable) of a small BatchNorm model after a few SGD steps."""
    model = _bn_model()
    base = _clone(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 30, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return base, _clone(model.state_dict()), trainable_names(model)


def _delta(trained: dict, base: dict, key: str) -> torch.Tensor:
    return trained[key].float() - base[key].float()


def _round_trip(spec: CodecSpec) -> tuple[dict, dict, frozenset[str], tuple, dict]:
    base, trained, trainable = _trained_pair()
    payloads = UpdateEncoder(spec, base, trainable).encode(trained, base)
    return base, trained, trainable, payloads, decode_update(payloads, spec, base, trainable)


def _data(payloads, name: str) -> np.ndarray:
    """A writable copy of one payload's values."""
    (p,) = [p for p in payloads if p.name == name]
    return np.frombuffer(bytes(p.data), np.dtype(p.dtype)).copy()


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


# ----------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    "kwargs",
    [{"name": "zip"}, {"name": 3}, {"name": "topk", "topk_fraction": 0}, {"topk_fraction": 1.5}]
    + [{"topk_fraction": math.nan}, {"topk_fraction": True}, {"topk_fraction": "0.1"}],
)
def test_bad_codec_specs_are_refused(kwargs: dict) -> None:
    with pytest.raises(CompressionError):
        CodecSpec(**kwargs)


def test_compression_errors_are_weights_errors_for_existing_refusal_paths() -> None:
    assert issubclass(CompressionError, WeightsError)


def test_topk_k_is_ceil_of_the_fraction_and_at_least_one() -> None:
    spec = CodecSpec("topk", 0.1)
    assert [spec.topk_k(n) for n in (1, 9, 10, 11, 1000)] == [1, 1, 1, 2, 100]
    assert CodecSpec("topk", 1.0).topk_k(7) == 7


# ----------------------------------------------------------------------------- round trips


def test_payload_layout_per_codec() -> None:
    base, trained, trainable = _trained_pair()
    assert trainable == {"0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"}
    expected_plain = [
        ("1.running_mean", "float32", (20,)),
        ("1.running_var", "float32", (20,)),
        ("1.num_batches_tracked", "int64", ()),
    ]
    chunks = -(-600 // INT8_CHUNK)
    first = {
        "none": [("0.weight", "float32", (20, 30))],
        "fp16": [("0.weight", "float16", (20, 30))],
        "int8": [("0.weight|q", "int8", (600,)), ("0.weight|scale", "float32", (chunks,))],
        "topk": [("0.weight|idx", "int32", (150,)), ("0.weight|val", "float32", (150,))],
    }
    for spec in SPECS:
        payloads = UpdateEncoder(spec, base, trainable).encode(trained, base)
        layout = [(p.name, p.dtype, p.shape) for p in payloads]
        assert layout[: len(first[spec.name])] == first[spec.name]
        assert [x for x in layout if x[0].startswith("1.running") or "num_b" in x[0]] == (
            expected_plain
        )
        for p in payloads:  # zero-copy-ready: exact byte views
            assert memoryview(p.data).nbytes == p.nbytes


def test_frozen_parameters_travel_as_plain_fp32_deltas() -> None:
    model = _bn_model()
    model[0].weight.requires_grad_(False)
    trainable = trainable_names(model)
    assert "0.weight" not in trainable and "0.bias" in trainable
    base = _clone(model.state_dict())
    payloads = UpdateEncoder(CodecSpec("int8"), base, trainable).encode(base, base)
    layout = {p.name: (p.dtype, p.shape) for p in payloads}
    assert layout["0.weight"] == ("float32", (20, 30)) and "0.bias|q" in layout


def test_none_round_trip_is_exact() -> None:
    base, trained, _, _, got = _round_trip(CodecSpec("none"))
    for key in base:
        if base[key].dtype.is_floating_point:
            assert got[key].dtype == torch.float32
            assert torch.equal(got[key], _delta(trained, base, key))


def test_fp16_round_trip_is_within_half_an_ulp() -> None:
    base, trained, trainable, _, got = _round_trip(CodecSpec("fp16"))
    for key in trainable:
        want = _delta(trained, base, key)
        normal = want.abs() >= 2**-14  # fp16's normal range
        err = (got[key] - want).abs()
        assert bool((err[normal] <= want.abs()[normal] * 2**-11).all())
        assert bool((err[~normal] <= 2**-25).all())  # subnormal spacing / 2


def test_fp16_saturates_instead_of_overflowing_to_inf() -> None:
    base = {"w": torch.zeros(4)}
    trained = {"w": torch.tensor([1e6, -1e6, 65504.0, 1.0])}
    spec = CodecSpec("fp16")
    got = decode_update(UpdateEncoder(spec, base, {"w"}).encode(trained, base), spec, base, {"w"})
    assert got["w"].tolist() == [65504.0, -65504.0, 65504.0, 1.0]


def test_int8_error_is_at_most_half_a_step_per_chunk() -> None:
    n = 3 * INT8_CHUNK + 17  # a partial last chunk
    g = torch.Generator().manual_seed(3)
    delta = torch.randn(n, generator=g) * torch.logspace(-4, 1, n)  # chunks of different scales
    delta[INT8_CHUNK : 2 * INT8_CHUNK] = 0.0  # an all-zero chunk: scale 0, q 0
    base, trained = {"w": torch.zeros(n)}, {"w": delta}
    spec = CodecSpec("int8")
    payloads = UpdateEncoder(spec, base, {"w"}).encode(trained, base)
    got = decode_update(payloads, spec, base, {"w"})["w"]
    scale = torch.from_numpy(_data(payloads, "w|scale"))
    assert scale[1] == 0 and bool((got[INT8_CHUNK : 2 * INT8_CHUNK] == 0).all())
    per_element = scale.repeat_interleave(INT8_CHUNK)[:n]
    slack = delta.abs() * 2**-22  # fp32 rounding of x / scale and q * scale
    assert bool(((got - delta).abs() <= per_element / 2 + slack).all())
    assert int(np.abs(_data(payloads, "w|q")).max()) == 127


def test_topk_sends_the_largest_exactly_and_zero_elsewhere() -> None:
    base, trained, trainable, payloads, got = _round_trip(CodecSpec("topk", 0.25))
    for key in trainable:
        want = _delta(trained, base, key).reshape(-1)
        idx = torch.from_numpy(_data(payloads, f"{key}|idx")).long()
        k = math.ceil(0.25 * want.numel())
        assert idx.numel() == k and bool((idx[1:] > idx[:-1]).all())
        flat = got[key].reshape(-1)
        assert torch.equal(flat[idx], want[idx])
        rest = torch.ones_like(flat, dtype=torch.bool)
        rest[idx] = False
        assert bool((flat[rest] == 0).all())
        assert float(want[rest].abs().max()) <= float(want[idx].abs().min())


def test_topk_ties_go_to_the_lower_index() -> None:
    base, trained = {"w": torch.zeros(10)}, {"w": torch.tensor([1.0, -2, 2, 1, -2, 2, 0, 0, 0, 0])}
    spec = CodecSpec("topk", 0.3)
    payloads = UpdateEncoder(spec, base, {"w"}).encode(trained, base)
    assert _data(payloads, "w|idx").tolist() == [1, 2, 4]
    assert _data(payloads, "w|val").tolist() == [-2.0, 2.0, -2.0]


# ----------------------------------------------------------------------------- error feedback


def test_topk_error_feedback_conserves_the_sum_of_updates() -> None:
    g = torch.Generator().manual_seed(5)
    base = {"w": torch.zeros(40, 25), "b": torch.zeros(25)}
    spec = CodecSpec("topk", 0.05)
    encoder = UpdateEncoder(spec, base, frozenset(base))
    sent = {k: torch.zeros_like(v) for k, v in base.items()}
    total = {k: torch.zeros_like(v) for k, v in base.items()}
    for _ in range(8):
        trained = {k: torch.randn(v.shape, generator=g) for k, v in base.items()}
        decoded = decode_update(encoder.encode(trained, base), spec, base, frozenset(base))
        for k in base:
            sent[k] += decoded[k]
            total[k] += trained[k]
    for k in base:
        torch.testing.assert_close(sent[k] + encoder.residual[k], total[k], rtol=0, atol=1e-5)


def test_a_coordinate_never_selected_accumulates_until_it_is_sent() -> None:
    base = {"w": torch.zeros(10)}
    spec = CodecSpec("topk", 0.1)  # k = 1
    encoder = UpdateEncoder(spec, base, {"w"})
    for r in range(4):
        delta = torch.zeros(10)
        delta[0] = 0.3
        delta[1 + r] = 1.0  # a fresh big coordinate each round
        payloads = encoder.encode({"w": delta}, base)
        idx, val = _data(payloads, "w|idx").tolist(), _data(payloads, "w|val").tolist()
        if r < 3:
            assert idx == [1 + r]
            assert encoder.residual["w"][0].item() == pytest.approx(0.3 * (r + 1))
        else:  # 1.2 > 1.0: the accumulated coordinate wins
            assert idx == [0] and val[0] == pytest.approx(1.2)
            assert encoder.residual["w"][0].item() == 0.0
            assert encoder.residual["w"][4].item() == 1.0
    encoder.reset()
    assert encoder.residual == {}


def test_a_refused_encode_leaves_the_residual_alone() -> None:
    base = {"w": torch.zeros(10)}
    encoder = UpdateEncoder(CodecSpec("topk", 0.1), base, {"w"})
    encoder.encode({"w": torch.arange(10.0)}, base)
    before = encoder.residual["w"].clone()
    with pytest.raises(CompressionError, match="'w'.*NaN or inf"):
        encoder.encode({"w": torch.full((10,), math.nan)}, base)
    assert torch.equal(encoder.residual["w"], before)


def test_other_codecs_keep_no_residual() -> None:
    base, trained, trainable = _trained_pair()
    for spec in SPECS[:3]:
        encoder = UpdateEncoder(spec, base, trainable)
        encoder.encode(trained, base)
        assert encoder.residual == {}


# ----------------------------------------------------------------------------- buffers


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_buffers_travel_plainly_whatever_the_codec(spec: CodecSpec) -> None:
    base, trained, _, _, got = _round_trip(spec)
    assert trained["1.num_batches_tracked"].item() == 3
    for key in ("1.running_mean", "1.running_var"):
        assert torch.equal(got[key], _delta(trained, base, key))
    count = got["1.num_batches_tracked"]
    assert count.dtype == torch.int64 and torch.equal(count, trained["1.num_batches_tracked"])
    new = apply_update(base, got)
    assert torch.equal(new["1.num_batches_tracked"], trained["1.num_batches_tracked"])
    for key in base:
        assert new[key].dtype == base[key].dtype and new[key].shape == base[key].shape


def test_apply_update_adds_the_delta() -> None:
    base, trained, _, _, got = _round_trip(CodecSpec("none"))
    new = apply_update(base, got)
    for key, value in trained.items():
        torch.testing.assert_close(new[key], value, rtol=0, atol=1e-6)
    half = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16)}
    out = apply_update(half, {"w": torch.tensor([0.5, -1.0])})["w"]
    assert out.dtype == torch.bfloat16 and out.tolist() == [1.5, 1.0]


def test_encoder_refuses_states_that_do_not_fit() -> None:
    base, trained, trainable = _trained_pair()
    encoder = UpdateEncoder(CodecSpec("int8"), base, trainable)
    with pytest.raises(CompressionError, match="missing"):
        encoder.encode({k: v for k, v in trained.items() if k != "0.bias"}, base)
    with pytest.raises(CompressionError, match="'0.bias'"):
        encoder.encode(trained | {"0.bias": torch.zeros(3)}, base)
    with pytest.raises(CompressionError, match="must not contain"):
        UpdateEncoder(CodecSpec(), {"a|q": torch.zeros(2)}, frozenset())
    with pytest.raises(CompressionError, match="not in the model"):
        UpdateEncoder(CodecSpec(), base, frozenset({"nope"}))


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_decoding_is_bit_identical_across_calls_and_thread_counts(spec: CodecSpec) -> None:
    g = torch.Generator().manual_seed(9)
    base = {"w": torch.randn(700, 300, generator=g), "b": torch.randn(300, generator=g)}
    trained = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    payloads = UpdateEncoder(spec, base, frozenset(base)).encode(trained, base)
    again = UpdateEncoder(spec, base, frozenset(base)).encode(trained, base)
    assert model_hash(payloads) == model_hash(again)
    frames = [TensorPayload(p.name, p.dtype, p.shape, bytes(p.data)) for p in payloads]
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 4, 1):
            torch.set_num_threads(n)
            results.append(decode_update(frames, spec, base, frozenset(base)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(_bits(other[k]) == _bits(results[0][k]) for k in base)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_update_payloads_cross_the_wire_codec_unchanged(spec: CodecSpec) -> None:
    base, trained, trainable = _trained_pair()
    payloads = UpdateEncoder(spec, base, trainable).encode(trained, base)
    digest = model_hash(payloads)
    push = ModelPush(
        run_id="r", sender="a", round=1, trainer="a", hash=digest, samples=16, tensors=payloads
    )
    got = decode([zmq.Frame(bytes(f)) for f in encode(push)])
    assert isinstance(got, ModelPush) and model_hash(got.tensors) == digest
    sent = decode_update(payloads, spec, base, trainable)
    received = decode_update(got.tensors, spec, base, trainable)
    assert all(_bits(received[k]) == _bits(sent[k]) for k in base)


# ----------------------------------------------------------------------------- hostile input


def _hostile_cases() -> list[tuple[str, str, str, object]]:
    """(codec, target tensor, what to break, how) for the refusal table."""
    return [
        ("int8", "0.weight|q", "name", "0.weight|Q"),
        ("int8", "0.weight|q", "missing", None),
        ("int8", "0.weight|q", "duplicate", None),
        ("int8", "0.weight|q", "extra", "0.weight|zz"),
        ("int8", "0.weight|q", "dtype", "uint8"),
        ("int8", "0.weight|scale", "dtype", "float64"),
        ("int8", "0.weight|q", "shape", (20, 30)),
        ("int8", "0.weight|q", "bytes", 599),
        ("int8", "0.weight|scale", "value", math.nan),
        ("int8", "0.weight|scale", "value", math.inf),
        ("int8", "0.weight|scale", "value", -1.0),
        ("int8", "0.weight|scale", "value", 3e38),  # q * scale overflows to inf
        ("int8", "0.weight|q", "value", -128),
        ("fp16", "0.weight", "value", math.inf),
        ("fp16", "0.weight", "dtype", "float32"),
        ("none", "0.weight", "value", math.nan),
        ("none", "1.running_var", "value", -math.inf),
        ("none", "1.num_batches_tracked", "dtype", "int32"),
        ("topk", "0.weight|idx", "value", 600),  # out of range
        ("topk", "0.weight|idx", "first_value", -1),
        ("topk", "0.weight|idx", "duplicate_idx", None),
        ("topk", "0.weight|idx", "unsorted_idx", None),
        ("topk", "0.weight|val", "value", math.nan),
        ("topk", "0.weight|idx", "k", 151),
        ("topk", "0.weight|idx", "dtype", "int64"),
        ("topk", "0.weight|idx", "data", "not bytes"),
    ]


@pytest.mark.parametrize("codec,target,what,how", _hostile_cases())
def test_hostile_payloads_are_refused(codec: str, target: str, what: str, how: object) -> None:
    spec = CodecSpec(codec, 0.25)
    base, trained, trainable = _trained_pair()
    payloads = list(UpdateEncoder(spec, base, trainable).encode(trained, base))
    (victim,) = [p for p in payloads if p.name == target]
    if what == "name":
        payloads = payloads_with(payloads, target, name=how)
    elif what == "missing":
        payloads.remove(victim)
    elif what == "duplicate":
        payloads.append(victim)
    elif what == "extra":
        payloads.append(TensorPayload(str(how), "float32", (1,), b"\0" * 4))
    elif what == "dtype":
        payloads = payloads_with(payloads, target, dtype=how)
    elif what == "shape":
        payloads = payloads_with(payloads, target, shape=how)
    elif what == "bytes":
        payloads = payloads_with(payloads, target, data=bytes(victim.data)[:how])
    elif what == "data":
        payloads = payloads_with(payloads, target, data=how)
    elif what == "k":
        data = bytes(victim.data) + bytes(np.array([599], np.int32))
        payloads = payloads_with(payloads, target, shape=(how,), data=data)
    else:
        values = _data(payloads, target)
        if what == "value":
            values[-1] = how
        elif what == "first_value":
            values[0] = how
        elif what == "duplicate_idx":
            values[1] = values[0]
        else:
            values[[0, 1]] = values[[1, 0]]
        payloads = payloads_with(payloads, target, data=values.tobytes())
    with pytest.raises(CompressionError) as info:
        decode_update(payloads, spec, base, trainable)
    assert target.split("|")[0] in str(info.value)


@st.composite
def _mangled(draw: st.DrawFn) -> tuple[CodecSpec, list[TensorPayload]]:
    spec = CodecSpec(draw(st.sampled_from(CODECS)), draw(st.sampled_from([0.05, 0.5, 1.0])))
    base = _SMALL
    payloads = list(UpdateEncoder(spec, base, frozenset(_SMALL_TRAINABLE)).encode(_SMALL_T, base))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(payloads) - 1))
        p = payloads[i]
        action = draw(st.sampled_from(["data", "dtype", "shape", "drop", "dup", "bits"]))
        if action == "data":
            payloads[i] = TensorPayload(p.name, p.dtype, p.shape, draw(st.binary(max_size=64)))
        elif action == "dtype":
            dtype = draw(st.sampled_from(sorted(DTYPE_SIZES)))
            payloads[i] = TensorPayload(p.name, dtype, p.shape, p.data)
        elif action == "shape":
            shape = tuple(draw(st.lists(st.integers(0, 40), max_size=3)))
            payloads[i] = TensorPayload(p.name, p.dtype, shape, p.data)
        elif action == "drop":
            payloads.pop(i)
        elif action == "dup":
            payloads.append(p)
        else:  # right length, random bits: NaNs, bad indices, q = -128 ...
            raw = draw(st.binary(min_size=p.nbytes, max_size=p.nbytes))
            payloads[i] = TensorPayload(p.name, p.dtype, p.shape, raw)
        if not payloads:
            break
    return spec, payloads


_SMALL = {
    "w": torch.zeros(3, 4),
    "b": torch.zeros(3),
    "bn.running_mean": torch.zeros(3),
    "bn.num_batches_tracked": torch.tensor(0),
}
_SMALL_TRAINABLE = ("w", "b")
_SMALL_T = {k: v + 1 for k, v in _SMALL.items()}


@FUZZ
@given(_mangled())
def test_mangled_payloads_decode_or_raise_compression_error_only(case) -> None:
    spec, payloads = case
    try:
        out = decode_update(payloads, spec, _SMALL, frozenset(_SMALL_TRAINABLE))
    except CompressionError:
        return
    assert list(out) == list(_SMALL)
    assert all(bool(torch.isfinite(v).all()) for v in out.values() if v.is_floating_point())


# ----------------------------------------------------------------------------- ratios


@pytest.fixture(scope="module")
def mlp_1m() -> tuple[dict, dict, frozenset[str]]:
    model = build_model(
        ModelSpec(hidden=(1024, 256)), features=784, classes=10, image_shape=None, seed=0
    )
    base = _clone(model.state_dict())
    g = torch.Generator().manual_seed(2)
    trained = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    return base, trained, trainable_names(model)


@pytest.mark.parametrize(
    "spec,ratio,tolerance",
    [
        (CodecSpec("none"), 1.0, 0),
        (CodecSpec("fp16"), 0.5, 0),
        (CodecSpec("int8"), 0.25 + 1 / INT8_CHUNK, 1e-3),  # + one fp32 scale per chunk
        (CodecSpec("topk", 0.1), 0.2, 1e-4),  # int32 index + fp32 value per element sent
        (CodecSpec("topk", 0.01), 0.02, 1e-4),
    ],
    ids=["none", "fp16", "int8", "topk0.1", "topk0.01"],
)
def test_compression_ratio_of_a_1m_parameter_mlp(
    mlp_1m, spec: CodecSpec, ratio: float, tolerance: float
) -> None:
    base, trained, trainable = mlp_1m
    assert sum(v.numel() for v in base.values()) > 1_000_000
    encoder = UpdateEncoder(spec, base, trainable)
    start = time.perf_counter()
    payloads = encoder.encode(trained, base)
    encoded = time.perf_counter()
    decode_update(payloads, spec, base, trainable)
    decoded = time.perf_counter()
    measured = total_bytes(payloads) / raw_bytes(base)
    print(
        f"{spec.name} {spec.topk_fraction if spec.name == 'topk' else ''}: ratio {measured:.4f}, "
        f"encode {1e3 * (encoded - start):.1f} ms, decode {1e3 * (decoded - encoded):.1f} ms"
    )
    assert measured == pytest.approx(ratio, abs=tolerance)
