"""Deterministic, vectorised aggregation of the round's accepted models.

Every node aggregates exactly the accepted set and must end with bit-identical weights, so:

- updates are sorted by ``node_id`` first (the caller's order never matters);
- the floating-point entries of each state_dict are flattened, in the first update's key order,
  into one fp32 row of ``X`` (n x P); results are cast back to each entry's dtype;
- integer entries (e.g. BatchNorm's ``num_batches_tracked``) take the element-wise max;
- every reduction is a fixed sequence of element-wise IEEE operations (one multiply and one add
  per row, rows in id order), never a BLAS call or a threaded tree reduction whose rounding
  could depend on the thread count.

Aggregators (``LearningSpec.aggregator``):

- ``fedavg``: sample-weighted mean, ``sum_i (n_i / N) * x_i`` accumulated in fp32.
- ``fedmedian``: coordinate-wise true median (the mean of the two middle values for even n,
  like ``np.median``; ``torch.median`` would return the lower one).
- ``trimmed_mean``: per coordinate, sort, cut ``b = floor(trim_fraction * n)`` values at each
  end, average the rest (``0 <= trim_fraction < 0.5``, so ``n > 2b`` always holds).
- ``krum`` (Blanchard et al. 2017): squared L2 distances in float64; the score of update i is
  the sum of its ``n - f - 2`` smallest distances to the others; the lowest score wins, ties
  going to the lowest node id. Krum needs ``n > 2f + 2``: with fewer updates it falls back to
  ``fedmedian`` and logs a warning (a robust rule beats an undefined one).

Memory: the stacked ``X`` takes ``4 * n * P`` bytes. Median and trimmed mean sort ``CHUNK``
coordinates at a time (values plus int64 indices: ``12 * n * CHUNK`` bytes of scratch), and
Krum sums distances over small float64 blocks, to bound the rest on large models.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from transport.spec import AGGREGATORS

logger = logging.getLogger(__name__)

CHUNK = 1 << 22  # coordinates sorted at once by fedmedian / trimmed_mean (4M)
_KRUM_CHUNK = 1 << 16  # coordinates per float64 block of Krum's distance sums


class AggregationError(ValueError):
    """The updates cannot be aggregated (mismatched models, bad sample counts, bad options)."""


@dataclass(frozen=True, eq=False)
class Update:
    node_id: str
    samples: int
    state: Mapping[str, torch.Tensor]


def aggregate(
    name: str, updates: Sequence[Update], *, trim_fraction: float, byzantine_f: int
) -> dict[str, torch.Tensor]:
    """Aggregate ``updates`` with the aggregator ``name``; same inputs, same bits, every time."""
    if name not in AGGREGATORS:
        raise AggregationError(f"unknown aggregator {name!r}; allowed: {list(AGGREGATORS)}")
    ordered = _validated(updates)
    layout = _Layout(ordered[0].state)
    x = layout.stack(ordered)
    n = len(ordered)
    with torch.no_grad():
        if name == "fedavg":
            vector = _fedavg(x, [u.samples for u in ordered])
        elif name == "fedmedian":
            vector = _fedmedian(x)
        elif name == "trimmed_mean":
            if not 0.0 <= trim_fraction < 0.5:
                raise AggregationError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
            vector = _trimmed_mean(x, math.floor(trim_fraction * n))
        else:
            if byzantine_f < 0:
                raise AggregationError(f"byzantine_f must be >= 0, got {byzantine_f}")
            if n > 2 * byzantine_f + 2:
                chosen = krum_select(x, byzantine_f)
                logger.info("krum picked %s of %d updates", ordered[chosen].node_id, n)
                vector = x[chosen]
            else:
                logger.warning(
                    "krum needs n > 2f + 2 updates (f=%d, n=%d); using fedmedian this round",
                    byzantine_f,
                    n,
                )
                vector = _fedmedian(x)
        return layout.unflatten(vector, ordered)


def _validated(updates: Sequence[Update]) -> list[Update]:
    if not updates:
        raise AggregationError("no updates to aggregate")
    ordered = sorted(updates, key=lambda u: u.node_id)
    ids = [u.node_id for u in ordered]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise AggregationError(f"duplicate updates from {duplicates}")
    first = ordered[0]
    for update in ordered:
        if isinstance(update.samples, bool) or not isinstance(update.samples, int):
            raise AggregationError(f"{update.node_id}: samples must be an int")
        if update.samples < 0:
            raise AggregationError(f"{update.node_id}: samples must be >= 0, got {update.samples}")
        missing = [k for k in first.state if k not in update.state]
        extra = [k for k in update.state if k not in first.state]
        if missing or extra:
            raise AggregationError(
                f"{update.node_id}: tensor names differ from {first.node_id}'s: "
                f"missing {missing}, unexpected {extra}"
            )
        for key, ref in first.state.items():
            t = update.state[key]
            if t.dtype != ref.dtype or t.shape != ref.shape:
                raise AggregationError(
                    f"{update.node_id}: {key!r} is {t.dtype} {list(t.shape)}, "
                    f"{first.node_id} has {ref.dtype} {list(ref.shape)}"
                )
            if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
                raise AggregationError(f"{update.node_id}: {key!r} has NaN or inf values")
    return ordered


class _Layout:
    """Where each floating-point entry lives in the flat vector; which entries are integers."""

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        self.float_keys = [k for k, t in state.items() if t.dtype.is_floating_point]
        self.other_keys = [k for k, t in state.items() if not t.dtype.is_floating_point]
        self.keys = list(state)
        self.spans: dict[str, tuple[int, int]] = {}
        offset = 0
        for key in self.float_keys:
            numel = state[key].numel()
            self.spans[key] = (offset, offset + numel)
            offset += numel
        self.size = offset

    def stack(self, updates: Sequence[Update]) -> torch.Tensor:
        x = torch.empty(len(updates), self.size, dtype=torch.float32)
        for row, update in enumerate(updates):
            for key in self.float_keys:
                start, stop = self.spans[key]
                x[row, start:stop].copy_(update.state[key].detach().reshape(-1))
        return x

    def unflatten(self, vector: torch.Tensor, updates: Sequence[Update]) -> dict[str, torch.Tensor]:
        first = updates[0].state
        out: dict[str, torch.Tensor] = {}
        for key in self.keys:
            ref = first[key]
            if key in self.spans:
                start, stop = self.spans[key]
                out[key] = vector[start:stop].reshape(ref.shape).to(ref.dtype, copy=True)
            else:
                stacked = torch.stack([u.state[key].detach().cpu() for u in updates])
                out[key] = stacked.amax(dim=0)
        return out


def _fedavg(x: torch.Tensor, samples: list[int]) -> torch.Tensor:
    total = sum(samples)
    if total <= 0:
        raise AggregationError("fedavg needs at least one update with samples > 0")
    acc = torch.zeros(x.shape[1], dtype=torch.float32)
    scratch = torch.empty_like(acc)
    for row, count in zip(x, samples, strict=True):
        if count:
            # A separate multiply and add (no fused alpha): the same rounding on every code path.
            torch.mul(row, count / total, out=scratch)
            acc.add_(scratch)
    return acc


def _sorted_chunks(x: torch.Tensor) -> Iterator[tuple[int, int, torch.Tensor]]:
    for start in range(0, x.shape[1], CHUNK):
        stop = min(start + CHUNK, x.shape[1])
        yield start, stop, torch.sort(x[:, start:stop], dim=0, stable=True).values


def _fedmedian(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    out = torch.empty(x.shape[1], dtype=torch.float32)
    for start, stop, s in _sorted_chunks(x):
        if n % 2:
            out[start:stop] = s[n // 2]
        else:
            # (a + b) / 2 without overflow; each half is exact, so this equals np.median's bits.
            torch.add(s[n // 2 - 1].mul(0.5), s[n // 2].mul(0.5), out=out[start:stop])
    return out


def _trimmed_mean(x: torch.Tensor, cut: int) -> torch.Tensor:
    n = x.shape[0]
    kept = n - 2 * cut
    out = torch.empty(x.shape[1], dtype=torch.float32)
    for start, stop, s in _sorted_chunks(x):
        acc = s[cut].clone()
        for row in range(cut + 1, n - cut):
            acc.add_(s[row])
        torch.div(acc, kept, out=out[start:stop])
    return out


def krum_scores(x: torch.Tensor, f: int) -> list[float]:
    """Krum score of each row of ``x``: sum of its ``n - f - 2`` smallest squared distances."""
    n = x.shape[0]
    closest = n - f - 2
    if closest < 1:
        raise AggregationError(f"krum needs n > 2f + 2 updates; got n={n}, f={f}")
    dist = torch.zeros(n, n, dtype=torch.float64)
    step = max(1, min(CHUNK, _KRUM_CHUNK))  # small float64 blocks stay in cache
    for start in range(0, x.shape[1], step):
        chunk = x[:, start : start + step].to(torch.float64)
        for i in range(n - 1):
            diff = chunk[i + 1 :] - chunk[i]
            partial = (diff * diff).sum(dim=1)
            dist[i, i + 1 :] += partial
            dist[i + 1 :, i] += partial
    scores = []
    for i in range(n):
        others = torch.cat([dist[i, :i], dist[i, i + 1 :]])
        scores.append(float(torch.sort(others).values[:closest].sum()))
    return scores


def krum_select(x: torch.Tensor, f: int) -> int:
    """Index of the row Krum picks (lowest score; ties to the lowest index, i.e. node id)."""
    scores = krum_scores(x, f)
    return min(range(len(scores)), key=lambda i: (scores[i], i))


def update_norm(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of ``state - reference`` over floating-point entries (float64 arithmetic)."""
    missing = sorted(set(reference) ^ set(state))
    if missing:
        raise AggregationError(f"update_norm: tensor names differ: {missing}")
    total = 0.0
    for key, ref in reference.items():
        if not ref.dtype.is_floating_point:
            continue
        t = state[key]
        if t.shape != ref.shape:
            raise AggregationError(
                f"update_norm: {key!r} is {list(t.shape)}, reference has {list(ref.shape)}"
            )
        diff = t.detach().to(torch.float64) - ref.detach().to(torch.float64)
        total += float((diff * diff).sum())
    return math.sqrt(total)
