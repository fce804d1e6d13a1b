"""Load the run's dataset from its :class:`~transport.spec.DataSpec` and cut this node's shard.

Sources (``DataSpec.source``):

- ``digits``: scikit-learn's bundled 8x8 digits (1797 samples, 64 features, 10 classes), scaled
  to [0, 1], split into train/test by a seeded stratified split (``test_fraction``).
- ``synthetic``: seeded Gaussian classes (class means + unit noise), ``samples`` training rows
  plus ``round(samples * test_fraction)`` held-out rows, ``features`` wide, ``classes`` classes.
- ``"package.module:loader"``: ``loader(seed=...)`` returns ``(x, y)`` (split here, as digits)
  or ``(x_train, y_train, x_test, y_test)``; tensors or NumPy arrays. ``x`` of shape
  ``(N, F)``, ``(N, H, W)`` or ``(N, 1, H, W)`` (the last two give an image shape).
- a path to a ``.safetensors`` file (relative paths resolve against ``base_dir``) holding
  ``x`` and ``y``, and optionally ``x_test`` and ``y_test``. Read with safetensors, never pickle.

Every node derives the same dataset and the same held-out test split from the run's seed;
:func:`partition` then gives node ``k`` of ``n`` the same shard whoever computes it.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib
import importlib.util
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transport.spec import BUILTIN_DATA, PARTITIONS, DataSpec

logger = logging.getLogger(__name__)

_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_TENSOR_KEYS = ("x", "y", "x_test", "y_test")
MIN_SHARD = 10  # dirichlet: every node gets at least this many samples (fewer if data is tiny)
_DIRICHLET_DRAWS = 100  # redraws before topping small shards up deterministically
_SYNTHETIC_SEPARATION = 5.0  # expected distance between two class means, in noise std units


class DataError(ValueError):
    """The data spec or the data it names is unusable (what was wrong, what is allowed)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    x_train: torch.Tensor  # float32 (N, features)
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    features: int
    classes: int
    image_shape: tuple[int, int] | None


@dataclass(frozen=True, eq=False)
class Shard:
    x: torch.Tensor
    y: torch.Tensor

    @property
    def samples(self) -> int:
        return int(self.y.shape[0])


def load_dataset(spec: DataSpec, *, seed: int, base_dir: Path | None) -> Dataset:
    """Load (or generate) the full dataset named by ``spec``; the same on every node."""
    if not 0.0 < spec.test_fraction < 1.0:
        raise DataError(f"data.test_fraction must be in (0, 1), got {spec.test_fraction}")
    source = spec.source
    if source == "digits":
        return _digits(spec, seed)
    if source == "synthetic":
        return _synthetic(spec, seed)
    if source.endswith(".safetensors"):
        path = Path(source).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return _from_safetensors(path, spec, seed)
    if _IMPORT_PATH.match(source):
        return _from_loader(source, spec, seed)
    raise DataError(
        f"data.source {source!r} is not usable: use one of {list(BUILTIN_DATA)}, an import path "
        "'package.module:loader', or a path to a .safetensors file"
    )


def _digits(spec: DataSpec, seed: int) -> Dataset:
    x, y = _digits_arrays()
    return _split(x, y, spec.test_fraction, seed, image_shape=(8, 8), where="digits")


