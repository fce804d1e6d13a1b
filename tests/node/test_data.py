"""Datasets, the seeded held-out split, partitions and node indices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from node.data import (
    MIN_SHARD,
    DataError,
    Dataset,
    load_dataset,
    node_index_for,
    partition,
    shard,
)
from transport.spec import DataSpec

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataSpec(source="digits", test_fraction=0.2), seed=3, base_dir=None)


def _all_parts(y: torch.Tensor, num_nodes: int, scheme: str, alpha: float, seed: int):
    return [
        partition(y, num_nodes=num_nodes, node_index=k, scheme=scheme, alpha=alpha, seed=seed)
        for k in range(num_nodes)
    ]


def _label_skew(y: torch.Tensor, parts: list[torch.Tensor], classes: int) -> float:
    """Mean total-variation distance between each shard's label mix and the global one."""
    overall = torch.bincount(y, minlength=classes).double() / len(y)
    tvs = []
    for idx in parts:
        local = torch.bincount(y[idx], minlength=classes).double() / len(idx)
        tvs.append(0.5 * float((local - overall).abs().sum()))
    return sum(tvs) / len(tvs)


def test_digits_is_the_real_1797_sample_dataset_scaled_to_unit_range(digits: Dataset) -> None:
    assert digits.x_train.shape[0] + digits.x_test.shape[0] == 1797
    assert (digits.features, digits.classes, digits.image_shape) == (64, 10, (8, 8))
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert float(digits.x_train.min()) == 0.0 and float(digits.x_train.max()) == 1.0
    assert abs(digits.x_test.shape[0] / 1797 - 0.2) < 0.01


def test_digits_test_split_is_stratified_and_the_same_for_the_same_seed(digits: Dataset) -> None:
    again = load_dataset(DataSpec(source="digits"), seed=3, base_dir=None)
    other = load_dataset(DataSpec(source="digits"), seed=4, base_dir=None)
    assert torch.equal(digits.x_test, again.x_test) and torch.equal(digits.y_test, again.y_test)
    assert not torch.equal(digits.x_test, other.x_test)
    per_class = torch.bincount(digits.y_test, minlength=10)
    assert int(per_class.min()) >= 35 and int(per_class.max()) <= 37  # ~20% of ~180 each


def test_synthetic_has_the_asked_shape_and_is_seeded() -> None:
    spec = DataSpec(source="synthetic", samples=500, features=12, classes=4, test_fraction=0.2)
    a = load_dataset(spec, seed=1, base_dir=None)
    b = load_dataset(spec, seed=1, base_dir=None)
    assert a.x_train.shape == (500, 12) and a.x_test.shape == (100, 12)
    assert (a.features, a.classes, a.image_shape) == (12, 4, None)
    assert set(a.y_train.tolist()) == {0, 1, 2, 3}
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


def test_synthetic_is_learnable_by_nearest_class_mean() -> None:
    spec = DataSpec(source="synthetic", samples=4000, features=50, classes=10)
    data = load_dataset(spec, seed=2, base_dir=None)
    means = torch.stack([data.x_train[data.y_train == c].mean(0) for c in range(10)])
    predicted = torch.cdist(data.x_test, means).argmin(1)
    accuracy = float((predicted == data.y_test).double().mean())
    assert 0.75 < accuracy < 1.0  # learnable, not trivial


def test_synthetic_60k_by_784_has_the_benchmark_shape() -> None:
    # How fast it generates is a benchmark figure (bench/round_bench.py), not a test.
    spec = DataSpec(source="synthetic", samples=60000, features=784, classes=10)
    data = load_dataset(spec, seed=0, base_dir=None)
    assert data.x_train.shape == (60000, 784) and data.x_test.shape == (12000, 784)
    assert data.x_train.dtype == torch.float32


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partition_is_disjoint_covering_and_the_same_whoever_asks(
    digits: Dataset, scheme: str
) -> None:
    parts = _all_parts(digits.y_train, 4, scheme, 0.5, seed=11)
    joined = torch.cat(parts)
    assert len(joined) == len(digits.y_train)
    assert torch.equal(joined.sort().values, torch.arange(len(digits.y_train)))
    assert all(len(p) >= MIN_SHARD for p in parts)
    alone = partition(digits.y_train, num_nodes=4, node_index=2, scheme=scheme, alpha=0.5, seed=11)
    assert torch.equal(alone, parts[2])
    other_seed = _all_parts(digits.y_train, 4, scheme, 0.5, seed=12)
    assert not torch.equal(other_seed[0], parts[0])


