"""A member the test scripts by hand: it takes part in the run and sends hostile requests.

Some refusals only a member can provoke: a witness report from a member that is not a witness,
for another round, or twice; a second vote or warmed_up; a commit from a member that does not
train; a checkpoint upload nobody asked for. The puppet joins over a raw DEALER, follows the
state PUB and plays its part so the run does not wait on it: it warms up, votes (naming only
real nodes, with weights that outrank theirs, so it never trains), reports as a witness when
elected (attesting the trainers' commits) and acks model pushes on its own gossip ROUTER.
Around that it sends one hostile request of each kind per round and records the replies.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import zmq

from transport import messages as m
from transport.codec import decode, encode
from transport.state import ClientStatus, RoundOutcome, RunSnapshot, RunState
from transport.tensors import TensorPayload, model_hash


class NoReply(Exception):
    """The console did not answer (it exits as soon as the run is Finished)."""


HEAVY = 10**15  # a vote weight no real node's vote (<= 1000) can outrank
ANY_HASH = "cd" * 32


@dataclass
class Refusal:
    what: str
    # The codes the console may answer with: the first is what the request provokes; the
    # others what it provokes when the round moved on meanwhile (e.g. the puppet's own report
    # decided the round, so a second one finds it decided rather than a duplicate).
    expected: tuple[str, ...]
    reply: str  # what it answered: "error:<code>: <reason>" or the reply type


@dataclass
class PuppetLog:
    refusals: list[Refusal] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)  # its own protocol requests that were acked
    errors: list[str] = field(default_factory=list)  # its own protocol requests refused
    epochs: set[int] = field(default_factory=set)  # epochs it was an active member of
    witnessed: list[int] = field(default_factory=list)  # rounds it reported as a witness in


class Puppet(threading.Thread):
    def __init__(self, control: str, state: str, run_id: str, real_nodes: list[str]) -> None:
        super().__init__(name="puppet", daemon=True)
        self.name_ = "zz-puppet"  # sorts last: a real witness is preferred as uploader
        self.control = control
        self.state_endpoint = state
        self.run_id = run_id
        self.real_nodes = sorted(real_nodes)
        self.log = PuppetLog()
        self.snapshot: RunSnapshot | None = None
        self.stop_event = threading.Event()
        self.failure: BaseException | None = None
        self._done: set[tuple[str, object]] = set()  # (what, key) already sent

    # ------------------------------------------------------------------ thread

    def run(self) -> None:
        ctx = zmq.Context()
        try:
            self._serve(ctx)
        except BaseException as exc:  # noqa: BLE001 - reported to the test by stop()
            self.failure = exc
        finally:
            ctx.destroy(linger=0)

    def stop(self) -> PuppetLog:
        self.stop_event.set()
        self.join(15)
        if self.failure is not None:
            raise AssertionError(f"the puppet failed: {self.failure!r}") from self.failure
        return self.log

    def _serve(self, ctx: zmq.Context) -> None:
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.setsockopt(zmq.ROUTING_ID, self.name_.encode())
        self.dealer.connect(self.control)
        self.gossip = ctx.socket(zmq.ROUTER)
        self.gossip.setsockopt(zmq.LINGER, 0)
        self.gossip.bind("tcp://127.0.0.1:0")
        gossip_endpoint = self.gossip.getsockopt_string(zmq.LAST_ENDPOINT)
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self.state_endpoint)
        reply = self._request(
            m.Join(run_id=self.run_id, node_id=self.name_, gossip_endpoint=gossip_endpoint)
        )
        assert isinstance(reply, m.JoinAck), reply
        self.snapshot = reply.snapshot
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(self.gossip, zmq.POLLIN)
        self._beat = 0.0
        while not self.stop_event.is_set():
            try:
                self._step(poller, sub)
            except NoReply as exc:  # the run is over: wait to be stopped
                self.log.errors.append(f"no reply to {exc}")
                self.stop_event.wait(60)
                return

    def _step(self, poller: zmq.Poller, sub: zmq.Socket) -> None:
        ready = dict(poller.poll(30))
        if sub in ready:
            while sub.poll(0, zmq.POLLIN):
                msg = decode(sub.recv_multipart())
                if isinstance(msg, m.StateUpdate):
                    self.snapshot = msg.snapshot
        if self.gossip in ready:
            while self.gossip.poll(0, zmq.POLLIN):
                self._ack_push(self.gossip.recv_multipart())
        if time.monotonic() - self._beat > 0.2:
            self._beat = time.monotonic()
            self._own(m.Heartbeat(node_id=self.name_, stage="puppet"), "heartbeat")
        if self.snapshot is not None and self.snapshot.state is not RunState.FINISHED:
            self._act(self.snapshot)

    # ------------------------------------------------------------------ wire

    def _request(self, msg: m.Message) -> m.Message:
        self.dealer.send_multipart(encode(msg), copy=False)
        if not self.dealer.poll(5_000, zmq.POLLIN):
            raise NoReply(msg.TYPE)
        return decode(self.dealer.recv_multipart())

    def _own(self, msg: m.Message, what: str) -> bool:
        reply = self._request(msg)
        if isinstance(reply, m.Error):
            self.log.errors.append(f"{what}: {reply.code}: {reply.reason}")
            return False
        self.log.acked.append(what)
        return True

    def _hostile(self, msg: m.Message, what: str, expected: tuple[str, ...], key: object) -> None:
        if (what, key) in self._done:
            return
        self._done.add((what, key))
        reply = self._request(msg)
        text = f"error:{reply.code}: {reply.reason}" if isinstance(reply, m.Error) else reply.TYPE
        self.log.refusals.append(Refusal(what, expected, text))

    def _ack_push(self, frames: list[bytes]) -> None:
        identity, body = frames[0], frames[1:]
        push = decode(body)
        if isinstance(push, m.ModelPush):
            ack = m.ModelAck(round=push.round, trainer=push.trainer, hash=push.hash)
            self.gossip.send_multipart([identity, *encode(ack)], copy=False)

    # ------------------------------------------------------------------ behaviour

    def _once(self, what: str, key: object) -> bool:
        if (what, key) in self._done:
            return False
        self._done.add((what, key))
        return True

    def _vote(self, round: int) -> None:
        if self._once("vote", round):
            candidates = tuple((n, HEAVY - i) for i, n in enumerate(self.real_nodes))
            self._own(m.Vote(node_id=self.name_, round=round, candidates=candidates), "vote")
            again = m.Vote(node_id=self.name_, round=round, candidates=candidates)
            self._hostile(
                again, "a second vote for the same round", ("duplicate", "wrong_round"), round
            )

    def _act(self, snap: RunSnapshot) -> None:
        me = snap.client(self.name_)
        if me is None or me.status is not ClientStatus.ACTIVE:
            return
        self.log.epochs.add(snap.epoch)
        if snap.state is RunState.WARMUP and self._once("warmup", snap.phase_started):
            self._vote(snap.round + 1)
            digest = snap.checkpoint.hash if snap.checkpoint is not None else ANY_HASH
            if snap.checkpoint is not None:
                self._hostile(
                    m.WarmedUp(node_id=self.name_, epoch=snap.epoch, model_hash=ANY_HASH),
                    "warmed_up with a model that is not the checkpoint",
                    ("hash_mismatch",),
                    snap.phase_started,
                )
            warmed = m.WarmedUp(node_id=self.name_, epoch=snap.epoch, model_hash=digest)
            self._own(warmed, "warmed_up")
            self._hostile(warmed, "warmed_up twice", ("duplicate",), snap.phase_started)
            return
        current = snap.current
        if snap.state not in (RunState.ROUND_TRAIN, RunState.ROUND_WITNESS) or current is None:
            return
        r = current.round
        if snap.checkpoint_uploader != self.name_:
            tensors = (TensorPayload("w", "float32", (1,), b"\0\0\0\0"),)
            upload = m.CheckpointUpload(
                node_id=self.name_,
                epoch=snap.epoch,
                round=r,
                hash=model_hash(tensors),
                tensors=tensors,
            )
            self._hostile(upload, "a checkpoint upload nobody asked for", ("wrong_state",), r)
        if current.outcome is RoundOutcome.OPEN and snap.state is RunState.ROUND_TRAIN:
            self._hostile(
                m.Witness(node_id=self.name_, round=r + 7, attestations={}),
                "a witness report for another round",
                ("wrong_round", "wrong_state"),
                r,
            )
            self._hostile(
                m.Commit(node_id=self.name_, round=r, hash=ANY_HASH, samples=1, metrics={}),
                "a commit from a member that does not train",
                ("not_member", "wrong_state"),
                r,
            )
            if self.name_ not in current.witnesses:
                self._hostile(
                    m.Witness(node_id=self.name_, round=r, attestations={}),
                    "a witness report from a member that is no witness",
                    ("not_witness", "wrong_state"),
                    r,
                )
            else:
                live = {c.id for c in snap.clients if c.status is ClientStatus.ACTIVE}
                trainers = [t for t in current.train_set if t in live]
                late = snap.deadline is not None and snap.deadline - snap.now < 1.0
                if (all(t in current.commits for t in trainers) or late) and self._once(
                    "witness", r
                ):
                    attested = {t: ref.hash for t, ref in current.commits.items()}
                    report = m.Witness(node_id=self.name_, round=r, attestations=attested)
                    if self._own(report, "witness"):
                        self.log.witnessed.append(r)
                    self._hostile(
                        report, "a second witness report", ("duplicate", "wrong_state"), r
                    )
        follows = (
            not snap.pending_pause
            and snap.epoch_rounds < snap.rounds_per_epoch
            and snap.accepted_rounds + 1 < snap.total_rounds
        )
        if follows and (
            current.outcome is not RoundOutcome.OPEN or self.name_ not in current.witnesses
        ):
            self._vote(r + 1)
        self._hostile(
            m.Aggregate(node_id=self.name_, round=r + 50, hash=ANY_HASH, metrics={}),
            "an aggregate for a round that did not happen",
            ("wrong_round",),
            r,
        )
