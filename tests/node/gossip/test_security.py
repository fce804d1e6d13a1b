"""Node-to-node gossip with CURVE: peers are admitted by the keys in the console's broadcast.

Real GossipService sockets on 127.0.0.1, every wait bounded.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
import zmq
import zmq.asyncio

from node import weights
from node.gossip import GossipService, ReceivedModel
from node.security import NodeKeys, NodeSecurity
from tests.factories import run_snapshot
from tests.node.gossip.test_receive import answer_to, push
from transport import messages as m
from transport.state import ClientStatus, ClientView, RunSnapshot
from transport.tensors import model_hash

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")

CONSOLE_PUBLIC, _ = zmq.curve_keypair()


def node_security() -> NodeSecurity:
    public, secret = zmq.curve_keypair()
    return NodeSecurity(NodeKeys(public, secret, CONSOLE_PUBLIC, Path("unused")))


def broadcast(members: dict[str, NodeSecurity], endpoints: dict[str, str]) -> RunSnapshot:
    clients = tuple(
        ClientView(
            id=name,
            status=ClientStatus.ACTIVE,
            gossip_endpoint=endpoints[name],
            public_key=sec.keys.public.decode(),
        )
        for name, sec in sorted(members.items())
    )
    return run_snapshot(round=1, epoch_rounds=1, clients=clients)


def test_members_push_to_each_other_and_an_outsider_is_not_heard() -> None:
    async def scenario() -> tuple[str, str, int, str]:
        sec = {name: node_security() for name in ("a", "b", "outsider")}
        # One context per node, as in separate processes (a context has one ZAP handler).
        contexts = {name: zmq.asyncio.Context() for name in sec}
        services = {
            name: GossipService(node_id=name, run_id="r", context=contexts[name], security=s)
            for name, s in sec.items()
        }
        try:
            endpoints = {name: g.start() for name, g in services.items()}
            snapshot = broadcast({"a": sec["a"], "b": sec["b"]}, endpoints)
            for name in ("a", "b"):  # what each member's link does with every broadcast
                sec[name].follow(snapshot)
            # The outsider reads the same broadcast (it knows b's key): b still refuses it.
            sec["outsider"].follow(snapshot)
            state = {"w": torch.arange(4, dtype=torch.float32)}
            payloads = weights.to_payloads(state)
            receiver = services["b"]
            receiver.reference = {"w": torch.zeros(4)}
            receiver.expects = lambda r, t: None

            async def push(sender: str, timeout: float) -> str:
                pusher = services[sender]
                pusher.is_live = lambda peer: True
                pusher.endpoint_of = endpoints.get
                model = ReceivedModel(sender, model_hash(payloads), 4, state, payloads)
                outcome = await pusher.push_to(["b"], 1, model, timeout)
                return outcome["b"]

            member = await asyncio.wait_for(push("a", 5.0), 10)
            outsider = await asyncio.wait_for(push("outsider", 0.5), 10)
            router = receiver._router
            assert router is not None
            return member, outsider, router.mechanism, ",".join(sorted(receiver.inbox[1]))
        finally:
            for g in services.values():
                await g.close()
            for ctx in contexts.values():
                ctx.destroy(linger=0)

    member, outsider, mechanism, received = asyncio.run(scenario())

    assert member == "ok" and received == "a"
    assert outsider == "timeout"  # its CURVE handshake is refused: nothing ever arrives
    assert mechanism == zmq.CURVE


def test_follow_keeps_only_live_clients_keys() -> None:
    sec = node_security()
    other = node_security()
    snapshot = broadcast({"a": sec, "b": other}, {"a": "tcp://x:1", "b": "tcp://x:2"})
    dropped = tuple(
        ClientView(id=c.id, status=ClientStatus.DROPPED, public_key=c.public_key)
        if c.id == "b"
        else c
        for c in snapshot.clients
    )

    sec.follow(snapshot)
    assert sec.peer_keys["b"] == other.keys.public and other.keys.public in sec.peers

    sec.follow(run_snapshot(round=1, epoch_rounds=1, clients=dropped))
    assert "b" not in sec.peer_keys and other.keys.public not in sec.peers


def test_a_member_cannot_push_in_another_members_name_over_curve() -> None:
    """Member a, admitted by its own key, claims to be trainer c (routing id and sender)."""

    async def scenario() -> tuple[list[str], set[str]]:
        sec = {name: node_security() for name in ("a", "b", "c")}
        ctx_b, ctx_a = zmq.asyncio.Context(), zmq.asyncio.Context()
        receiver = GossipService(node_id="b", run_id="r", context=ctx_b, security=sec["b"])
        try:
            where = receiver.start()
            snapshot = broadcast(sec, {name: where for name in sec})
            sec["b"].follow(snapshot)
            receiver.reference = {"w": torch.zeros(4)}
            receiver.expects = lambda r, t: None
            payloads = weights.to_payloads({"w": torch.arange(4, dtype=torch.float32)})
            got = []
            for claimed in ("c", "a"):
                sock = ctx_a.socket(zmq.DEALER)
                sock.linger = 0
                sock.setsockopt(zmq.ROUTING_ID, claimed.encode())
                sock.curve_publickey = sec["a"].keys.public
                sock.curve_secretkey = sec["a"].keys.secret
                sock.curve_serverkey = sec["b"].keys.public
                sock.connect(where)
                reply = await answer_to(sock, push(claimed, claimed, payloads))
                got.append(reply.code if isinstance(reply, m.Error) else reply.TYPE)
            return got, set(receiver.inbox.get(1, {}))
        finally:
            await receiver.close()
            ctx_a.destroy(linger=0)
            ctx_b.destroy(linger=0)

    got, kept = asyncio.run(scenario())

    assert got == ["wrong_sender", "model_ack"]  # as c: refused; as itself: taken
    assert kept == {"a"}