def test_dirichlet_shards_are_skewed_where_iid_shards_are_not(digits: Dataset) -> None:
    y = digits.y_train
    iid = _label_skew(y, _all_parts(y, 4, "iid", 0.5, seed=0), 10)
    non_iid = _label_skew(y, _all_parts(y, 4, "dirichlet", 0.5, seed=0), 10)
    assert iid < 0.1
    assert non_iid > 0.3


def test_dirichlet_tops_up_tiny_shards_deterministically() -> None:
    y = torch.arange(40) % 2
    parts = _all_parts(y, 4, "dirichlet", 0.01, seed=5)
    assert all(len(p) >= MIN_SHARD for p in parts)
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(40))
    again = _all_parts(y, 4, "dirichlet", 0.01, 5)
    assert all(torch.equal(a, b) for a, b in zip(parts, again, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_nodes": 0}, "num_nodes"),
        ({"node_index": 4}, r"node_index must be in \[0, 4\)"),
        ({"scheme": "shards"}, r"unknown; allowed: \['iid', 'dirichlet'\]"),
        ({"alpha": 0.0}, "alpha must be > 0"),
    ],
)
def test_bad_partition_arguments_are_explained(kwargs: dict, match: str) -> None:
    args = {"num_nodes": 4, "node_index": 0, "scheme": "dirichlet", "alpha": 0.5, "seed": 0}
    with pytest.raises(DataError, match=match):
        partition(torch.arange(100) % 3, **(args | kwargs))


def test_shard_holds_the_rows_of_its_partition(digits: Dataset) -> None:
    spec = DataSpec(partition="iid")
    part = shard(digits, 1, 3, spec, seed=8)
    idx = partition(digits.y_train, num_nodes=3, node_index=1, scheme="iid", alpha=0.5, seed=8)
    assert torch.equal(part.x, digits.x_train[idx]) and torch.equal(part.y, digits.y_train[idx])
    assert part.samples == len(idx)


def test_node_index_comes_from_the_trailing_number_or_a_stable_hash() -> None:
    assert node_index_for("node-3", 4) == 3
    assert node_index_for("node-7", 4) == 3
    assert node_index_for("node-0", 1) == 0
    alice = node_index_for("alice", 5)
    assert 0 <= alice < 5 and alice == node_index_for("alice", 5)
    assert len({node_index_for(f"host-{c}", 8) for c in "abcdefghij"}) > 1


def test_safetensors_file_round_trips_with_a_split_done_here(tmp_path: Path) -> None:
    x = torch.rand(50, 6)
    y = torch.arange(50) % 5
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"))
    data = load_dataset(DataSpec(source="d.safetensors"), seed=0, base_dir=tmp_path)
    assert (data.features, data.classes) == (6, 5)
    assert data.x_train.shape[0] + data.x_test.shape[0] == 50
    rows = {tuple(r.tolist()) for r in torch.cat([data.x_train, data.x_test])}
    assert rows == {tuple(r.tolist()) for r in x}


