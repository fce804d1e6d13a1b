"""What nodes ask the console on its control ROUTER, and the answer each request gets.

:class:`NodeRequests` is the request side of :class:`~console.server.server.ConsoleServer`:
``handle`` checks who is asking (the node id against its socket id, CURVE keys) and hands each
message to its ``_on_<type>``, which asks the coordinator, keeps the records and storage, and
returns the reply (an ack, a join ack, a model, or an error with its code and reason). The
server's loops receive the frames and send the replies; no socket is touched here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from console.config import Config
from console.coordinator import Coordinator, Outcome
from console.record.eventlog import EventLog
from console.record.records import RunRecords
from console.server.checkpoint import (
    CheckpointError,
    StoredCheckpoint,
    record_state,
    write_checkpoint,
)
from console.server.history import RoundHistory
from console.server.security import ConsoleSecurity
from transport import messages as m
from transport.codec import DecodeError, Limits, decode
from transport.fields import ErrorCode
from transport.flood import FloodGuard
from transport.net import announced_from
from transport.spec import RunSpec
from transport.state import (
    CheckpointRef,
    ClientStatus,
    ResultRef,
    RoundOutcome,
    RunSnapshot,
    RunState,
)
from transport.tensors import model_hash

log = logging.getLogger(__name__)

CONTROL_LIMITS = Limits(max_frames=512, max_header_bytes=1 << 20, max_total_bytes=1 << 30)


def rate_limited(ref: str, backoff: float) -> m.Error:
    """The one answer a flooding peer gets before it is ignored."""
    return m.Error(
        ref=ref,
        code=ErrorCode.RATE_LIMITED,
        reason=f"too many refused requests: ignored for {backoff:g} s",
    )


@dataclass(frozen=True)
class Endpoints:
    """Where nodes reach the console: told in every join reply."""

    state: str
    control: str


class NodeRequests:
    """The request handlers of the console server (its base class); see the module docstring.

    They use the server's state: its config, coordinator, records, event log, security,
    checkpoint storage and round history, and ``_after`` to log and broadcast an outcome.
    """

    config: Config
    spec_config: Config  # the config whose run spec nodes build this epoch with
    spec_version: int
    coordinator: Coordinator
    records: RunRecords
    events: EventLog
    security: ConsoleSecurity | None
    history: RoundHistory
    checkpoint_dir: Path
    data_server: str | None
    endpoints: Endpoints
    seq: int
    rejected_messages: int
    flood: FloodGuard  # per-peer refusal accounting of the control socket
    _address: str = ""  # the peer address of the request being handled
    _stored: StoredCheckpoint | None
    # fl-console ctl / attach: console.server.remote.RemoteRequests.remote_request
    remote_request: Callable[..., m.Message]

    def _after(self, outcome: Outcome, now: float, *, force_broadcast: bool = False) -> None:
        raise NotImplementedError

    def handle(
        self, identity: bytes, frames: list, size: int, *, key: str = "", address: str = ""
    ) -> list[m.Message]:
        """Decode, validate and apply one request; return the reply (always exactly one).

        ``key``: the sender's CURVE public key (with ``[security] curve``); a node id is bound
        to the key it joined with. ``address``: the IP the request came from ("" if unknown);
        a join's gossip endpoint on every interface (``0.0.0.0``) is announced at it.
        """
        now = self.clock()
        sender = identity.decode("utf-8", "replace")
        self._address = address
        try:
            msg = decode(frames, CONTROL_LIMITS)
        except DecodeError as exc:
            self.records.bytes_in(sender, size)
            return [self._reject(now, sender, "?", exc.code, exc.reason)]
        if isinstance(msg, m.OperatorRequest | m.ViewRequest):  # fl-console ctl, attach
            try:
                return [self.remote_request(msg, key=key, address=address)]
            except Exception as exc:  # an operator's request never stops the control loop
                log.exception("operator request %s failed", msg)
                return [m.Error(ref=msg.TYPE, code=ErrorCode.UNAVAILABLE, reason=f"failed: {exc}")]
        self.records.bytes_in(sender, size)
        ref = msg.TYPE
        node_id = getattr(msg, "node_id", None)
        if node_id is None:
            return [self._reject(now, sender, ref, ErrorCode.MALFORMED, f"{ref} is not a request")]
        if node_id != sender:
            return [
                self._reject(
                    now,
                    sender,
                    ref,
                    ErrorCode.MALFORMED,
                    f"node_id {node_id!r} differs from its socket id",
                )
            ]
        if isinstance(msg, m.Join):
            return [self._on_join(msg, now, key=key, address=address)]
        if self.security is not None and (why := self.security.check(sender, key)) is not None:
            return [self._reject(now, sender, ref, ErrorCode.MALFORMED, why)]
        handler = getattr(self, f"_on_{ref}", None)
        if handler is None:
            return [
                self._reject(
                    now, sender, ref, ErrorCode.MALFORMED, f"{ref} is not a control request"
                )
            ]
        return [handler(msg, now)]

    def _reject(self, now: float, sender: str, ref: str, code: str, reason: str) -> m.Error:
        """Count a refusal; log it in full only when its peer was quiet (the flood guard's
        aggregated lines, written at every tick, account for the rest)."""
        self.rejected_messages += 1
        self.records.rejected(sender)
        member = sender in self.records.clients
        verdict = self.flood.refused(sender, self._address, code, reason, now, member=member)
        if verdict.log:
            self.events.write(
                now, "reject", f"rejected {ref} from {sender}: {reason}", level="warning", code=code
            )
        if verdict.throttled is not None:
            t = verdict.throttled
            self.events.write(
                now,
                "rate_limited",
                t.describe(),
                level="warning",
                peer=t.peer,
                client_id=t.identity,
                refusals=t.refusals,
                backoff=t.backoff,
            )
        if verdict.rate_limited:
            return rate_limited(ref, self.flood.backoff)
        return m.Error(ref=ref, code=code, reason=reason)

    def _flood_reports(self, now: float, *, final: bool = False) -> None:
        """The control socket's refusals since the last line about each peer: one line each."""
        for report in self.flood.due(now, final=final):
            self.events.write(
                now,
                "reject",
                report.describe(),
                level="warning",
                code="flood",
                peer=report.peer,
                count=report.count,
                refused=report.refused,
                dropped=report.dropped,
            )

    def _answer(self, msg: m.Message, outcome: Outcome, now: float) -> m.Message:
        node_id = getattr(msg, "node_id", "?")
        if outcome.rejection is not None:
            reply = self._reject(
                now, node_id, msg.TYPE, outcome.rejection.code, outcome.rejection.reason
            )
        else:
            reply = m.Ack(ref=msg.TYPE, seq=self.seq)
        self._after(outcome, now)
        return reply

    def _on_join(self, msg: m.Join, now: float, *, key: str = "", address: str = "") -> m.Message:
        gossip = announced_from(msg.gossip_endpoint, address)
        outcome = self.coordinator.join(
            msg.node_id, msg.run_id, now, gossip_endpoint=gossip, public_key=key
        )
        if outcome.rejection is not None:
            return self._answer(msg, outcome, now)
        if self.security is not None:
            self.security.joined(msg.node_id, key)
        self.records.joined(msg.node_id, gossip, msg.pid, msg.host)
        self._after(outcome, now)
        return m.JoinAck(
            node_id=msg.node_id,
            state_endpoint=self.endpoints.state,
            seq=self.seq,
            spec=self._run_spec(),
            snapshot=self._snapshot(now),
        )

    def _run_spec(self) -> RunSpec:
        spec = self.spec_config.run_spec()
        if self.data_server is not None and spec.data_endpoint != self.data_server:
            spec = msgspec.structs.replace(spec, data_endpoint=self.data_server)
        return spec

    def _snapshot(self, now: float) -> RunSnapshot:
        """The coordinator's snapshot as nodes get it: with the data server's address."""
        snap = self.coordinator.snapshot(now)
        if self.data_server is not None or self.spec_version:
            snap = msgspec.structs.replace(
                snap, data_server=self.data_server, spec_version=self.spec_version
            )
        return snap

    def _on_heartbeat(self, msg: m.Heartbeat, now: float) -> m.Message:
        if self._finished_client(msg.node_id):
            return m.Ack(ref=msg.TYPE, seq=self.seq)  # racing the Finished broadcast: harmless
        self.records.stage(msg.node_id, msg.stage)
        outcome = self.coordinator.heartbeat(msg.node_id, now)
        if outcome.rejection is None and (
            new := self.records.gossip_refused(msg.node_id, msg.gossip_refused)
        ):
            self.events.write(
                now,
                "reject",
                f"{msg.node_id} refused {new} model push{'es' if new != 1 else ''} "
                f"({msg.gossip_refused} in all; latest: {msg.gossip_refusal or '?'})",
                level="warning",
                code="gossip",
                client_id=msg.node_id,
                count=msg.gossip_refused,
            )
        return self._answer(msg, outcome, now)

    def _finished_client(self, node_id: str) -> bool:
        """The run is over and ``node_id`` took part: its last reports are not refusals."""
        return self.coordinator.state is RunState.FINISHED and node_id in self.records.clients

    def _on_leave(self, msg: m.Leave, now: float) -> m.Message:
        return self._answer(msg, self.coordinator.leave(msg.node_id, now, msg.reason), now)

    def _on_warmed_up(self, msg: m.WarmedUp, now: float) -> m.Message:
        expected = self.coordinator.snapshot(now).checkpoint
        if expected is not None and msg.model_hash != expected.hash:
            return self._reject(
                now,
                msg.node_id,
                msg.TYPE,
                ErrorCode.HASH_MISMATCH,
                f"warmed up with model {msg.model_hash[:12]}, the checkpoint is {expected.hash[:12]}",
            )
        outcome = self.coordinator.warmed_up(msg.node_id, now, model_hash=msg.model_hash)
        return self._answer(msg, outcome, now)

    def _on_vote(self, msg: m.Vote, now: float) -> m.Message:
        outcome = self.coordinator.vote(
            msg.node_id, msg.round, list(msg.candidates), now, msg.declines
        )
        return self._answer(msg, outcome, now)

    def _on_commit(self, msg: m.Commit, now: float) -> m.Message:
        outcome = self.coordinator.commit(
            msg.node_id, msg.round, ResultRef(hash=msg.hash, samples=msg.samples), now
        )
        if outcome.rejection is None:
            self.records.committed(msg.node_id, msg.round, msg.metrics)
        return self._answer(msg, outcome, now)

    def _on_witness(self, msg: m.Witness, now: float) -> m.Message:
        outcome = self.coordinator.witness(msg.node_id, msg.round, dict(msg.attestations), now)
        return self._answer(msg, outcome, now)

    def _on_aggregate(self, msg: m.Aggregate, now: float) -> m.Message:
        outcome = self.coordinator.report_aggregate(msg.node_id, msg.round, msg.hash, now)
        if outcome.rejection is not None and self._late_final_aggregate(msg):
            self.records.aggregated(msg.node_id, msg.round, msg.hash, msg.metrics)
            self.events.write(
                now,
                "aggregate_reported",
                f"round {msg.round}: {msg.node_id} aggregated to {msg.hash[:12]} (after the end)",
                round=msg.round,
                client_id=msg.node_id,
                hash=msg.hash,
            )
            return m.Ack(ref=msg.TYPE, seq=self.seq)  # kept, not refused: the run just ended
        if outcome.rejection is None:
            self.records.aggregated(msg.node_id, msg.round, msg.hash, msg.metrics)
        return self._answer(msg, outcome, now)

    def _late_final_aggregate(self, msg: m.Aggregate) -> bool:
        """A report on the last round that lost the race with the run's end.

        The checkpoint upload ends the last Cooldown at once, so the other nodes' aggregates of
        the final round often arrive just after Finished. The coordinator refuses them (Finished
        is terminal), but their evaluation of the final model still belongs in the records.
        """
        if self.coordinator.state is not RunState.FINISHED:
            return False
        last = self.coordinator.snapshot(self.clock()).current
        return (
            last is not None
            and last.round == msg.round
            and last.outcome is RoundOutcome.ACCEPTED
            and msg.node_id in self.records.clients
            and msg.node_id not in self.records.record(msg.round).aggregates
        )

    def _on_metrics(self, msg: m.Metrics, now: float) -> m.Message:
        if msg.node_id in self.records.clients:  # a client that joined, not a stranger
            self.records.metrics(msg.node_id, msg.round, msg.metrics)
        if self._finished_client(msg.node_id):  # the last round's metrics, after the end
            return m.Ack(ref=msg.TYPE, seq=self.seq)
        return self._answer(msg, self.coordinator.heartbeat(msg.node_id, now), now)

    def _on_model_request(self, msg: m.ModelRequest, now: float) -> m.Message:
        known = self.coordinator.heartbeat(msg.node_id, now)
        if known.rejection is not None:  # the weights go to the run's clients only
            return self._answer(msg, known, now)
        stored = self._stored
        if stored is None:
            return self._reject(
                now,
                msg.node_id,
                msg.TYPE,
                ErrorCode.UNAVAILABLE,
                "no checkpoint yet: build the initial model from the run seed",
            )
        try:
            payloads = stored.payloads()
        except CheckpointError as exc:
            return self._reject(now, msg.node_id, msg.TYPE, ErrorCode.UNAVAILABLE, str(exc))
        return m.ModelReply(round=stored.round, hash=stored.hash, tensors=payloads)

    def _on_spec_request(self, msg: m.SpecRequest, now: float) -> m.Message:
        """The run spec nodes build this epoch with, and its version (live settings)."""
        client = self.coordinator.snapshot(now).client(msg.node_id)
        if client is None or client.status not in (ClientStatus.PENDING, ClientStatus.ACTIVE):
            return self._reject(
                now, msg.node_id, msg.TYPE, ErrorCode.NOT_MEMBER, "join the run first"
            )
        return m.SpecReply(version=self.spec_version, spec=self._run_spec())

    def _on_checkpoint_upload(self, msg: m.CheckpointUpload, now: float) -> m.Message:
        snap = self.coordinator.snapshot(now)
        if snap.checkpoint_uploader != msg.node_id:
            return self._reject(
                now,
                msg.node_id,
                msg.TYPE,
                ErrorCode.WRONG_STATE,
                "no checkpoint upload was asked of you",
            )
        actual = model_hash(msg.tensors)
        if actual != msg.hash:
            return self._reject(
                now,
                msg.node_id,
                msg.TYPE,
                ErrorCode.HASH_MISMATCH,
                "uploaded weights do not match their hash",
            )
        agreed = self.records.agreed_aggregate(msg.round)
        if agreed is not None and agreed != actual:
            return self._reject(
                now,
                msg.node_id,
                msg.TYPE,
                ErrorCode.HASH_MISMATCH,
                f"uploaded model {actual[:12]} differs from the aggregate the nodes agree on "
                f"({agreed[:12]})",
            )
        ref = CheckpointRef(epoch=msg.epoch, round=msg.round, hash=actual)
        try:
            stored = write_checkpoint(
                self.checkpoint_dir,
                epoch=msg.epoch,
                round=msg.round,
                tensors=msg.tensors,
                state=self.history.state(self.coordinator),
            )
        except (OSError, CheckpointError) as exc:
            self.events.write(now, "checkpoint", f"checkpoint write failed: {exc}", level="error")
            return self._reject(
                now, msg.node_id, msg.TYPE, ErrorCode.UNAVAILABLE, f"write failed: {exc}"
            )
        outcome = self.coordinator.checkpoint_saved(ref, now)
        if outcome.rejection is None:
            # The state a --resume restores is the one after the checkpoint counted: the
            # next epoch's number, the checkpoint itself recorded.
            state = self.history.state(self.coordinator)
            try:
                self._stored = record_state(self.checkpoint_dir, stored, state)
            except OSError as exc:  # the directory gone or replaced meanwhile: say so, go on
                self.events.write(
                    now,
                    "checkpoint",
                    f"checkpoint of round {msg.round} written but not recorded as the latest "
                    f"({exc}): a --resume now starts from the one before",
                    level="error",
                )
        return self._answer(msg, outcome, now)
