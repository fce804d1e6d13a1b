"""Hostile input for the console's control ROUTER and a node's gossip ROUTER.

Seeded generators of malformed or unwelcome messages, each tagged with what it is and the
error codes a correct peer may answer it with, and a pipelining fuzzer that sends them from
raw DEALERs and pairs every reply with its request (one DEALER's replies come back in order).
Nothing here is ever a valid request from a member: a fuzzer must not join the run.
"""

from __future__ import annotations

import json
import math
import random
import struct
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import zmq

from transport import messages as m
from transport.codec import DecodeError, decode, encode
from transport.tensors import TensorPayload, model_hash

HASH = "ab" * 32
DECODE_CODES = frozenset({"malformed", "wrong_version", "too_large", "bad_tensor"})
ANY_REFUSAL = frozenset(m.ErrorCode)


@dataclass(frozen=True)
class Hostile:
    kind: str  # what the message is, for the report
    frames: list[bytes]
    codes: frozenset[str]  # the error codes a correct peer may answer with


def _header(fields: dict[str, object]) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


def _tensor(name: str, values: list[float], dtype: str = "float32") -> TensorPayload:
    fmt = {"float32": "f", "float64": "d"}[dtype]
    data = struct.pack(f"<{len(values)}{fmt}", *values)
    return TensorPayload(name, dtype, (len(values),), data)


def _frames(msg: m.Message) -> list[bytes]:
    return [bytes(memoryview(f)) for f in encode(msg)]


def control_messages(rng: random.Random, identity: str, run_id: str) -> Iterator[Hostile]:
    """Endless malformed or unwelcome control requests from ``identity``, a non-member."""
    wrong_run = f"{run_id}-not"
    while True:
        pick = rng.randrange(16)
        if pick == 0:  # random bytes, one to four frames
            frames = [rng.randbytes(rng.randrange(0, 300)) for _ in range(rng.randrange(1, 5))]
            yield Hostile("random bytes", frames, ANY_REFUSAL)
        elif pick == 1:  # a valid request cut short
            full = _frames(m.Heartbeat(node_id=identity, stage="x", round=rng.randrange(9)))[0]
            yield Hostile("truncated header", [full[: rng.randrange(1, len(full))]], DECODE_CODES)
        elif pick == 2:
            version = rng.choice([0, 2, 99, -1, 2**40])
            frames = [_header({"v": version, "type": "heartbeat", "node_id": identity})]
            yield Hostile("wrong protocol version", frames, frozenset({"wrong_version"}))
        elif pick == 3:
            join = m.Join(run_id=wrong_run, node_id=identity, gossip_endpoint="tcp://127.0.0.1:9")
            yield Hostile("join with a wrong run_id", _frames(join), frozenset({"wrong_run_id"}))
        elif pick == 4:  # what only members may send
            msg = rng.choice(
                [
                    m.Witness(node_id=identity, round=rng.randrange(1, 50), attestations={}),
                    m.Witness(node_id=identity, round=1, attestations={"node-0": HASH}),
                    m.Vote(node_id=identity, round=rng.randrange(50), candidates=(("node-0", 5),)),
                    m.Commit(node_id=identity, round=1, hash=HASH, samples=10, metrics={}),
                    m.WarmedUp(node_id=identity, epoch=0, model_hash=HASH),
                    m.Aggregate(node_id=identity, round=1, hash=HASH, metrics={"accuracy": 1.0}),
                    m.Metrics(node_id=identity, round=1, metrics={"update_norm": 1e9}),
                    m.Heartbeat(node_id=identity, stage="fuzz"),
                    m.Leave(node_id=identity, reason="fuzz"),
                    m.ModelRequest(node_id=identity, epoch=0),
                ]
            )
            codes = frozenset({"not_member", "wrong_state", "hash_mismatch", "unavailable"})
            yield Hostile(f"{msg.TYPE} from a non-member", _frames(msg), codes)
        elif pick == 5:  # another node's id on our socket
            msg = m.Leave(node_id=f"node-{rng.randrange(8)}", reason="spoof")
            yield Hostile("node_id of another node", _frames(msg), frozenset({"malformed"}))
        elif pick == 6:
            fields = {"v": 1, "type": "vote", "node_id": identity, "round": "one", "candidates": []}
            yield Hostile("field of the wrong type", [_header(fields)], frozenset({"malformed"}))
        elif pick == 7:
            fields = {"v": 1, "type": "commit", "node_id": identity, "round": 1}
            yield Hostile("missing fields", [_header(fields)], frozenset({"malformed"}))
        elif pick == 8:
            fields = {"v": 1, "type": "heartbeat", "node_id": identity, "evil": True}
            yield Hostile("unknown field", [_header(fields)], frozenset({"malformed"}))
        elif pick == 9:
            kind = rng.choice(["ack", "error", "state", "join_ack", "model_ack", "nope", ""])
            frames = [_header({"v": 1, "type": kind, "node_id": identity})]
            yield Hostile("not a request type", frames, DECODE_CODES)
        elif pick == 10:  # tensors that lie about their frames
            upload = m.CheckpointUpload(
                node_id=identity,
                epoch=0,
                round=1,
                hash=HASH,
                tensors=(_tensor("w", [1.0, 2.0, 3.0]),),
            )
            frames = _frames(upload)
            frames[1] = frames[1][: rng.randrange(0, len(frames[1]))]
            yield Hostile("truncated tensor frame", frames, DECODE_CODES)
        elif pick == 11:
            bad = rng.choice([math.nan, math.inf, -math.inf])
            tensors = (_tensor("w", [1.0, bad, 3.0], rng.choice(["float32", "float64"])),)
            upload = m.CheckpointUpload(
                node_id=identity, epoch=0, round=1, hash=model_hash(tensors), tensors=tensors
            )
            yield Hostile("NaN or Inf weights", _frames(upload), frozenset({"bad_tensor"}))
        elif pick == 12:
            header = {"v": 1, "type": "heartbeat", "node_id": identity, "stage": "x" * (1 << 20)}
            yield Hostile("oversized header", [_header(header)], frozenset({"too_large"}))
        elif pick == 13:
            frames = [_header({"v": 1, "type": "heartbeat", "node_id": identity})] + [b""] * 600
            yield Hostile("too many frames", frames, frozenset({"too_large"}))
        elif pick == 14:
            text = rng.choice(
                [
                    b"[" * 100_000,
                    b'{"v": 1, "v": 1, "type": "heartbeat"}',
                    b'{"v": NaN, "type": "heartbeat"}',
                    b"\xff\xfe not utf-8",
                    b"[]",
                    b"",
                    b'{"v": 1, "type": "vote", "node_id": "x", "round": 1e999, "candidates": []}',
                ]
            )
            yield Hostile("hostile JSON", [text], DECODE_CODES)
        else:  # header fields with absurd values
            fields = {
                "v": 1,
                "type": "vote",
                "node_id": identity,
                "round": rng.choice([-1, 2**70, 1.5]),
                "candidates": rng.choice([[["x", -5]], [[1, 2]], "many", [["y", 1]] * 2000]),
            }
            yield Hostile("absurd field values", [_header(fields)], frozenset({"malformed"}))