def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits, read from the CSV it ships, as ``load_digits`` reads it.

    Importing ``sklearn.datasets`` costs ~1 s (scipy and friends); the file itself loads in
    ~20 ms. Same bytes as ``load_digits()``: float64 from ``np.loadtxt``, then float32 / 16.
    """
    spec = importlib.util.find_spec("sklearn")
    roots = [] if spec is None else list(spec.submodule_search_locations or ())
    path = next(
        (
            p
            for p in (Path(r) / "datasets" / "data" / "digits.csv.gz" for r in roots)
            if p.is_file()
        ),
        None,
    )
    if path is None:  # an unusual install: let scikit-learn find its file
        from sklearn.datasets import load_digits

        bunch = load_digits()
        data, target = np.asarray(bunch.data), np.asarray(bunch.target)
    else:
        with gzip.open(path, mode="rt", encoding="utf-8") as fh:
            table = np.loadtxt(fh, delimiter=",")
        data, target = table[:, :-1], table[:, -1].astype(int, copy=False)
    x = torch.from_numpy(np.asarray(data, dtype=np.float32) / 16.0)
    y = torch.from_numpy(np.asarray(target, dtype=np.int64))
    return x, y


def _synthetic(spec: DataSpec, seed: int) -> Dataset:
    samples, features, classes = spec.samples, spec.features, spec.classes
    if samples < 1 or features < 1 or classes < 2:
        raise DataError(
            "synthetic data needs data.samples >= 1, data.features >= 1 and data.classes >= 2; "
            f"got samples={samples}, features={features}, classes={classes}"
        )
    n_test = max(1, round(samples * spec.test_fraction))
    total = samples + n_test
    gen = torch.Generator().manual_seed(_mix(seed, "synthetic"))
    scale = _SYNTHETIC_SEPARATION / math.sqrt(2.0 * features)
    means = torch.randn(classes, features, generator=gen).mul_(scale)
    x = torch.empty(total, features).normal_(generator=gen)
    # Labels cycle 0..C-1 (row i has class i % C), so adding the means is one broadcast add.
    full = (total // classes) * classes
    x[:full].view(-1, classes, features).add_(means)
    x[full:].add_(means[: total - full])
    y = torch.arange(total, dtype=torch.int64).remainder_(classes)
    return Dataset(x[:samples], y[:samples], x[samples:], y[samples:], features, classes, None)


def _from_loader(path: str, spec: DataSpec, seed: int) -> Dataset:
    module_name, attr = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # user code
        raise DataError(
            f"data.source {path!r}: cannot import module {module_name!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    loader = getattr(module, attr, None)
    if not callable(loader):
        raise DataError(f"data.source {path!r}: module {module_name!r} has no function {attr!r}")
    try:
        result = loader(seed=seed)
    except Exception as exc:  # user code
        raise DataError(
            f"data.source {path!r}: loader(seed={seed}) raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(result, tuple | list) or len(result) not in (2, 4):
        raise DataError(
            f"data.source {path!r}: loader must return (x, y) or (x_train, y_train, x_test, "
            f"y_test), got {_describe(result)}"
        )
    return _assemble(list(result), spec, seed, where=f"data.source {path!r}")


def _from_safetensors(path: Path, spec: DataSpec, seed: int) -> Dataset:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    where = f"data file {str(path)!r}"
    if not path.is_file():
        raise DataError(f"{where} does not exist (relative paths resolve against data.toml)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{where} is not a readable safetensors file: {exc}") from exc
    unknown = sorted(set(tensors) - set(_TENSOR_KEYS))
    if unknown:
        raise DataError(f"{where}: unknown tensors {unknown}; allowed: {list(_TENSOR_KEYS)}")
    if "x" not in tensors or "y" not in tensors:
        raise DataError(f"{where} must hold tensors 'x' and 'y'; it has {sorted(tensors)}")
    if ("x_test" in tensors) != ("y_test" in tensors):
        raise DataError(f"{where}: 'x_test' and 'y_test' go together; it has {sorted(tensors)}")
    parts = [tensors[k] for k in _TENSOR_KEYS if k in tensors]
    return _assemble(parts, spec, seed, where=where)


def _assemble(parts: list[Any], spec: DataSpec, seed: int, *, where: str) -> Dataset:
    names = ("x", "y") if len(parts) == 2 else ("x_train", "y_train", "x_test", "y_test")
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    shapes: list[tuple[int, int] | None] = []
    for i in range(0, len(parts), 2):
        x, shape = _features(parts[i], where, names[i])
        y = _labels(parts[i + 1], where, names[i + 1])
        if x.shape[0] != y.shape[0]:
            raise DataError(
                f"{where}: {names[i]} has {x.shape[0]} rows but {names[i + 1]} has {y.shape[0]}"
            )
        if x.shape[0] == 0:
            raise DataError(f"{where}: {names[i]} is empty")
        xs.append(x)
        ys.append(y)
        shapes.append(shape)
    if len(xs) == 2 and xs[0].shape[1:] != xs[1].shape[1:]:
        raise DataError(
            f"{where}: x_train has {xs[0].shape[1]} features but x_test has {xs[1].shape[1]}"
        )
    if len(xs) == 1:
        return _split(xs[0], ys[0], spec.test_fraction, seed, image_shape=shapes[0], where=where)
    classes = int(max(int(ys[0].max()), int(ys[1].max()))) + 1
    if classes < 2:
        raise DataError(f"{where}: labels must cover at least 2 classes, all are 0")
    return Dataset(xs[0], ys[0], xs[1], ys[1], int(xs[0].shape[1]), classes, shapes[0])


def _features(raw: Any, where: str, name: str) -> tuple[torch.Tensor, tuple[int, int] | None]:
    t = _as_tensor(raw, where, name)
    if not (t.dtype.is_floating_point or _is_integer(t.dtype)):
        raise DataError(f"{where}: {name} must be numeric, got dtype {t.dtype}")
    image_shape: tuple[int, int] | None = None
    if t.ndim == 4 and t.shape[1] == 1:
        image_shape = (int(t.shape[2]), int(t.shape[3]))
    elif t.ndim == 3:
        image_shape = (int(t.shape[1]), int(t.shape[2]))
    elif t.ndim != 2:
        raise DataError(
            f"{where}: {name} must have shape (N, F), (N, H, W) or (N, 1, H, W), "
            f"got {tuple(t.shape)}"
        )
    x = t.reshape(t.shape[0], -1).to(torch.float32).contiguous()
    if x.shape[1] == 0:
        raise DataError(f"{where}: {name} has no features")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise DataError(f"{where}: {name} has {bad} non-finite values (NaN or inf)")
    return x, image_shape


def _labels(raw: Any, where: str, name: str) -> torch.Tensor:
    t = _as_tensor(raw, where, name)
    if not _is_integer(t.dtype):
        raise DataError(f"{where}: {name} must hold integer class labels, got dtype {t.dtype}")
    if t.ndim != 1:
        raise DataError(f"{where}: {name} must be 1-D (N,), got shape {tuple(t.shape)}")
    y = t.to(torch.int64).contiguous()
    if y.numel() and int(y.min()) < 0:
        raise DataError(f"{where}: {name} has negative labels; classes are 0..C-1")
    return y


def _as_tensor(raw: Any, where: str, name: str) -> torch.Tensor:
    if isinstance(raw, torch.Tensor):
        return raw.detach().cpu()
    if isinstance(raw, np.ndarray):
        if raw.dtype == object:
            raise DataError(f"{where}: {name} is an object array; give a numeric array")
        return torch.from_numpy(np.ascontiguousarray(raw))
    raise DataError(f"{where}: {name} must be a torch tensor or NumPy array, got {_describe(raw)}")


def _is_integer(dtype: torch.dtype) -> bool:
    return dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _describe(value: Any) -> str:
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


def _split(
    x: torch.Tensor,
    y: torch.Tensor,
    test_fraction: float,
    seed: int,
    *,
    image_shape: tuple[int, int] | None,
    where: str,
) -> Dataset:
    """Seeded stratified split: each class sends round(count * test_fraction) rows to test."""
    classes = int(y.max()) + 1
    if classes < 2:
        raise DataError(f"{where}: labels must cover at least 2 classes, all are 0")
    rng = np.random.default_rng(_mix(seed, "test-split"))
    labels = y.numpy()
    test_parts = []
    for c in range(classes):
        members = np.flatnonzero(labels == c)
        take = round(len(members) * test_fraction)
        test_parts.append(rng.permutation(members)[:take])
    test_idx = np.sort(np.concatenate(test_parts))
    if len(test_idx) == 0 or len(test_idx) == len(labels):
        raise DataError(
            f"{where}: test_fraction {test_fraction} leaves an empty train or test split "
            f"of {len(labels)} samples"
        )
    mask = np.ones(len(labels), dtype=bool)
    mask[test_idx] = False
    train = torch.from_numpy(np.flatnonzero(mask))
    test = torch.from_numpy(test_idx)
    return Dataset(x[train], y[train], x[test], y[test], int(x.shape[1]), classes, image_shape)


def partition(
    y: torch.Tensor,
    *,
    num_nodes: int,
    node_index: int,
    scheme: str,
    alpha: float,
    seed: int,
) -> torch.Tensor:
    """Indices (sorted, int64) of node ``node_index``'s shard of the rows labelled ``y``.

    Every node computes the whole assignment from the seed and keeps its own part, so shards are
    disjoint, cover all rows, and node k's shard does not depend on who asks.
    """
    if num_nodes < 1:
        raise DataError(f"num_nodes must be >= 1, got {num_nodes}")
    if not 0 <= node_index < num_nodes:
        raise DataError(f"node_index must be in [0, {num_nodes}), got {node_index}")
    if y.ndim != 1 or not _is_integer(y.dtype):
        raise DataError(f"labels must be a 1-D integer tensor, got {y.dtype} {tuple(y.shape)}")
    n = int(y.shape[0])
    if n < num_nodes:
        raise DataError(f"cannot split {n} training samples across {num_nodes} nodes")
    if scheme == "iid":
        parts = _iid(n, num_nodes, seed)
    elif scheme == "dirichlet":
        if not alpha > 0:
            raise DataError(f"data.alpha must be > 0 for the dirichlet partition, got {alpha}")
        parts = _dirichlet(y.numpy(), num_nodes, alpha, seed)
    else:
        raise DataError(f"data.partition {scheme!r} is unknown; allowed: {list(PARTITIONS)}")
    return torch.from_numpy(np.sort(parts[node_index]).astype(np.int64))


def _iid(n: int, num_nodes: int, seed: int) -> list[np.ndarray]:
    perm = np.random.default_rng(_mix(seed, "iid")).permutation(n)
    return list(np.array_split(perm, num_nodes))


def _dirichlet(labels: np.ndarray, num_nodes: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Per class, split its rows across nodes in Dirichlet(alpha) proportions.

    Redraw (seeded) until every node has ``min(MIN_SHARD, n // num_nodes)`` rows; after
    ``_DIRICHLET_DRAWS`` draws, top small shards up from the largest ones, deterministically.
    """
    rng = np.random.default_rng(_mix(seed, "dirichlet"))
    minimum = min(MIN_SHARD, len(labels) // num_nodes)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    parts: list[np.ndarray] = []
    for _ in range(_DIRICHLET_DRAWS):
        buckets: list[list[np.ndarray]] = [[] for _ in range(num_nodes)]
        for members in by_class:
            members = rng.permutation(members)
            cuts = np.cumsum(rng.dirichlet(np.full(num_nodes, alpha)))[:-1] * len(members)
            for node, piece in enumerate(np.split(members, cuts.astype(np.int64))):
                buckets[node].append(piece)
        parts = [np.concatenate(b) for b in buckets]
        if min(len(p) for p in parts) >= minimum:
            return parts
    logger.debug("dirichlet partition: topping up shards smaller than %d", minimum)
    for small in range(num_nodes):
        while len(parts[small]) < minimum:
            big = max(range(num_nodes), key=lambda k: (len(parts[k]), -k))
            need = min(minimum - len(parts[small]), len(parts[big]) - minimum)
            parts[small] = np.concatenate([parts[small], parts[big][-need:]])
            parts[big] = parts[big][:-need]
    return parts


def shard(dataset: Dataset, node_index: int, num_nodes: int, spec: DataSpec, seed: int) -> Shard:
    """This node's training rows, by ``spec.partition`` and ``spec.alpha``."""
    idx = partition(
        dataset.y_train,
        num_nodes=num_nodes,
        node_index=node_index,
        scheme=spec.partition,
        alpha=spec.alpha,
        seed=seed,
    )
    return Shard(dataset.x_train[idx], dataset.y_train[idx])


def load_node_data(
    spec: DataSpec, *, seed: int, base_dir: Path | None, node_index: int, num_nodes: int
) -> Dataset:
    """Node ``node_index`` of ``num_nodes``'s data: its shard as the training rows, and the
    whole held-out split; the bytes of ``shard(load_dataset(...), ...)`` and its test split.

    Synthetic data is generated chunk by chunk and only this node's rows (and the test rows) are
    kept, so a node holds its shard, not the whole set (60,000 x 784 floats are 188 MB per node).
    Other sources are small (digits) or the user's own (a file, a loader): loaded, then cut.
    """
    if spec.source == "synthetic":
        return _synthetic_part(spec, seed, node_index, num_nodes)
    ds = load_dataset(spec, seed=seed, base_dir=base_dir)
    part = shard(ds, node_index, num_nodes, spec, seed)
    return dataclasses.replace(ds, x_train=part.x, y_train=part.y)


SYNTHETIC_CHUNK_ROWS = 4096  # rows generated at a time; a multiple of 16 (see _synthetic_rows)


def _synthetic_part(spec: DataSpec, seed: int, node_index: int, num_nodes: int) -> Dataset:
    samples, features, classes = spec.samples, spec.features, spec.classes
    if samples < 1 or features < 1 or classes < 2:
        return _synthetic(spec, seed)  # raises the same DataError
    if not 0.0 < spec.test_fraction < 1.0:
        raise DataError(f"data.test_fraction must be in (0, 1), got {spec.test_fraction}")
    n_test = max(1, round(samples * spec.test_fraction))
    total = samples + n_test
    gen = torch.Generator().manual_seed(_mix(seed, "synthetic"))
    scale = _SYNTHETIC_SEPARATION / math.sqrt(2.0 * features)
    means = torch.randn(classes, features, generator=gen).mul_(scale)
    y = torch.arange(total, dtype=torch.int64).remainder_(classes)
    idx = partition(
        y[:samples],
        num_nodes=num_nodes,
        node_index=node_index,
        scheme=spec.partition,
        alpha=spec.alpha,
        seed=seed,
    )
    keep = torch.cat([idx, torch.arange(samples, total, dtype=torch.int64)])
    x = _synthetic_rows(gen, means, total, keep)
    n = int(idx.shape[0])
    return Dataset(x[:n], y[idx], x[n:], y[samples:], features, classes, None)


def _synthetic_rows(
    gen: torch.Generator, means: torch.Tensor, total: int, keep: torch.Tensor
) -> torch.Tensor:
    """Rows ``keep`` (sorted) of ``_synthetic``'s ``x``, drawing the same random stream.

    torch fills a float tensor of n >= 16 values with n uniforms, turns them into normals 16 at
    a time, and redraws the last 16 when 16 does not divide n. Chunks of a multiple of 16 values
    (every chunk but the last) therefore draw exactly what one call over all rows draws; the last
    chunk has the same tail, and is merged into the one before when it holds under 16 values.
    """
    classes, features = means.shape
    bounds = list(range(0, total, SYNTHETIC_CHUNK_ROWS)) + [total]
    if len(bounds) > 2 and (bounds[-1] - bounds[-2]) * features < 16:
        del bounds[-2]
    out = torch.empty(int(keep.shape[0]), features)
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        chunk = torch.empty(end - start, features).normal_(generator=gen)
        lo = int(torch.searchsorted(keep, start))
        hi = int(torch.searchsorted(keep, end))
        rows = keep[lo:hi]
        out[lo:hi] = chunk[rows - start].add_(means[rows.remainder(classes)])
    return out


def node_index_for(node_id: str, num_nodes: int) -> int:
    """``node-3`` -> ``3 % num_nodes``; an id without a trailing number -> a stable hash of it."""
    if num_nodes < 1:
        raise DataError(f"num_nodes must be >= 1, got {num_nodes}")
    match = re.search(r"(\d+)$", node_id)
    if match:
        return int(match.group(1)) % num_nodes
    digest = hashlib.sha256(node_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % num_nodes


def _mix(seed: int, purpose: str) -> int:
    """A 63-bit seed for one purpose, derived from the run's seed (stable across processes)."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
