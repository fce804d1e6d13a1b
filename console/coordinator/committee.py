"""The round committee: who trains, who witnesses, and whose result a quorum accepts.

Everything here is a function of its arguments (:class:`VoteTally` only keeps a running
sum of the votes it is given). Randomness comes from the run seed through
SHA-256 and a splitmix64 stream, never from :mod:`random`, so a round's committee is the same
on every Python version, after a restore, and in a replay.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain

MAX_AUTO_WITNESSES = 32  # witness_nodes = 0 means "every live client, up to this many"

_MASK64 = (1 << 64) - 1


def quorum(n: int) -> int:
    """How many of ``n`` witnesses must agree: 1/1, 2/2, 2/3, floor(2n/3) for n >= 4."""
    if n <= 0:
        return 0
    if n <= 2:
        return n
    if n == 3:
        return 2
    return (2 * n) // 3


def _digest64(*parts: object) -> int:
    text = ":".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def round_seed(seed: int, round: int) -> int:
    """The 64-bit seed of one round: sha256("seed:round"), first 8 bytes, big endian."""
    return _digest64(seed, round)


class _SplitMix64:
    """A tiny deterministic PRNG; enough to shuffle committees, stable forever."""

    __slots__ = ("_state",)

    def __init__(self, seed: int) -> None:
        self._state = seed & _MASK64

    def below(self, bound: int) -> int:
        self._state = (self._state + 0x9E3779B97F4A7C15) & _MASK64
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
        return (z * bound) >> 64


def seeded_prefix(
    ids: Iterable[str], seed: int, n: int, salt: str, *, presorted: bool = False
) -> tuple[str, ...]:
    """The first ``n`` of a seeded Fisher-Yates shuffle of the sorted ids.

    Only the first ``n`` positions are drawn, so electing 32 witnesses among 1,000 clients
    costs 32 draws, not 1,000. The salt keeps the witness draw and the fallback train-set
    draw of the same round independent. ``presorted``: the caller passes ids already
    sorted (the coordinator keeps its epoch list sorted), which saves the O(n log n) sort.
    """
    order = list(ids) if presorted else sorted(ids)
    n = max(0, min(n, len(order)))
    rng = _SplitMix64(_digest64(seed, salt))
    for i in range(n):
        j = i + rng.below(len(order) - i)
        order[i], order[j] = order[j], order[i]
    return tuple(order[:n])


def elect_witnesses(
    clients: Sequence[str], seed: int, n: int, *, presorted: bool = False
) -> tuple[str, ...]:
    """Deterministic seeded shuffle of the sorted ids, first ``n`` (in draw order)."""
    return seeded_prefix(clients, seed, n, "witness", presorted=presorted)


def elect_replacements(
    clients: Sequence[str], seed: int, n: int, gone: Iterable[str], *, presorted: bool = False
) -> tuple[str, ...]:
    """Replacement witnesses for a round whose witnesses are all ``gone``: like
    :func:`elect_witnesses`, salted with who is gone, so a second replacement in the same
    round draws afresh, and the same seed and history always draw the same clients."""
    salt = "replace:" + ",".join(sorted(gone))
    return seeded_prefix(clients, seed, n, salt, presorted=presorted)


def sum_votes(votes: Iterable[Sequence[tuple[str, int]]]) -> defaultdict[str, int]:
    """Summed weight per named candidate (a candidate named with weight 0 is named)."""
    totals: defaultdict[str, int] = defaultdict(int)
    for candidates in votes:
        for candidate, weight in candidates:
            totals[candidate] += weight
    return totals


def top_candidates(
    totals: Mapping[str, int], eligible: Collection[str], k: int, seed: int
) -> tuple[str, ...]:
    """The ``k`` eligible candidates with the most weight, ties by id; see :func:`tally_votes`.

    Split from the summing so the coordinator can keep a running sum as votes arrive and
    only rank at round start.
    """
    if k <= 0:
        return ()
    allowed = eligible if isinstance(eligible, set | frozenset) else frozenset(eligible)
    ranked = [(-w, c) for c, w in totals.items() if c in allowed]
    if not ranked:
        return seeded_prefix(allowed, seed, k, "train")
    ranked.sort()  # (-weight, id): heaviest first, ties by id; faster than a heap here
    return tuple(c for _, c in ranked[:k])


class VoteTally:
    """The votes for the next round and their running sum, so a round start only ranks.

    Same result as :func:`tally_votes` over the votes still counted, without re-summing every
    vote at each round start.
    """

    __slots__ = ("_votes", "_totals", "_named")

    def __init__(self) -> None:
        self._votes: dict[str, tuple[tuple[str, int], ...]] = {}
        self._totals: defaultdict[str, int] = defaultdict(int)
        self._named: defaultdict[str, int] = defaultdict(int)  # how many votes name each

    def __contains__(self, voter: object) -> bool:
        return voter in self._votes

    def add(self, voter: str, candidates: tuple[tuple[str, int], ...]) -> None:
        self._votes[voter] = candidates
        for candidate, weight in candidates:
            self._totals[candidate] += weight
            self._named[candidate] += 1

    def forget(self, voter: str) -> None:
        """A departed voter's vote no longer counts (as if it had never been cast)."""
        for candidate, weight in self._votes.pop(voter, ()):
            self._totals[candidate] -= weight
            self._named[candidate] -= 1
            if not self._named[candidate]:
                del self._named[candidate], self._totals[candidate]

    def top(self, eligible: Collection[str], k: int, seed: int) -> tuple[str, ...]:
        """The train set, as :func:`top_candidates` ranks it."""
        return top_candidates(self._totals, eligible, k, seed)


