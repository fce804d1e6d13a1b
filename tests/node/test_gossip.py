"""A node's gossip ROUTER takes a trainer's model only from that trainer, and only the weights
it committed. Real GossipService sockets on 127.0.0.1, pushes from raw DEALERs; every wait
bounded."""

from __future__ import annotations

import asyncio

import torch
import zmq
import zmq.asyncio

from node import weights
from node.gossip import GossipService
from transport import messages as m
from transport.codec import decode, encode
from transport.tensors import TensorPayload, model_hash

RUN = "r"
REFERENCE = {"w": torch.zeros(4)}


def payloads(scale: float) -> tuple[TensorPayload, ...]:
    return weights.to_payloads({"w": torch.arange(4, dtype=torch.float32) * scale})


def push(sender: str, trainer: str, tensors: tuple[TensorPayload, ...]) -> m.ModelPush:
    return m.ModelPush(
        run_id=RUN,
        sender=sender,
        round=1,
        trainer=trainer,
        hash=model_hash(tensors),
        samples=4,
        tensors=tensors,
    )


async def answer_to(sock: zmq.asyncio.Socket, msg: m.Message) -> m.Message:
    """Send ``msg`` from a connected DEALER and return the reply (bounded); closes ``sock``."""
    try:
        await sock.send_multipart(encode(msg), copy=False)
        return decode(await asyncio.wait_for(sock.recv_multipart(), 10))
    finally:
        sock.close(linger=0)


def exchange(
    pushes: list[tuple[str, m.ModelPush]], committed: dict[str, str] | None = None
) -> tuple[list[m.Message], set[str]]:
    """Send each (routing id, push) to a fresh receiver; its replies and the trainers it kept."""

    async def scenario() -> tuple[list[m.Message], set[str]]:
        ctx = zmq.asyncio.Context()
        receiver = GossipService(node_id="me", run_id=RUN, context=ctx)
        receiver.reference = REFERENCE
        receiver.expects = lambda r, t: None
        receiver.committed = lambda r, t: (committed or {}).get(t)
        replies: list[m.Message] = []
        try:
            where = receiver.start()
            for identity, msg in pushes:
                sock = ctx.socket(zmq.DEALER)
                sock.linger = 0
                sock.setsockopt(zmq.ROUTING_ID, identity.encode())
                sock.connect(where)
                replies.append(await answer_to(sock, msg))
            return replies, set(receiver.inbox.get(1, {}))
        finally:
            await receiver.close()
            ctx.destroy(linger=0)

    return asyncio.run(scenario())


def codes(replies: list[m.Message]) -> list[str]:
    return [r.code if isinstance(r, m.Error) else r.TYPE for r in replies]


def test_a_trainer_pushing_its_own_model_is_acked() -> None:
    replies, kept = exchange([("a", push("a", "a", payloads(1.0)))])
    assert codes(replies) == ["model_ack"] and kept == {"a"}


def test_a_model_in_another_trainers_name_is_refused_as_wrong_sender() -> None:
    replies, kept = exchange(
        [
            ("mallory", push("mallory", "a", payloads(9.0))),  # says who it is
            ("mallory", push("a", "a", payloads(9.0))),  # claims to be the trainer
        ]
    )
    assert codes(replies) == ["wrong_sender", "wrong_sender"]
    assert "not a live member" in replies[0].reason  # type: ignore[union-attr]
    assert "b'mallory'" in replies[1].reason  # type: ignore[union-attr]
    assert kept == set()


def test_weights_other_than_the_committed_ones_are_refused() -> None:
    committed = model_hash(payloads(1.0))
    replies, kept = exchange(
        [("a", push("a", "a", payloads(2.0))), ("a", push("a", "a", payloads(1.0)))],
        committed={"a": committed},
    )
    assert codes(replies) == ["hash_mismatch", "model_ack"]
    assert f"a committed {committed[:12]}" in replies[0].reason  # type: ignore[union-attr]
    assert kept == {"a"}
