"""Aggregators against NumPy references; determinism, permutation invariance, robustness."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

import node.aggregators as aggregators
from node.aggregators import AggregationError, Update, aggregate, krum_select, update_norm

torch.set_num_threads(1)

NAMES = ["fedavg", "fedmedian", "trimmed_mean", "krum"]
SHAPES = {"layer.weight": (4, 3), "layer.bias": (4,), "head.weight": (2, 4)}


def _updates(n: int, seed: int = 0, *, counter: bool = True) -> list[Update]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        state = {k: torch.randn(*s, generator=gen) for k, s in SHAPES.items()}
        if counter:
            state["bn.num_batches_tracked"] = torch.tensor(10 + 3 * i, dtype=torch.int64)
        samples = int(torch.randint(5, 50, (1,), generator=gen))
        out.append(Update(f"node-{i}", samples, state))
    return out


def _matrix(updates: list[Update]) -> np.ndarray:
    """NumPy (n, P) of the float entries, rows in node-id order, columns in key order."""
    ordered = sorted(updates, key=lambda u: u.node_id)
    return np.stack([np.concatenate([u.state[k].numpy().ravel() for k in SHAPES]) for u in ordered])


def _flat(state: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([state[k].numpy().ravel() for k in SHAPES])


def _ref_fedavg(x: np.ndarray, samples: list[int]) -> np.ndarray:
    w = np.asarray(samples, dtype=np.float64) / sum(samples)
    return (w[:, None] * x.astype(np.float64)).sum(0)


def _ref_trimmed(x: np.ndarray, fraction: float) -> np.ndarray:
    b = int(np.floor(fraction * len(x)))
    return np.sort(x, axis=0)[b : len(x) - b].mean(0)


def _ref_krum(x: np.ndarray, f: int) -> int:
    n = len(x)
    x64 = x.astype(np.float64)
    scores = []
    for i in range(n):
        d = sorted(float(((x64[i] - x64[j]) ** 2).sum()) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return int(np.argmin(scores))


def _same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype
        and torch.equal(a[k].view(-1).view(torch.uint8), b[k].view(-1).view(torch.uint8))
        for k in a
    )


@pytest.fixture(params=[aggregators.CHUNK, 5], ids=["one-chunk", "chunks-of-5"])
def chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(aggregators, "CHUNK", request.param)
    return request.param


@pytest.mark.parametrize("n", [1, 4, 5])
def test_fedavg_is_the_sample_weighted_mean(n: int, chunk: int) -> None:
    ups = _updates(n, seed=n)
    out = aggregate("fedavg", ups, trim_fraction=0.2, byzantine_f=1)
    expected = _ref_fedavg(_matrix(ups), [u.samples for u in sorted(ups, key=lambda u: u.node_id)])
    np.testing.assert_allclose(_flat(out), expected, rtol=1e-5, atol=1e-6)
    assert all(out[k].dtype == torch.float32 for k in SHAPES)


@pytest.mark.parametrize("n", [1, 4, 5, 6])
def test_fedmedian_is_numpys_true_median(n: int, chunk: int) -> None:
    ups = _updates(n, seed=n)
    out = aggregate("fedmedian", ups, trim_fraction=0.2, byzantine_f=1)
    assert np.array_equal(_flat(out), np.median(_matrix(ups), axis=0))


def test_fedmedian_of_two_is_their_mean_not_the_lower_value() -> None:
    ups = [
        Update("a", 1, {"w": torch.tensor([1.0, -4.0])}),
        Update("b", 1, {"w": torch.tensor([2.0, 0.0])}),
    ]
    out = aggregate("fedmedian", ups, trim_fraction=0.2, byzantine_f=1)
    assert out["w"].tolist() == [1.5, -2.0]


@pytest.mark.parametrize(("n", "fraction"), [(5, 0.2), (6, 0.2), (7, 0.3), (4, 0.0)])
def test_trimmed_mean_matches_sorted_numpy_reference(n: int, fraction: float, chunk: int) -> None:
    ups = _updates(n, seed=n)
    out = aggregate("trimmed_mean", ups, trim_fraction=fraction, byzantine_f=1)
    np.testing.assert_allclose(
        _flat(out), _ref_trimmed(_matrix(ups), fraction), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(("n", "f"), [(5, 1), (7, 2), (6, 0)])
def test_krum_picks_the_update_brute_force_krum_picks(n: int, f: int, chunk: int) -> None:
    ups = _updates(n, seed=10 + n)
    x = _matrix(ups)
    expected = _ref_krum(x, f)
    assert krum_select(torch.from_numpy(x), f) == expected
    out = aggregate("krum", ups, trim_fraction=0.2, byzantine_f=f)
    assert np.array_equal(_flat(out), x[expected])


def test_krum_ties_go_to_the_lowest_node_id() -> None:
    # f=0, n=3: every update's nearest other is at squared distance 4: a three-way tie.
    ups = [
        Update("c", 1, {"w": torch.tensor([-1.0])}),
        Update("b", 1, {"w": torch.tensor([1.0])}),
        Update("a", 1, {"w": torch.tensor([3.0])}),
    ]
    out = aggregate("krum", ups, trim_fraction=0.2, byzantine_f=0)
    assert out["w"].tolist() == [3.0]


def test_krum_with_too_few_updates_falls_back_to_fedmedian(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ups = _updates(4)
    with caplog.at_level(logging.WARNING, logger="node.aggregators"):
        out = aggregate("krum", ups, trim_fraction=0.2, byzantine_f=1)
    assert _same_bits(out, aggregate("fedmedian", ups, trim_fraction=0.2, byzantine_f=1))
    assert "krum needs n > 2f + 2" in caplog.text


@pytest.mark.parametrize("name", NAMES)
def test_input_order_never_changes_a_bit(name: str, chunk: int) -> None:
    ups = _updates(7, seed=3)
    first = aggregate(name, ups, trim_fraction=0.2, byzantine_f=2)
    rng = random.Random(0)
    for _ in range(3):
        shuffled = ups[:]
        rng.shuffle(shuffled)
        assert _same_bits(aggregate(name, shuffled, trim_fraction=0.2, byzantine_f=2), first)


@pytest.mark.parametrize("name", NAMES)
def test_same_inputs_give_bit_identical_output_on_every_call(name: str) -> None:
    ups = _updates(6, seed=4)
    outs = [aggregate(name, ups, trim_fraction=0.2, byzantine_f=1) for _ in range(3)]
    assert _same_bits(outs[0], outs[1]) and _same_bits(outs[0], outs[2])


@pytest.mark.parametrize("name", NAMES)
def test_identical_updates_aggregate_to_that_update_like_fedavg(name: str) -> None:
    base = _updates(1, seed=9)[0].state
    ups = [
        Update(f"node-{i}", 10 * (i + 1), {k: v.clone() for k, v in base.items()}) for i in range(6)
    ]
    out = aggregate(name, ups, trim_fraction=0.2, byzantine_f=1)
    fedavg = aggregate("fedavg", ups, trim_fraction=0.2, byzantine_f=1)
    for key in SHAPES:
        torch.testing.assert_close(out[key], fedavg[key], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(out[key], base[key], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["fedmedian", "trimmed_mean", "krum"])
def test_robust_aggregators_stay_near_the_honest_mean_when_f_updates_are_scaled_1e6(
    name: str,
) -> None:
    # Honest updates cluster around one point; f=2 of n=9 are blown up by 1e6.
    gen = torch.Generator().manual_seed(1)
    center = {k: torch.randn(*s, generator=gen) for k, s in SHAPES.items()}
    ups = []
    for i in range(9):
        state = {k: v + 0.01 * torch.randn(*v.shape, generator=gen) for k, v in center.items()}
        if i in (2, 6):
            state = {k: v * 1e6 for k, v in state.items()}
        ups.append(Update(f"node-{i}", 20, state))
    honest = [u for i, u in enumerate(ups) if i not in (2, 6)]
    honest_mean = aggregate("fedavg", honest, trim_fraction=0.0, byzantine_f=0)
    robust = aggregate(name, ups, trim_fraction=0.25, byzantine_f=2)
    naive = aggregate("fedavg", ups, trim_fraction=0.25, byzantine_f=2)
    assert update_norm(robust, honest_mean) < 0.1
    assert update_norm(naive, honest_mean) > 1e4


def test_integer_buffers_take_the_max_and_dtypes_are_kept() -> None:
    ups = [
        Update(
            f"n{i}",
            1,
            {
                "w": torch.full((2,), float(i), dtype=torch.bfloat16),
                "bn.num_batches_tracked": torch.tensor(5 - i, dtype=torch.int64),
            },
        )
        for i in range(3)
    ]
    out = aggregate("fedavg", ups, trim_fraction=0.2, byzantine_f=1)
    assert out["w"].dtype == torch.bfloat16 and out["w"].tolist() == [1.0, 1.0]
    assert out["bn.num_batches_tracked"].dtype == torch.int64
    assert int(out["bn.num_batches_tracked"]) == 5
    assert list(out) == ["w", "bn.num_batches_tracked"]


def test_output_tensors_do_not_share_memory() -> None:
    out = aggregate("fedavg", _updates(3), trim_fraction=0.2, byzantine_f=1)
    pointers = {t.untyped_storage().data_ptr() for t in out.values()}
    assert len(pointers) == len(out)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda ups: [], "no updates"),
        (lambda ups: [*ups, ups[0]], r"duplicate updates from \['node-0'\]"),
        (lambda ups: [Update("node-9", -1, ups[0].state), *ups], "samples must be >= 0"),
        (
            lambda ups: [Update("node-9", 1, {**ups[0].state, "extra": torch.zeros(1)}), *ups],
            r"node-9: tensor names differ.*unexpected \['extra'\]",
        ),
        (
            lambda ups: [Update("node-9", 1, {**ups[0].state, "layer.bias": torch.zeros(5)}), *ups],
            r"node-9: 'layer.bias' is torch.float32 \[5\]",
        ),
        (
            lambda ups: [
                Update("node-9", 1, {**ups[0].state, "layer.bias": torch.full((4,), float("nan"))}),
                *ups,
            ],
            "node-9: 'layer.bias' has NaN or inf",
        ),
    ],
)
def test_bad_updates_are_rejected_with_the_reason(mutate, match: str) -> None:
    with pytest.raises(AggregationError, match=match):
        aggregate("fedavg", mutate(_updates(3)), trim_fraction=0.2, byzantine_f=1)


def test_bad_options_are_rejected() -> None:
    with pytest.raises(AggregationError, match=r"unknown aggregator 'mean'.*fedavg"):
        aggregate("mean", _updates(3), trim_fraction=0.2, byzantine_f=1)
    with pytest.raises(AggregationError, match=r"trim_fraction must be in \[0, 0.5\)"):
        aggregate("trimmed_mean", _updates(3), trim_fraction=0.5, byzantine_f=1)
    zero = [Update(u.node_id, 0, u.state) for u in _updates(2)]
    with pytest.raises(AggregationError, match="samples > 0"):
        aggregate("fedavg", zero, trim_fraction=0.2, byzantine_f=1)


def test_update_norm_is_the_l2_norm_of_the_difference() -> None:
    a, b = _updates(2, seed=8)
    expected = float(np.linalg.norm(_flat(a.state).astype(np.float64) - _flat(b.state)))
    assert update_norm(a.state, b.state) == pytest.approx(expected, rel=1e-12)
    assert update_norm(a.state, a.state) == 0.0
