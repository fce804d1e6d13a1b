"""A node's shard is bit-identical whichever way it is built.

The hashes below were taken from the full-dataset path (``load_dataset`` then ``shard``) before a
node learned to build only its own shard; both paths must keep giving exactly these bytes, so a
node that builds its shard alone, the data server that cuts every shard from the full set, and
runs recorded before the change all agree on who trains on which rows.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from node.data import Dataset, Shard, load_dataset, shard
from transport.spec import DataSpec

torch.set_num_threads(1)

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
