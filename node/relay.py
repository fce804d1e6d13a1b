"""Relayed gossip: who forwards a trainer's update to whom (``[learning] gossip_fanout``).

With fanout K a trainer does not upload its update to every peer. It lays the round's other
members out in a seeded order, the *route*, and treats it as a K-ary tree with itself at the
root: the trainer sends to the route's first K nodes; the node at position p forwards to the
positions ``K*(p+1) .. K*(p+1)+K-1``. Every member then receives the update exactly once, and
the busiest uplink carries about K copies instead of N - 1.

Faults: a child that is no longer live when its parent forwards is skipped and its own
children are served instead (they never got the update from anyone else). A relay that dies
after receiving leaves its subtree without the update: each of those nodes notices that an
ancestor on its path is gone and fetches the update from the nearest live ancestor, then the
trainer, then any member (:func:`holders`).

Balancing: when several trainers relay at once, the round's routes are planned together
(:func:`plan_routes`): the nodes that carried the least so far take the positions that forward
the most, so relaying spreads evenly over the uplinks (every update must cross N - 1 links; with
T trainers the busiest uplink can do no better than T * (N - 1) / N copies). A node that already
has other uploads this round (the checkpoint uploader) starts with that load.

Pure functions: the routes are a function of (round, trainers, members, seed, loads), all of
which every node reads in the same broadcast, so a node left out by a dead relay computes the
same route the trainer did and finds its ancestors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence


def _draw(seed: int, round: int, trainer: str, node: str) -> bytes:
    return hashlib.sha256(f"{seed}:{round}:{trainer}:{node}".encode()).digest()


def make_route(round: int, trainer: str, members: Iterable[str], seed: int) -> tuple[str, ...]:
    """The round's members other than ``trainer``, in a seeded order that differs per trainer
    and round (so relaying work spreads over the nodes instead of falling on the same ones)."""
    return tuple(
        sorted(
            (m for m in set(members) if m != trainer),
            key=lambda m: (_draw(seed, round, trainer, m), m),
        )
    )


def plan_routes(
    round: int,
    trainers: Iterable[str],
    members: Iterable[str],
    seed: int,
    fanout: int,
    load: Mapping[str, float] | None = None,
) -> dict[str, tuple[str, ...]]:
    """Every trainer's route for the round, planned together so the uplinks share the work.

    Trainers are taken in id order; each sends to its first ``fanout`` positions itself. The
    positions of its route that forward the most go to the nodes that carry the least so far
    (``load``: copies already owed this round, e.g. a checkpoint upload in update units), ties
    broken by a seeded draw. Deterministic: same inputs, same routes, on every node.
    """
    members = sorted(set(members))
    carried = {m: float((load or {}).get(m, 0.0)) for m in members}
    plans: dict[str, tuple[str, ...]] = {}
    for trainer in sorted(set(trainers)):
        recipients = [m for m in members if m != trainer]
        n = len(recipients)
        if trainer in carried:
            carried[trainer] += min(fanout, n)
        # How many copies each position forwards, in a K-ary layout of n positions.
        sends = [max(0, min(fanout, n - fanout * (p + 1))) for p in range(n)]
        heavy_first = sorted(range(n), key=lambda p: (-sends[p], p))
        light_first = sorted(
            recipients, key=lambda m: (carried[m], _draw(seed, round, trainer, m), m)
        )
        route: list[str] = [""] * n
        for position, node in zip(heavy_first, light_first, strict=True):
            route[position] = node
            carried[node] += sends[position]
        plans[trainer] = tuple(route)
    return plans


def _position(route: Sequence[str], node: str) -> int | None:
    try:
        return route.index(node)
    except ValueError:
        return None


def children(route: Sequence[str], node: str | None, fanout: int) -> list[str]:
    """Who ``node`` forwards to (``None``: the trainer, the root). Empty for fanout 0."""
    if fanout < 1:
        return []
    p = -1 if node is None else _position(route, node)
    if p is None:
        return []
    first = fanout * (p + 1)
    return list(route[first : first + fanout])


def parent(route: Sequence[str], node: str, fanout: int) -> str | None:
    """Who forwards to ``node`` (``None``: the trainer itself, or ``node`` is not routed)."""
    p = _position(route, node)
    if p is None or fanout < 1:
        return None
    up = p // fanout - 1
    return None if up < 0 else route[up]


def ancestors(route: Sequence[str], node: str, fanout: int) -> list[str]:
    """The relays between the trainer and ``node``, nearest first (the trainer not included)."""
    out = []
    current = parent(route, node, fanout)
    while current is not None:
        out.append(current)
        current = parent(route, current, fanout)
    return out


def targets(
    route: Sequence[str], node: str | None, fanout: int, live: Callable[[str], bool]
) -> list[str]:
    """Whom ``node`` must send to now: its live children, and for a child that is gone, that
    child's targets in turn (nobody else would serve them)."""
    out: list[str] = []
    pending = children(route, node, fanout)
    while pending:
        child = pending.pop(0)
        if live(child):
            out.append(child)
        else:
            pending.extend(children(route, child, fanout))
    return out


def relay_lost(route: Sequence[str], node: str, fanout: int, live: Callable[[str], bool]) -> bool:
    """Whether a relay on ``node``'s path is gone, so the update may never be forwarded to it."""
    return any(not live(a) for a in ancestors(route, node, fanout))


def holders(
    route: Sequence[str],
    node: str,
    trainer: str,
    fanout: int,
    members: Iterable[str],
    live: Callable[[str], bool],
) -> list[str]:
    """Whom to ask for a missing update, in order: the live relays on our path (nearest first),
    the trainer, then every other live member."""
    path = [a for a in ancestors(route, node, fanout) if live(a)]
    first = [*path, trainer] if live(trainer) else path
    rest = sorted(m for m in set(members) if m not in first and m != node and live(m))
    return [*first, *rest]
