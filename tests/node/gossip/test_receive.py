"""A node's gossip ROUTER takes a trainer's model only from that trainer, and only the weights
it committed. Real GossipService sockets on 127.0.0.1, pushes from raw DEALERs; every wait
bounded."""

from __future__ import annotations

import asyncio

import numpy as np
import torch
import zmq
import zmq.asyncio

from node import weights
from node.compression import CodecSpec, decode_update
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
    pushes: list[tuple[str, m.ModelPush]],
    committed: dict[str, str] | None = None,
    *,
    codec: CodecSpec | None = None,
    reference: dict[str, torch.Tensor] = REFERENCE,
    live: bool = False,
) -> tuple[list[m.Message], set[str]]:
    """Send each (routing id, push) to a fresh receiver; its replies and the trainers it kept.

    ``codec``: the run's update codec (default: plain weights); ``live``: every sender counts as
    a live member (relays are taken from members only)."""

    async def scenario() -> tuple[list[m.Message], set[str]]:
        ctx = zmq.asyncio.Context()
        receiver = GossipService(node_id="me", run_id=RUN, context=ctx)
        receiver.reference = reference
        if codec is not None:
            receiver.decoder = lambda p: decode_update(p, codec, reference, frozenset(reference))
        receiver.expects = lambda r, t: None
        receiver.committed = lambda r, t: (committed or {}).get(t)
        receiver.is_live = lambda peer: live
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


# --------------------------------------------------------------- compressed updates


def _topk_payloads(indices: list[int], values: list[float]) -> tuple[TensorPayload, ...]:
    idx = np.asarray(indices, dtype=np.int32)
    val = np.asarray(values, dtype=np.float32)
    return (
        TensorPayload("w|idx", "int32", (len(idx),), idx.tobytes()),
        TensorPayload("w|val", "float32", (len(val),), val.tobytes()),
    )


def test_hostile_compressed_updates_are_refused_with_the_reason_and_never_kept() -> None:
    """A node on a top-k run (k = 2 of 8): an honest update is kept; updates with indices out
    of range, repeated or unsorted, the wrong k, or a relay's altered bytes are refused."""
    spec = CodecSpec("topk", 0.25)
    honest = _topk_payloads([1, 6], [0.5, -2.0])
    cases = [
        ("b", "b", _topk_payloads([1, 8], [0.5, 1.0])),  # index past the end
        ("c", "c", _topk_payloads([3, 3], [0.5, 1.0])),  # the same index twice
        ("d", "d", _topk_payloads([6, 1], [0.5, 1.0])),  # unsorted
        ("e", "e", _topk_payloads([1, 2, 3], [0.5, 1.0, 2.0])),  # k = 3, the run sends 2
        ("a", "a", honest),
    ]

    pushes = [(i, push(i, t, p)) for i, t, p in cases]
    # a relay passing on trainer a's update with one value changed
    pushes.insert(0, ("relay", push("relay", "a", _topk_payloads([1, 6], [0.5, 2.0]))))
    replies, kept = exchange(
        pushes, {"a": model_hash(honest)}, codec=spec, reference={"w": torch.zeros(8)}, live=True
    )
    assert codes(replies) == [
        "hash_mismatch",  # the relay's bytes are not what trainer a committed
        "bad_model",
        "bad_model",
        "bad_model",
        "bad_model",
        "model_ack",
    ]
    assert kept == {"a"}
    reasons = [r.reason for r in replies if isinstance(r, m.Error)]
    assert all("w" in reason for reason in reasons[1:])  # each names the tensor it refused