@dataclass
class FuzzResult:
    sent: int = 0
    answered: int = 0
    unexpected: list[str] = field(default_factory=list)  # replies that were not the right error
    kinds: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def fuzz_control(
    endpoint: str,
    run_id: str,
    *,
    count: int,
    seed: int,
    dealers: int = 4,
    window: int = 64,
    reply_timeout: float = 30.0,
) -> FuzzResult:
    """Send ``count`` hostile requests over ``dealers`` DEALERs, at most ``window`` unanswered
    per DEALER, and check that each is answered by exactly one ``error`` with an allowed code."""
    rng = random.Random(seed)
    result = FuzzResult()
    ctx = zmq.Context()
    socks = []
    try:
        streams = []
        pending: list[list[Hostile]] = []
        for i in range(dealers):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, f"fuzz-{seed}-{i}".encode())
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.connect(endpoint)
            socks.append(sock)
            streams.append(
                control_messages(random.Random(rng.random()), f"fuzz-{seed}-{i}", run_id)
            )
            pending.append([])
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        started = time.monotonic()
        last_reply = started
        while result.answered < count:
            for i, sock in enumerate(socks):
                while result.sent < count and len(pending[i]) < window:
                    msg = next(streams[i])
                    sock.send_multipart(msg.frames)
                    pending[i].append(msg)
                    result.kinds[msg.kind] += 1
                    result.sent += 1
            ready = dict(poller.poll(200))
            for i, sock in enumerate(socks):
                while sock in ready and sock.poll(0, zmq.POLLIN):
                    reply = sock.recv_multipart()
                    request = pending[i].pop(0)
                    result.answered += 1
                    last_reply = time.monotonic()
                    _check_reply(request, reply, result)
            if time.monotonic() - last_reply > reply_timeout:
                missing = sum(len(p) for p in pending)
                raise AssertionError(f"{missing} requests unanswered for {reply_timeout:.0f}s")
        result.seconds = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()
    return result


def _check_reply(request: Hostile, reply: list[bytes], result: FuzzResult) -> None:
    try:
        msg = decode(reply)
    except DecodeError as exc:
        result.unexpected.append(f"{request.kind}: undecodable reply ({exc})")
        return
    if not isinstance(msg, m.Error):
        result.unexpected.append(f"{request.kind}: answered {msg.TYPE}, not error")
        return
    result.codes[msg.code] += 1
    if msg.code not in request.codes or not msg.reason:
        result.unexpected.append(f"{request.kind}: {msg.code} ({msg.reason})")


