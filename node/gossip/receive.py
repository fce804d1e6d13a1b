"""The ROUTER side of the gossip service: judging pushes, answering fetches."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import torch
import zmq
import zmq.asyncio

from node.gossip.received import ReceivedModel
from node.gossip.stats import GossipStats
from node.security import NodeSecurity
from node.weights import WeightsError, from_payloads
from transport import messages as m
from transport.codec import DecodeError, Limits, decode, encode
from transport.fields import ErrorCode
from transport.flood import YIELD_EVERY, Admit, FloodGuard
from transport.sockets import peer_address, peer_key
from transport.tensors import TensorPayload, model_hash

log = logging.getLogger(__name__)


class GossipRouter:
    """Receives pushes and fetches on the node's gossip ROUTER (part of ``GossipService``).

    What it keeps goes through the service's ``store``; an update with a route is passed on by
    the service's ``_forward``; a fetch is answered with the dealers' ``_push_message``.
    """

    run_id: str
    inbox: dict[int, dict[str, ReceivedModel]]
    stats: GossipStats
    expects: Callable[[int, str], str | None]
    committed: Callable[[int, str], str | None]
    reference: dict[str, torch.Tensor] | None
    decoder: Callable[[tuple[TensorPayload, ...]], dict[str, torch.Tensor]] | None
    fanout: int
    is_live: Callable[[str], bool]
    _security: NodeSecurity | None
    _limits: Limits
    _router: zmq.asyncio.Socket | None
    flood: FloodGuard
    _peer: tuple[str, str] | None

    async def _serve(self) -> None:
        assert self._router is not None
        # after a drop, the next waiting message is read synchronously (no asyncio future)
        now_or_never = zmq.Socket.shadow(self._router.underlying)
        received = 0
        frames: list[zmq.Frame] | None = None
        while True:
            if frames is None:
                frames = await self._router.recv_multipart(copy=False)
            received += 1
            if received % YIELD_EVERY == 0:  # a ready recv never yields: let the rest run
                await asyncio.sleep(0)
            identity, body = frames[0], frames[1:]
            frames = None
            sender = identity.bytes.decode("utf-8", "replace")
            address = peer_address(identity)
            # a stranger in back-off is dropped unread; live members never are (flood.py)
            admit = self.flood.admit(sender, address, self.is_live(sender), time.monotonic())
            if admit is Admit.DROP:
                try:
                    frames = now_or_never.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    frames = None
                continue
            size = sum(len(f.buffer) for f in body)
            if admit is Admit.TELL:
                reply: m.Message = _rate_limited("?", self.flood.backoff)
                round = None
            else:
                self._peer = (sender, address)
                try:
                    reply, round = self._receive(identity, body)
                finally:
                    self._peer = None
            if round is not None:
                self.stats.count(round, down=size)
            else:
                self.stats.bytes_received += size
            reply_frames = encode(reply)
            try:
                await self._router.send_multipart([identity.bytes, *reply_frames], copy=False)
            except zmq.ZMQError as exc:
                log.debug("gossip reply not delivered: %s", exc)
                continue
            if isinstance(reply, m.ModelPush):  # a fetch answered with the update
                self.stats.count(reply.round, up=sum(len(memoryview(f)) for f in reply_frames))

    def _receive(self, identity: zmq.Frame, frames: list) -> tuple[m.Message, int | None]:
        """The reply to one received message, and the round it belongs to (None: unknown)."""
        try:
            msg = decode(frames, self._limits)
        except DecodeError as exc:
            return self._refuse("?", exc.code, exc.reason), None
        if isinstance(msg, m.ModelFetch):
            return self._answer_fetch(identity, msg), msg.round
        if not isinstance(msg, m.ModelPush):
            return self._refuse(
                msg.TYPE, ErrorCode.MALFORMED, f"{msg.TYPE} is not a gossip message"
            ), None
        return self.take(msg, identity), msg.round

    def take(self, msg: m.ModelPush, identity: zmq.Frame | None = None) -> m.Message:
        """Check a push (``identity``: its connection) or a fetch's answer (None) and keep its
        update; the reply for its sender.

        The content is judged before the sender (what a refusal names does not depend on who
        sent it): run, round, hashes, the codec's checks; then that the connection is the
        sender's, and that a relay is a live member passing on exactly what was committed.
        """
        if msg.run_id != self.run_id:
            return self._refuse(msg.TYPE, ErrorCode.WRONG_RUN_ID, f"run {msg.run_id!r} is not ours")
        why = self.expects(msg.round, msg.trainer)
        if why is not None:
            return self._refuse(msg.TYPE, ErrorCode.WRONG_ROUND, why)
        if model_hash(msg.tensors) != msg.hash:
            return self._refuse(
                msg.TYPE, ErrorCode.HASH_MISMATCH, "the payload does not match the announced hash"
            )
        committed = self.committed(msg.round, msg.trainer)
        if committed is not None and committed != msg.hash:
            return self._refuse(
                msg.TYPE,
                ErrorCode.HASH_MISMATCH,
                f"{msg.trainer} committed {committed[:12]} for round {msg.round}, "
                f"not {msg.hash[:12]}",
            )
        if self.reference is None:
            return self._refuse(msg.TYPE, ErrorCode.UNAVAILABLE, "model not built yet")
        try:
            update = self.decode_payloads(msg.tensors)
        except WeightsError as exc:
            return self._refuse(msg.TYPE, ErrorCode.BAD_MODEL, str(exc))
        if identity is not None:
            why = self._not_from_sender(identity, msg.sender)
            if why is not None:
                return self._refuse(msg.TYPE, ErrorCode.WRONG_SENDER, why)
        if msg.sender != msg.trainer:
            if not self.is_live(msg.sender):
                return self._refuse(
                    msg.TYPE,
                    ErrorCode.WRONG_SENDER,
                    f"{msg.sender} relayed {msg.trainer}'s update but is not a live member",
                )
            if committed is None:
                # A relay passes on only what the trainer committed; it retries once the
                # commit is broadcast (a race, not a fault: not counted as a refusal).
                return m.Error(
                    ref=msg.TYPE,
                    code=ErrorCode.UNAVAILABLE,
                    reason=f"{msg.sender} relayed {msg.trainer}'s update before its commit "
                    "reached us",
                )
        self._receipt(msg.round, msg.trainer)
        held = self.inbox.get(msg.round, {}).get(msg.trainer)
        if held is not None and held.hash == msg.hash:
            self.stats.duplicates += 1
            return m.ModelAck(round=msg.round, trainer=msg.trainer, hash=msg.hash)
        model = ReceivedModel(
            msg.trainer, msg.hash, msg.samples, update, tuple(msg.tensors), tuple(msg.route)
        )
        self.store(msg.round, model)
        self.stats.pushes_received += 1
        if msg.route and self.fanout > 0:
            self._spawn(self._forward(msg.round, model))
        return m.ModelAck(round=msg.round, trainer=msg.trainer, hash=msg.hash)

    def decode_payloads(self, payloads: tuple[TensorPayload, ...]) -> dict[str, torch.Tensor]:
        """A push's payloads as the update to aggregate (:class:`WeightsError` when bad)."""
        if self.decoder is not None:
            return self.decoder(payloads)
        assert self.reference is not None
        return from_payloads(payloads, self.reference)

    def _receipt(self, round: int, trainer: str) -> None:
        key = (round, trainer)
        self.stats.receipts[key] = self.stats.receipts.get(key, 0) + 1

    def _answer_fetch(self, identity: zmq.Frame, msg: m.ModelFetch) -> m.Message:
        why = self._not_from_sender(identity, msg.sender)
        if why is not None:
            return self._refuse(msg.TYPE, ErrorCode.WRONG_SENDER, why)
        if msg.run_id != self.run_id:
            return self._refuse(msg.TYPE, ErrorCode.WRONG_RUN_ID, f"run {msg.run_id!r} is not ours")
        if not self.is_live(msg.sender):
            return self._refuse(
                msg.TYPE, ErrorCode.NOT_MEMBER, f"{msg.sender} is not a live member"
            )
        held = self.inbox.get(msg.round, {}).get(msg.trainer)
        if held is None or not held.payloads:
            return m.Error(
                ref=msg.TYPE,
                code=ErrorCode.UNAVAILABLE,
                reason=f"no update of {msg.trainer} for round {msg.round} here (yet)",
            )
        return self._push_message(msg.round, held, route=())

    def _not_from_sender(self, identity: zmq.Frame, sender: str) -> str | None:
        """Why the connection did not belong to ``sender``, or None when it did."""
        if identity.bytes != sender.encode():
            return f"the connection of {identity.bytes[:64]!r} sent in {sender}'s name"
        if self._security is not None:
            key = peer_key(identity)
            expected = self._security.peer_keys.get(sender)
            if expected is None or key.encode("ascii", "replace") != expected:
                return f"the connection's CURVE key is not {sender}'s in the broadcast"
        return None

    def _refuse(self, ref: str, code: str, reason: str) -> m.Error:
        """Count a refusal; logged in full only when its peer was quiet (aggregated lines,
        every few seconds, account for the rest: :meth:`_report_floods`)."""
        self.stats.rejected += 1
        self.stats.rejections = (self.stats.rejections + [f"{code}: {reason}"])[-20:]
        if self._peer is None:  # the answer to our own fetch: not a peer's flood
            log.warning("rejected gossip %s: %s", ref, reason)
            return m.Error(ref=ref, code=code, reason=reason)
        sender, address = self._peer
        verdict = self.flood.refused(
            sender, address, code, reason, time.monotonic(), member=self.is_live(sender)
        )
        if verdict.log:
            log.warning("rejected gossip %s from %s: %s", ref, sender, reason)
        if verdict.throttled is not None:
            log.warning("gossip: %s", verdict.throttled.describe())
        if verdict.rate_limited:
            return _rate_limited(ref, self.flood.backoff)
        return m.Error(ref=ref, code=code, reason=reason)

    async def _report_floods(self) -> None:
        """One aggregated line per flooding peer per interval."""
        while True:
            await asyncio.sleep(self.flood.report_every / 2)
            self._report_due()

    def _report_due(self, *, final: bool = False) -> None:
        for report in self.flood.due(time.monotonic(), final=final):
            log.warning("rejected gossip: %s", report.describe())


def _rate_limited(ref: str, backoff: float) -> m.Error:
    return m.Error(
        ref=ref,
        code=ErrorCode.RATE_LIMITED,
        reason=f"too many refused messages: ignored for {backoff:g} s",
    )
