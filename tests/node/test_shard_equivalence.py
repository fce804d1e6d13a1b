"""A node's shard is bit-identical whichever way it is built.

The hashes below were taken from the full-dataset path (``load_dataset`` then ``shard``) before a
node learned to build only its own shard; both paths must keep giving exactly these bytes, so a
node that builds its shard alone, the data server that cuts every shard from the full set, and
runs recorded before the change all agree on who trains on which rows.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from node import data
from node.data import Dataset, Shard, load_dataset, load_node_data, shard
from transport.spec import DataSpec

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]

# name: (spec, seed, nodes, hash of the held-out split, hash of each node's shard)
CASES: dict[str, tuple[DataSpec, int, int, str, tuple[str, ...]]] = {
    "digits-dirichlet-4": (
        DataSpec(source="digits", partition="dirichlet", alpha=0.5),
        42,
        4,
        "4fe8e8b8db454fc4",
        ("2c73774acfbfe274", "6b43791a1cd79992", "ff0ece8549beeaed", "049c12256df911b7"),
    ),
    "digits-iid-3": (
        DataSpec(source="digits", partition="iid"),
        7,
        3,
        "df97464cec59ff64",
        ("b8d4205051d7c2d0", "2154be08e3312a1f", "1c6cec0938df98be"),
    ),
    "digits-dirichlet-tiny-alpha-5": (
        DataSpec(source="digits", partition="dirichlet", alpha=0.05),
        1,
        5,
        "a3500d5930b53fb1",
        (
            "ae0a123f287ddfde",
            "1cdb0223210707b9",
            "034423b0d67e3935",
            "14ac746be4d7779f",
            "253c6d6b11a6c8c1",
        ),
    ),
    "synthetic-iid-4": (
        DataSpec(
            source="synthetic",
            partition="iid",
            samples=3001,
            features=13,
            classes=7,
            test_fraction=0.1,
        ),
        42,
        4,
        "eb031c132035dd08",
        ("962ac3c8ca935272", "1e3e344e421afe9d", "3470400e2adf258f", "c4a057e7a9db6522"),
    ),
    "synthetic-dirichlet-3": (
        DataSpec(source="synthetic", partition="dirichlet", alpha=0.3, samples=5000, features=784),
        5,
        3,
        "c1cefcfb550700e4",
        ("56483ba7d246b554", "eb5fe9b4ae487706", "149a8be33b4a36d0"),
    ),
    "synthetic-odd-2": (
        DataSpec(
            source="synthetic",
            partition="iid",
            samples=9,
            features=1,
            classes=2,
            test_fraction=0.5,
        ),
        0,
        2,
        "9b04dbd0d40b9e6d",
        ("dd1e7f472061daa2", "4f56a4717239ea30"),
    ),
}


def digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def full_path(spec: DataSpec, seed: int, nodes: int) -> tuple[Dataset, list[Shard]]:
    ds = load_dataset(spec, seed=seed, base_dir=None)
    return ds, [shard(ds, k, nodes, spec, seed) for k in range(nodes)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_full_dataset_path_gives_the_recorded_shards(name: str) -> None:
    spec, seed, nodes, test_hash, shard_hashes = CASES[name]
    ds, shards = full_path(spec, seed, nodes)
    assert digest(ds.x_test, ds.y_test) == test_hash
    assert tuple(digest(s.x, s.y) for s in shards) == shard_hashes


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_node_building_only_its_shard_gets_the_recorded_bytes(name: str) -> None:
    spec, seed, nodes, test_hash, shard_hashes = CASES[name]
    for k in range(nodes):
        own = load_node_data(spec, seed=seed, base_dir=None, node_index=k, num_nodes=nodes)
        assert digest(own.x_train, own.y_train) == shard_hashes[k], f"node {k}"
        assert digest(own.x_test, own.y_test) == test_hash


@pytest.mark.parametrize("chunk_rows", [16, 48, 1008])
@pytest.mark.parametrize(
    "samples,features",
    [(1000, 784), (997, 3), (1001, 1), (50, 7)],
)
def test_synthetic_shards_do_not_depend_on_the_chunking(
    monkeypatch: pytest.MonkeyPatch, chunk_rows: int, samples: int, features: int
) -> None:
    """Chunk sizes that leave odd tails (a last chunk under 16 values is merged) still draw the
    same random stream as one call over the whole set."""
    monkeypatch.setattr(data, "SYNTHETIC_CHUNK_ROWS", chunk_rows)
    spec = DataSpec(
        source="synthetic", partition="dirichlet", samples=samples, features=features, classes=3
    )
    ds, shards = full_path(spec, 11, 3)
    for k, expected in enumerate(shards):
        own = load_node_data(spec, seed=11, base_dir=None, node_index=k, num_nodes=3)
        assert torch.equal(own.x_train, expected.x) and torch.equal(own.y_train, expected.y)
        assert torch.equal(own.x_test, ds.x_test) and torch.equal(own.y_test, ds.y_test)


def test_digits_are_read_without_importing_scikit_learn() -> None:
    """scikit-learn's import (~1 s) is not paid by a node that only reads the bundled file."""
    code = (
        "import sys; from node.data import load_dataset; from transport.spec import DataSpec; "
        "load_dataset(DataSpec(source='digits'), seed=1, base_dir=None); "
        "print('sklearn' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "False"


def test_digits_read_from_the_file_equal_scikit_learns_load_digits() -> None:
    from sklearn.datasets import load_digits

    x, y = data._digits_arrays()
    bunch = load_digits()
    assert torch.equal(x, torch.from_numpy(np.asarray(bunch.data, dtype=np.float32) / 16.0))
    assert torch.equal(y, torch.from_numpy(np.asarray(bunch.target, dtype=np.int64)))