@contextmanager
def _lone_dealer(endpoint: str, identity: bytes) -> Iterator[zmq.Socket]:
    """A DEALER on a context of its own, connected to ``endpoint``; both closed after."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, identity)
    try:
        sock.connect(endpoint)
        yield sock
    finally:
        sock.close(linger=0)
        ctx.term()


def oversized_is_dropped(endpoint: str, size: int, wait: float = 2.0) -> bool:
    """One message over the socket's MAXMSGSIZE: libzmq drops it (and the connection);
    True when no reply came."""
    with _lone_dealer(endpoint, b"fuzz-oversized") as sock:
        header = _header({"v": 1, "type": "heartbeat", "node_id": "fuzz-oversized"})
        sock.send_multipart([header, bytes(size)])
        return not sock.poll(int(wait * 1000), zmq.POLLIN)


def gossip_messages(
    run_id: str, round: int, trainer: str, model: tuple[TensorPayload, ...]
) -> list[Hostile]:
    """Hostile model pushes to a node in ``round``, claiming ``trainer`` (a trainer of that
    round) where they need to get past the round check; ``model``: a model of the run's
    layout (names, dtypes, shapes) to corrupt."""

    def push(tensors: tuple[TensorPayload, ...], **overrides: object) -> list[bytes]:
        fields: dict[str, object] = {
            "run_id": run_id,
            "sender": "fuzz-gossip",
            "round": round,
            "trainer": trainer,
            "hash": model_hash(tensors),
            "samples": 10,
            "tensors": tensors,
        }
        fields.update(overrides)
        return _frames(m.ModelPush(**fields))  # type: ignore[arg-type]

    first = model[0]
    count = first.numel
    reshaped = (TensorPayload(first.name, first.dtype, (count,), first.data), *model[1:])
    widened = tuple(
        TensorPayload(t.name, "float64", t.shape, struct.pack(f"<{t.numel}d", *([0.5] * t.numel)))
        for t in model
    )
    poisoned = (
        TensorPayload(
            first.name,
            first.dtype,
            first.shape,
            struct.pack(f"<{count}f", *([math.nan] + [0.0] * (count - 1))),
        ),
        *model[1:],
    )
    infinite = (
        TensorPayload(
            first.name,
            first.dtype,
            first.shape,
            struct.pack(f"<{count}f", *([0.0] * (count - 1) + [math.inf])),
        ),
        *model[1:],
    )
    truncated = push(model)
    truncated[1] = truncated[1][:-4]
    wrong_version = json.loads(push(model)[0])
    wrong_version["v"] = 7
    return [
        Hostile("random bytes", [b"\x00garbage\xff" * 7], DECODE_CODES),
        Hostile(
            "wrong protocol version",
            [_header(wrong_version), *push(model)[1:]],
            frozenset({"wrong_version"}),
        ),
        Hostile(
            "a push for another run",
            push(model, run_id=f"{run_id}-not"),
            frozenset({"wrong_run_id"}),
        ),
        Hostile(
            "a push for a round that is not open",
            push(model, round=round + 10),
            frozenset({"wrong_round"}),
        ),
        Hostile(
            "a push from a node that does not train",
            push(model, trainer="zz-puppet"),
            frozenset({"wrong_round"}),
        ),
        Hostile(
            "a trainer's model pushed by another node",
            push(model),
            frozenset({"wrong_sender", "hash_mismatch"}),  # hash_mismatch: its commit is out
        ),
        Hostile(
            "a push in a trainer's name from another connection",
            push(model, sender=trainer),
            frozenset({"wrong_sender", "hash_mismatch"}),
        ),
        Hostile(
            "a hash that does not match the weights",
            push(model, hash=HASH),
            frozenset({"hash_mismatch"}),
        ),
        Hostile("weights of the wrong shape", push(reshaped), frozenset({"bad_model"})),
        Hostile("weights of the wrong dtype", push(widened), frozenset({"bad_model"})),
        Hostile("a tensor missing", push(model[1:]), frozenset({"bad_model"})),
        Hostile("NaN weights", push(poisoned), frozenset({"bad_tensor"})),
        Hostile("Inf weights", push(infinite), frozenset({"bad_tensor"})),
        Hostile("a truncated tensor frame", truncated, frozenset({"bad_tensor"})),
    ]


def send_one(endpoint: str, frames: list[bytes], timeout: float = 10.0) -> m.Message | None:
    """Send one message from a fresh DEALER; its reply (None if none came in ``timeout``)."""
    with _lone_dealer(endpoint, b"fuzz-gossip") as sock:
        sock.send_multipart(frames)
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            return None
        return decode(sock.recv_multipart())
