"""The torch <-> wire bridge: zero-copy payloads, the model hash, validated loading."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from node.models import build_model
from node.weights import WeightsError, from_payloads, load_into, model_hash_of, to_payloads
from tests.factories import payloads_with
from transport.spec import ModelSpec
from transport.tensors import TensorPayload, model_hash

torch.set_num_threads(1)


def _mlp(seed: int = 0) -> nn.Module:
    return build_model(ModelSpec(hidden=(8,)), features=6, classes=3, image_shape=None, seed=seed)


def _mixed_state() -> dict[str, torch.Tensor]:
    return {
        "w": torch.randn(3, 4),
        "half": torch.randn(5).to(torch.bfloat16),
        "f16": torch.randn(2, 2).to(torch.float16),
        "f64": torch.randn(3, dtype=torch.float64),
        "scalar": torch.tensor(2.5),
        "count": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
        "ids": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "bytes": torch.arange(4, dtype=torch.uint8),
    }


def test_round_trip_is_bit_exact_for_every_wire_dtype() -> None:
    state = _mixed_state()
    payloads = to_payloads(state)
    assert [p.name for p in payloads] == list(state)
    assert all(len(memoryview(p.data).cast("B")) == p.nbytes for p in payloads)
    back = from_payloads(payloads, state)
    for key, tensor in state.items():
        assert back[key].dtype == tensor.dtype and back[key].shape == tensor.shape
        assert torch.equal(back[key].view(-1).view(torch.uint8), tensor.view(-1).view(torch.uint8))


def test_round_trip_through_received_bytes_loads_the_same_model() -> None:
    sender, receiver = _mlp(seed=1), _mlp(seed=2)
    frames = [TensorPayload(p.name, p.dtype, p.shape, bytes(p.data)) for p in to_payloads(sender)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read-only frames must not warn
        state = from_payloads(frames, receiver)
    load_into(receiver, state)
    assert model_hash_of(receiver) == model_hash_of(sender)
    assert (
        receiver.state_dict()["1.weight"].data_ptr() != sender.state_dict()["1.weight"].data_ptr()
    )


def test_payloads_share_the_tensor_memory_without_copying() -> None:
    model = _mlp()
    payload = to_payloads(model)[0]
    before = bytes(payload.data)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert bytes(payload.data) != before  # a view of the live weights, not a copy


def test_non_contiguous_tensors_are_sent_in_c_order() -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    (payload,) = to_payloads({"t": t})
    assert payload.shape == (4, 3)
    assert bytes(payload.data) == t.contiguous().numpy().tobytes()


def test_identically_seeded_builds_have_equal_hashes_and_training_changes_it() -> None:
    a, b = _mlp(seed=5), _mlp(seed=5)
    assert model_hash_of(a) == model_hash_of(b)
    assert model_hash_of(a) != model_hash_of(_mlp(seed=6))
    # The console hashes received bytes with transport.tensors.model_hash: it must agree.
    frames = [TensorPayload(p.name, p.dtype, p.shape, bytes(p.data)) for p in to_payloads(a)]
    assert model_hash(frames) == model_hash_of(a)
    with torch.no_grad():
        a.state_dict()["1.bias"].add_(1e-3)
    assert model_hash_of(a) != model_hash_of(b)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"shape": (3, 6)}, r"'1.weight': shape \[3, 6\], the model has \[8, 6\]"),
        ({"dtype": "float64"}, r"'1.weight': dtype float64, the model has float32"),
        ({"data": b"\0" * 12}, r"'1.weight': 12 bytes, float32 \[8, 6\] needs 192"),
    ],
)
def test_wrong_shape_dtype_or_size_is_rejected_with_the_reason(change: dict, match: str) -> None:
    model = _mlp()
    with pytest.raises(WeightsError, match=match):
        from_payloads(payloads_with(to_payloads(model), "1.weight", **change), model)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_rejected(bad: float) -> None:
    model = _mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["3.bias"][1] = bad
    with pytest.raises(WeightsError, match=r"'3.bias': 1 non-finite values"):
        from_payloads(to_payloads(state), model)


def test_missing_extra_and_duplicate_names_are_named() -> None:
    model = _mlp()
    payloads = list(to_payloads(model))
    with pytest.raises(WeightsError, match=r"missing \['3.bias'\]"):
        from_payloads([p for p in payloads if p.name != "3.bias"], model)
    extra = TensorPayload("head.scale", "float32", (1,), b"\0\0\0\0")
    with pytest.raises(WeightsError, match=r"unexpected \['head.scale'\]"):
        from_payloads([*payloads, extra], model)
    with pytest.raises(WeightsError, match="'1.bias' appears twice"):
        from_payloads([*payloads, payloads[1]], model)


def test_load_into_copies_in_place_and_rejects_a_mismatched_state() -> None:
    model, other = _mlp(seed=0), _mlp(seed=1)
    weight = model.state_dict()["1.weight"]
    load_into(model, other.state_dict())
    assert torch.equal(weight, other.state_dict()["1.weight"])  # same storage, new values
    with pytest.raises(WeightsError, match="cannot load weights"):
        load_into(model, {"1.weight": weight})


def test_unsupported_dtype_cannot_be_sent() -> None:
    with pytest.raises(WeightsError, match="dtype bool"):
        to_payloads({"mask": torch.ones(2, dtype=torch.bool)})
