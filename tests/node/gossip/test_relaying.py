"""Relayed gossip between real GossipServices on 127.0.0.1: with fanout K every node receives
every update exactly once (counted), a trainer's uplink carries at most K copies, and a relay
that dies holding an update does not lose it: the nodes below it fetch it from a live holder."""

from __future__ import annotations

import asyncio

import pytest
import torch
import zmq
import zmq.asyncio

from node import weights
from node.gossip import GossipService, ReceivedModel
from transport.tensors import model_hash

pytestmark = pytest.mark.timeout(60)

RUN = "r"
ROUND = 1
SIZE = 20_000  # floats per update: 80 kB, several zmq frames' worth


class Net:
    """``n`` gossip services that follow the same fake membership."""

    def __init__(self, n: int, fanout: int) -> None:
        self.ids = [f"n{i}" for i in range(n)]
        self.live = set(self.ids)
        self.commits: dict[str, str] = {}
        self.ctx = zmq.asyncio.Context()
        self.nodes: dict[str, GossipService] = {}
        self.endpoints: dict[str, str] = {}
        for node_id in self.ids:
            g = GossipService(node_id=node_id, run_id=RUN, context=self.ctx)
            g.reference = {"w": torch.zeros(SIZE)}
            g.expects = lambda r, t: None
            g.committed = lambda r, t: self.commits.get(t)
            g.fanout = fanout
            g.members = lambda r: tuple(self.ids)
            g.is_live = lambda peer: peer in self.live
            g.endpoint_of = self.endpoints.get
            self.nodes[node_id] = g

    def start(self) -> None:
        for node_id, g in self.nodes.items():
            self.endpoints[node_id] = g.start()

    def update_of(self, trainer: str, scale: float) -> ReceivedModel:
        payloads = weights.to_payloads({"w": torch.full((SIZE,), scale)})
        digest = model_hash(payloads)
        self.commits[trainer] = digest
        g = self.nodes[trainer]
        state = g.decode_payloads(payloads)
        model = ReceivedModel(trainer, digest, 10, state, payloads, g.route_for(ROUND, trainer))
        g.store(ROUND, model)
        return model

    async def everyone_holds(self, trainers: set[str], timeout: float) -> dict[str, bool]:
        waits = {
            node_id: g.wait_for_models(ROUND, lambda: trainers, timeout)
            for node_id, g in self.nodes.items()
            if node_id in self.live
        }
        results = await asyncio.gather(*waits.values())
        return dict(zip(waits, results, strict=True))

    async def close(self) -> None:
        for g in self.nodes.values():
            await g.close()
        self.ctx.destroy(linger=0)


@pytest.mark.parametrize("fanout", [1, 2])
def test_with_relays_every_node_receives_every_update_exactly_once(fanout: int) -> None:
    async def scenario() -> tuple[Net, dict[str, bool], dict[str, int]]:
        net = Net(6, fanout)
        try:
            net.start()
            trainers = {"n0", "n3"}
            models = {t: net.update_of(t, float(i + 1)) for i, t in enumerate(sorted(trainers))}
            sent = await asyncio.gather(
                *(net.nodes[t].send_update(ROUND, models[t], timeout=20) for t in sorted(trainers))
            )
            assert all(len(outcome) <= fanout for outcome in sent)  # the trainer's own uploads
            held = await net.everyone_holds(trainers, 20)
            await asyncio.sleep(0.2)  # any stray duplicate would land now
            size = sum(p.nbytes for p in models["n0"].payloads)
            uplinks = {i: g.stats.of_round(ROUND)[0] // size for i, g in net.nodes.items()}
            return net, held, uplinks
        finally:
            await net.close()

    net, held, uplinks = asyncio.run(scenario())
    assert all(held.values()), held
    for node_id, g in net.nodes.items():
        expected = {("n0"), ("n3")} - {node_id}
        got = {t for (r, t), n in g.stats.receipts.items() if r == ROUND}
        assert got == expected, node_id
        assert all(n == 1 for n in g.stats.receipts.values()), g.stats.receipts
        assert g.stats.duplicates == 0 and g.stats.fetches == 0
    # Two updates, each relayed: no node uploads more than 2 * fanout copies (K per update).
    assert max(uplinks.values()) <= 2 * fanout, uplinks


def test_a_relay_that_dies_holding_an_update_does_not_lose_it() -> None:
    async def scenario() -> tuple[Net, dict[str, bool], str, list[str]]:
        net = Net(6, 1)  # fanout 1: a chain; everyone after the dead relay depends on it
        try:
            net.start()
            route = net.nodes["n0"].route_for(ROUND, "n0")
            dead = route[1]  # receives from route[0], would forward to route[2]
            net.nodes[dead].fanout = 0  # it takes the update but dies before passing it on
            model = net.update_of("n0", 2.0)
            await net.nodes["n0"].send_update(ROUND, model, timeout=20)
            deadline = asyncio.get_running_loop().time() + 10
            while "n0" not in net.nodes[dead].inbox.get(ROUND, {}):
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.02)
            await net.nodes[dead].close()
            net.live.discard(dead)  # the console drops it; the broadcast says so
            held = await net.everyone_holds({"n0"}, 20)
            return net, held, dead, list(route)
        finally:
            await net.close()

    net, held, dead, route = asyncio.run(scenario())
    assert all(held.values()), held
    below = route[route.index(dead) + 1 :]
    # The first node below the dead relay fetched it; those further down got it relayed on,
    # or fetched it themselves: nobody received it twice.
    assert net.nodes[below[0]].stats.fetches == 1
    for node_id in below:
        assert net.nodes[node_id].stats.receipts[(ROUND, "n0")] == 1