def test_safetensors_file_with_its_own_test_split_is_used_as_is(tmp_path: Path) -> None:
    tensors = {
        "x": torch.rand(30, 4, 4),
        "y": torch.arange(30) % 3,
        "x_test": torch.rand(9, 4, 4),
        "y_test": torch.arange(9) % 3,
    }
    path = tmp_path / "own.safetensors"
    save_file(tensors, str(path))
    data = load_dataset(DataSpec(source=str(path)), seed=0, base_dir=None)
    assert data.image_shape == (4, 4) and data.features == 16
    assert torch.equal(data.x_train, tensors["x"].reshape(30, 16))
    assert torch.equal(data.y_test, tensors["y_test"])


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({"x": torch.rand(4, 2)}, "must hold tensors 'x' and 'y'"),
        ({"x": torch.rand(4, 2), "y": torch.rand(4)}, "integer class labels"),
        ({"x": torch.rand(4, 2), "y": torch.zeros(3, dtype=torch.int64)}, "4 rows but y has 3"),
        ({"x": torch.rand(4, 2), "y": torch.arange(4), "w": torch.rand(1)}, "unknown tensors"),
        (
            {"x": torch.rand(4, 2), "y": torch.arange(4), "x_test": torch.rand(2, 2)},
            "go together",
        ),
        ({"x": torch.full((4, 2), float("nan")), "y": torch.arange(4)}, "8 non-finite"),
    ],
)
def test_bad_safetensors_files_are_explained(tmp_path: Path, tensors: dict, match: str) -> None:
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    with pytest.raises(DataError, match=match):
        load_dataset(DataSpec(source="bad.safetensors"), seed=0, base_dir=tmp_path)


def test_missing_or_corrupt_safetensors_files_are_explained(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataSpec(source="nope.safetensors"), seed=0, base_dir=tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(DataError, match="not a readable safetensors file"):
        load_dataset(DataSpec(source="junk.safetensors"), seed=0, base_dir=tmp_path)


def test_user_loader_gets_the_seed_and_may_return_numpy_images(user_module) -> None:
    name = user_module(
        """
        import numpy as np

        def load(*, seed):
            rng = np.random.default_rng(seed)
            return rng.random((60, 8, 8)), np.arange(60) % 3
        """
    )
    data = load_dataset(DataSpec(source=f"{name}:load"), seed=4, base_dir=None)
    assert (data.features, data.classes, data.image_shape) == (64, 3, (8, 8))
    assert data.x_train.dtype == torch.float32
    assert data.x_train.shape[0] + data.x_test.shape[0] == 60


def test_user_loader_with_four_tensors_keeps_its_split(user_module) -> None:
    name = user_module(
        """
        import torch

        def load(*, seed):
            return torch.ones(10, 3), torch.arange(10) % 2, torch.zeros(4, 3), torch.arange(4) % 2
        """
    )
    data = load_dataset(DataSpec(source=f"{name}:load"), seed=0, base_dir=None)
    assert data.x_train.shape == (10, 3) and data.x_test.shape == (4, 3)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("return 1", "must return \\(x, y\\) or"),
        ("return [1, 2], [3, 4]", "x must be a torch tensor or NumPy array, got a list"),
        ("raise OSError('disk')", "raised OSError: disk"),
        ("return torch.ones(4, 2, 2, 2), torch.arange(4)", "must have shape"),
    ],
)
def test_bad_user_loader_is_explained(user_module, body: str, match: str) -> None:
    name = user_module(f"import torch\n\ndef load(*, seed):\n    {body}\n")
    with pytest.raises(DataError, match=match) as info:
        load_dataset(DataSpec(source=f"{name}:load"), seed=0, base_dir=None)
    assert name in str(info.value)


def test_unknown_source_lists_what_is_allowed() -> None:
    with pytest.raises(DataError, match=r"'mnist.npz'.*digits.*synthetic.*\.safetensors"):
        load_dataset(DataSpec(source="mnist.npz"), seed=0, base_dir=None)
    with pytest.raises(DataError, match="test_fraction"):
        load_dataset(DataSpec(test_fraction=1.0), seed=0, base_dir=None)


def test_missing_loader_module_is_explained() -> None:
    with pytest.raises(DataError, match="cannot import module 'no_such_pkg_xyz.mod'.*No module"):
        load_dataset(DataSpec(source="no_such_pkg_xyz.mod:load"), seed=0, base_dir=None)


def test_partition_leaves_numpy_global_rng_untouched() -> None:
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    partition(torch.arange(20) % 2, num_nodes=2, node_index=0, scheme="dirichlet", alpha=1, seed=0)
    assert np.array_equal(np.random.get_state()[1], before)