def tally_votes(
    votes: Mapping[str, Sequence[tuple[str, int]]],
    eligible: Collection[str],
    k: int,
    seed: int,
) -> tuple[str, ...]:
    """The train set: the ``k`` eligible candidates with the most summed weight.

    Highest total first, ties by id ascending. A candidate that is named with weight 0 still
    counts as named. Candidates that are not eligible (dropped, not in the epoch) are
    ignored. When no eligible candidate was named at all, the train set is a seeded sample
    of ``k`` eligible clients, so a round never starts empty just because votes were lost.
    """
    return top_candidates(sum_votes(votes.values()), eligible, k, seed)


@dataclass(frozen=True)
class Decision:
    """The verdict on every trainer of a round."""

    accepted: dict[str, str]  # trainer -> the hash a quorum attested
    rejected: dict[str, str]  # trainer -> why not


def decide_results(
    train_set: Sequence[str],
    live_witnesses: Collection[str],
    attestations: Mapping[str, Mapping[str, str]],
    commits: Mapping[str, str],
    live_trainers: Collection[str],
) -> Decision:
    """Whose result counts: a live trainer whose hash a quorum of the live witnesses attest.

    The quorum is taken over the witnesses still live, so a dropped witness shrinks the
    committee instead of silently voting "no". When a trainer committed, the attested hash
    must be its commit; when it did not (the commit was lost), the quorum alone decides, as
    long as exactly one hash reaches it.
    """
    n = len(live_witnesses)
    q = quorum(n)
    # One pass over every (trainer, hash) attested by a live witness, counted in C.
    counts = Counter(
        chain.from_iterable(attestations[w].items() for w in live_witnesses if w in attestations)
    )
    reached: dict[str, list[str]] = {}
    best: dict[str, int] = {}
    for (trainer, h), c in counts.items():
        if c > best.get(trainer, 0):
            best[trainer] = c
        if c >= q:
            reached.setdefault(trainer, []).append(h)
    accepted: dict[str, str] = {}
    rejected: dict[str, str] = {}
    for trainer in train_set:
        if trainer not in live_trainers:
            rejected[trainer] = "trainer dropped"
            continue
        if n == 0:
            rejected[trainer] = "no live witness remains"
            continue
        hashes = reached.get(trainer)
        committed = commits.get(trainer)
        if not hashes:
            seen = best.get(trainer, 0)
            rejected[trainer] = f"no quorum of witnesses saw it ({seen}/{q} of {n})"
        elif committed is not None:
            if committed in hashes:
                accepted[trainer] = committed
            else:
                rejected[trainer] = "the witnesses' hash does not match the commit"
        elif len(hashes) == 1:
            accepted[trainer] = hashes[0]
        else:
            rejected[trainer] = "witnesses disagree on the hash and there is no commit"
    return Decision(accepted=accepted, rejected=rejected)
