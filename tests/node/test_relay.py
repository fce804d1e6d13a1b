"""Relay routes: every member is reached exactly once, uplinks carry at most K copies, and a
dead relay's subtree is still served (by its parent's adoption, or by a fetch)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from node import relay

MEMBERS = [f"n{i}" for i in range(8)]


def deliveries(
    route: tuple[str, ...], fanout: int, live: set[str]
) -> tuple[Counter[str], Counter[str]]:
    """Simulate a relay: (how often each node received, how many copies each node sent)."""
    received: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    queue: list[str | None] = [None]  # None: the trainer
    while queue:
        node = queue.pop(0)
        for target in relay.targets(route, node, fanout, lambda p: p in live):
            received[target] += 1
            sent[node or "trainer"] += 1
            queue.append(target)
    return received, sent


@given(
    n=st.integers(min_value=2, max_value=40),
    fanout=st.integers(min_value=1, max_value=5),
    round=st.integers(min_value=1, max_value=1000),
)
def test_every_member_receives_once_and_no_uplink_carries_more_than_fanout_copies(
    n: int, fanout: int, round: int
) -> None:
    members = [f"n{i}" for i in range(n)]
    route = relay.make_route(round, "n0", members, seed=7)
    assert sorted(route) == sorted(members[1:])  # everyone but the trainer, once
    received, sent = deliveries(route, fanout, set(members))
    assert set(received) == set(route) and set(received.values()) == {1}
    assert max(sent.values()) <= fanout


def test_a_relay_dead_before_forwarding_is_skipped_and_its_children_are_served_once() -> None:
    route = relay.make_route(3, "n0", MEMBERS, seed=1)
    dead = route[0]  # a first-level relay
    live = set(MEMBERS) - {dead}
    received, _ = deliveries(route, 2, live)
    assert set(received) == set(route) - {dead} and set(received.values()) == {1}


def test_a_node_below_a_dead_relay_knows_it_and_asks_the_nearest_live_holder_first() -> None:
    route = relay.make_route(5, "n0", MEMBERS, seed=1)
    leaf = route[-1]
    path = relay.ancestors(route, leaf, 1)  # fanout 1: a chain, every earlier node is on it
    assert path == list(reversed(route[:-1]))
    dead = path[0]
    live = set(MEMBERS) - {dead}
    assert relay.relay_lost(route, leaf, 1, lambda p: p in live)
    order = relay.holders(route, leaf, "n0", 1, MEMBERS, lambda p: p in live)
    assert order[0] == path[1]  # the nearest live relay
    assert order.index("n0") == len(path) - 1  # then the trainer (after the live relays)
    assert dead not in order and leaf not in order
    assert not relay.relay_lost(route, route[0], 1, lambda p: p in live)  # first hop: trainer


def test_routes_differ_per_trainer_and_round_so_relaying_spreads() -> None:
    firsts = {relay.make_route(r, t, MEMBERS, seed=3)[0] for r in range(1, 20) for t in MEMBERS}
    assert len(firsts) >= 6


def test_fanout_zero_means_no_relaying() -> None:
    route = relay.make_route(1, "n0", MEMBERS, seed=0)
    assert relay.children(route, None, 0) == [] and relay.ancestors(route, route[3], 0) == []


def test_planned_routes_spread_relaying_evenly_over_the_uplinks() -> None:
    trainers = ["n1", "n2", "n5", "n6"]
    plans = relay.plan_routes(4, trainers, MEMBERS, seed=9, fanout=2)
    uplink: Counter[str] = Counter()
    for trainer, route in plans.items():
        assert sorted(route) == sorted(set(MEMBERS) - {trainer})
        received, sent = deliveries(route, 2, set(MEMBERS))
        assert set(received.values()) == {1} and set(received) == set(route)
        uplink.update({trainer if k == "trainer" else k: v for k, v in sent.items()})
    # 4 updates x 7 recipients = 28 copies over 8 uplinks: 3.5 each at best.
    assert sum(uplink.values()) == 28
    assert max(uplink.values()) <= 4
    # Independent random routes load some uplink far more (the reason for planning).
    random_load: Counter[str] = Counter()
    for t in trainers:
        _, sent = deliveries(relay.make_route(4, t, MEMBERS, seed=9), 2, set(MEMBERS))
        random_load.update({t if k == "trainer" else k: v for k, v in sent.items()})
    assert max(random_load.values()) >= max(uplink.values())


def test_a_node_with_a_checkpoint_upload_is_given_no_relaying() -> None:
    plans = relay.plan_routes(2, ["n1", "n2"], MEMBERS, seed=1, fanout=2, load={"n7": 4.0})
    for route in plans.values():
        _, sent = deliveries(route, 2, set(MEMBERS))
        assert sent.get("n7", 0) == 0


def test_plans_are_the_same_whatever_the_order_of_their_inputs() -> None:
    a = relay.plan_routes(3, ["n2", "n1"], MEMBERS, seed=5, fanout=1)
    b = relay.plan_routes(3, ["n1", "n2"], list(reversed(MEMBERS)), seed=5, fanout=1)
    assert a == b
