"""What the console remembers about clients and rounds beyond the coordinator's state.

The coordinator decides; these records keep the figures an operator and the summary want:
bytes, stages, losses and accuracies, update norms, aggregate hashes. They are fed by the
server and turned into the console's rows and the run summary.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from console.record.settled import Reports, SettledRounds
from console.record.view import ClientRow, RoundRow, WitnessRow
from transport.state import ClientStatus, RoundOutcome, RoundView, RunSnapshot, RunState


@dataclass
class ClientRecord:
    id: str
    address: str = ""
    pid: int = 0
    host: str = ""
    stage: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    rejected: int = 0
    rounds_trained: int = 0
    last_loss: float | None = None
    last_accuracy: float | None = None
    update_norm: float | None = None
    node_bytes_sent: int = 0  # what the node says it sent and received peer to peer
    node_bytes_received: int = 0
    gossip_refused: int = 0  # model pushes the node's gossip ROUTER refused (it says)
    metrics_round: int = -1  # the newest round the node reported metrics for
    round_bytes_up: int | None = None  # gossip bytes of that round (None: not reported)
    round_bytes_down: int | None = None
    compression_ratio: float | None = None  # of its last encoded update (trainers only)
    update_bytes: int | None = None  # size of its last encoded update (trainers only)
    duplicates: int | None = None  # running counts: pushes of an update it already held,
    fetches: int | None = None  # and updates it fetched because a relay on its path died
    epsilon: float | None = None  # [privacy] dp: the most the node said it has spent

    def spent(self, epsilon: float | None) -> None:
        """A reported epsilon; it only grows (a late report of an older round changes nothing)."""
        if epsilon is not None and math.isfinite(epsilon):
            self.epsilon = max(epsilon, self.epsilon or 0.0)


@dataclass
class RoundRecord:
    commits: dict[str, dict[str, float]] = field(default_factory=dict)  # trainer -> metrics
    aggregates: dict[str, tuple[str, dict[str, float]]] = field(default_factory=dict)
    node_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    version: int = 0  # bumped on every change, so a round's row is rebuilt only when it changes

    def round_bytes_up(self) -> dict[str, int]:
        """Per node that reported it, the gossip bytes it sent this round."""
        out: dict[str, int] = {}
        for node, metrics in self.node_metrics.items():
            sent = reported_count(metrics.get("round_bytes_up"))
            if sent is not None:
                out[node] = sent
        return out

    def busiest_uplink(self) -> tuple[str, int] | None:
        """The node that sent the most gossip bytes this round, and how many (the first id on
        a tie); None when no node reported its round's bytes."""
        sent = self.round_bytes_up()
        if not sent:
            return None
        node = max(sorted(sent), key=sent.__getitem__)
        return node, sent[node]

    def gossip_bytes(self) -> int | None:
        """Gossip bytes sent this round, summed over the nodes that reported them."""
        sent = self.round_bytes_up()
        return sum(sent.values()) if sent else None

    def learning_rate(self) -> float | None:
        """The learning rate the round's trainers reported training at (the schedule's rate
        for the round; the lowest id's when they differ), or None before any commit."""
        for _, metrics in sorted(self.commits.items()):
            rate = metrics.get("learning_rate")
            if rate is not None and math.isfinite(rate):
                return rate
        return None

    def global_metrics(self) -> dict[str, float]:
        """Mean over nodes of what they measured on their aggregate (all should agree)."""
        out: dict[str, float] = {}
        keys = {k for _, metrics in self.aggregates.values() for k in metrics}
        for key in sorted(keys):
            values = [mt[key] for _, mt in self.aggregates.values() if key in mt]
            if values:
                out[key] = sum(values) / len(values)
        return out


class RunRecords:
    def __init__(self) -> None:
        self.clients: dict[str, ClientRecord] = {}
        self.rounds: dict[int, RoundRecord] = defaultdict(RoundRecord)
        # round -> (the coordinator's view, the record's version, the row built from them):
        # decided rounds keep their view and record, so a refresh rebuilds only open rounds.
        self._rows: dict[int, tuple[RoundView, int, RoundRow]] = {}
        # Rounds settled long ago (:meth:`settle`): ``rounds`` and ``_rows`` no longer hold them.
        self.settled = SettledRounds()

    def _client(self, client_id: str) -> ClientRecord:
        record = self.clients.get(client_id)
        if record is None:
            record = self.clients[client_id] = ClientRecord(client_id)
        return record

    # fed by the server -------------------------------------------------------------

    def joined(self, client_id: str, address: str, pid: int, host: str) -> None:
        record = self._client(client_id)
        record.address, record.pid, record.host = address, pid, host

    def bytes_in(self, client_id: str, size: int) -> None:
        if client_id in self.clients:
            self.clients[client_id].bytes_in += size

    def bytes_out(self, client_id: str, size: int) -> None:
        if client_id in self.clients:
            self.clients[client_id].bytes_out += size

    def rejected(self, client_id: str) -> None:
        if client_id in self.clients:
            self.clients[client_id].rejected += 1

    def gossip_refused(self, client_id: str, count: int) -> int:
        """Record the node's running count of refused model pushes; returns how many are new
        since it last said (a restarted node counts from 0 again)."""
        record = self.clients.get(client_id)
        if record is None:
            return 0
        new = count - record.gossip_refused if count >= record.gossip_refused else count
        record.gossip_refused = count
        return new

    def stage(self, client_id: str, stage: str) -> None:
        if stage and client_id in self.clients:
            self.clients[client_id].stage = stage

    def committed(self, client_id: str, round: int, metrics: dict[str, float]) -> None:
        record = self._client(client_id)
        record.rounds_trained += 1
        record.last_loss = metrics.get("train_loss", record.last_loss)
        record.spent(metrics.get("epsilon"))
        if round <= self.settled_through:
            return  # a report of a round settled long ago: its figures are final
        entry = self.rounds[round]
        entry.commits[client_id] = dict(metrics)
        entry.version += 1

    def aggregated(
        self, client_id: str, round: int, model_hash: str, metrics: dict[str, float]
    ) -> None:
        record = self._client(client_id)
        record.last_accuracy = metrics.get("accuracy", record.last_accuracy)
        if "test_loss" in metrics:
            record.last_loss = metrics["test_loss"]
        if round <= self.settled_through:
            return
        entry = self.rounds[round]
        entry.aggregates[client_id] = (model_hash, dict(metrics))
        entry.version += 1

    def metrics(self, client_id: str, round: int, metrics: dict[str, float]) -> None:
        record = self._client(client_id)
        if round > self.settled_through:
            entry = self.rounds[round]
            entry.node_metrics[client_id] = dict(metrics)
            entry.version += 1
        if "update_norm" in metrics:
            record.update_norm = metrics["update_norm"]
        record.spent(metrics.get("epsilon"))
        record.node_bytes_sent = int(metrics.get("bytes_sent", record.node_bytes_sent))
        record.node_bytes_received = int(metrics.get("bytes_received", record.node_bytes_received))
        if round < record.metrics_round:
            return  # a late report of an older round: the newer figures stay
        record.metrics_round = round
        record.round_bytes_up = reported_count(metrics.get("round_bytes_up"))
        record.round_bytes_down = reported_count(metrics.get("round_bytes_down"))
        # Only trainers encode an update, and old nodes report none of these: what a report
        # leaves out keeps its last figure.
        ratio = metrics.get("compression_ratio")
        if ratio is not None and math.isfinite(ratio) and ratio > 0:
            record.compression_ratio = float(ratio)
        record.update_bytes = _newer(metrics.get("update_bytes"), record.update_bytes)
        record.duplicates = _newer(metrics.get("duplicates"), record.duplicates)
        record.fetches = _newer(metrics.get("fetches"), record.fetches)

    def worst_epsilon(self) -> float | None:
        """The most privacy any node said it has spent (None: no node reported any)."""
        spent = [c.epsilon for c in self.clients.values() if c.epsilon is not None]
        return max(spent) if spent else None

    def on_event(self, event: object, now: float) -> None:
        """Hook for coordinator events (nothing to keep yet beyond the event log)."""

    def agreed_aggregate(self, round: int) -> str | None:
        """The aggregate hash most nodes reported for ``round`` (None when none did)."""
        hashes = Counter(h for h, _ in self.record(round).aggregates.values())
        if not hashes:
            return None
        return hashes.most_common(1)[0][0]

    # settled rounds ----------------------------------------------------------------

    @property
    def settled_through(self) -> int:
        """Every round numbered up to this one is settled."""
        return self.settled.through

    def settle(self, view: RoundView) -> None:
        """Keep decided round ``view`` (newer than :attr:`settled_through`) in compact form: its
        row as it is now, and its record compressed. The server settles a round once it is
        older than the rounds that may still change (late aggregates, a checkpoint's)."""
        if view.round <= self.settled.through:
            return
        row = self.round_row(view)
        record = self.rounds.pop(view.round, None)
        self._rows.pop(view.round, None)
        reports = (
            None
            if record is None
            else Reports(record.commits, record.aggregates, record.node_metrics)
        )
        self.settled.add(row, reports)

    def record(self, round: int) -> RoundRecord:
        """What the nodes reported for ``round`` (a settled one decoded; an empty record for a
        round nobody reported on). Read-only: the records are fed by the methods above."""
        reports = self.settled.reports(round)
        if reports is not None:
            return RoundRecord(reports.commits, reports.aggregates, reports.node_metrics)
        return self.rounds.get(round) or RoundRecord()

    # read by the console and the summary --------------------------------------------

    def client_rows(self, snap: RunSnapshot) -> tuple[ClientRow, ...]:
        current = snap.current
        rows = []
        for view in snap.clients:
            record = self.clients.get(view.id) or ClientRecord(view.id)
            role = ""
            if current is not None and current.ended is None:
                parts = []
                if view.id in current.train_set:
                    parts.append("trainer")
                if view.id in current.witnesses:
                    parts.append("witness")
                role = "+".join(parts)
            live = view.status in (ClientStatus.PENDING, ClientStatus.ACTIVE)
            stage = record.stage if live else view.status.value
            if live and snap.state is RunState.FINISHED:
                stage = "finished"  # the run is over: "pending" would suggest a next epoch
            rows.append(
                ClientRow(
                    id=view.id,
                    address=view.gossip_endpoint or record.address,
                    status=view.status.value,
                    stage=stage,
                    role=role,
                    heartbeat_age=max(0.0, snap.now - view.last_seen)
                    if live and stage != "finished"
                    else None,  # no heartbeat is due after the run
                    rounds_trained=record.rounds_trained,
                    last_loss=record.last_loss,
                    last_accuracy=record.last_accuracy,
                    update_norm=record.update_norm,
                    bytes_in=record.bytes_in,
                    bytes_out=record.bytes_out,
                    rejected=record.rejected,
                    gossip_refused=record.gossip_refused,
                    drop_reason=view.drop_reason,
                    round_bytes_up=record.round_bytes_up,
                    round_bytes_down=record.round_bytes_down,
                    compression_ratio=record.compression_ratio,
                    epsilon=record.epsilon,
                )
            )
        return tuple(rows)

    def round_row(self, view: RoundView) -> RoundRow:
        """The console's row for ``view``; the same object while neither view nor record change."""
        settled = self.settled.row(view.round)
        if settled is not None:
            return settled
        record = self.rounds.get(view.round)
        version = -1 if record is None else record.version
        cached = self._rows.get(view.round)
        if cached is not None and cached[0] is view and cached[1] == version:
            return cached[2]
        row = self._build_row(view, record or RoundRecord())
        self._rows[view.round] = (view, version, row)
        return row

    def _build_row(self, view: RoundView, record: RoundRecord) -> RoundRow:
        metrics = record.global_metrics()
        witness_rows = []
        for witness in view.witnesses:
            attested = view.attestations.get(witness, {})
            # A witness agrees when every hash it attested is the one that trainer committed
            # (or, for a trainer that never committed, the one accepted for it).
            agrees = all(h == _expected_hash(view, t, h) for t, h in attested.items())
            witness_rows.append(
                WitnessRow(witness, witness in view.attestations, dict(attested), agrees)
            )
        rejected = tuple(
            t
            for t in view.train_set
            if t not in view.accepted and view.outcome != RoundOutcome.OPEN
        )
        hashes = set(view.aggregates.values()) or {h for h, _ in record.aggregates.values()}
        busiest = record.busiest_uplink()
        return RoundRow(
            round=view.round,
            epoch=view.epoch,
            train_set=view.train_set,
            witnesses_elected=len(view.witnesses),
            witnesses_reported=len(view.attestations),
            quorum=view.quorum,
            accepted=tuple(sorted(view.accepted)),
            rejected=rejected,
            outcome=view.outcome,
            duration=None if view.ended is None else view.ended - view.started,
            loss=metrics.get("test_loss"),
            accuracy=metrics.get("accuracy"),
            aggregate_hashes=len(hashes),
            witness_rows=tuple(witness_rows),
            commits={t: r.hash for t, r in view.commits.items()},
            busiest_uplink=None if busiest is None else busiest[1],
            busiest_node="" if busiest is None else busiest[0],
            gossip_bytes=record.gossip_bytes(),
            learning_rate=record.learning_rate(),
        )

    def summary_clients(self, snap: RunSnapshot) -> list[dict[str, Any]]:
        """Each client's figures for the run summary; a figure a node never reported is None."""
        out = []
        for row in self.client_rows(snap):
            record = self.clients.get(row.id) or ClientRecord(row.id)
            out.append(
                {
                    "id": row.id,
                    "address": row.address,
                    "status": row.status,
                    "drop_reason": row.drop_reason,
                    "rounds_trained": row.rounds_trained,
                    "last_loss": row.last_loss,
                    "last_accuracy": row.last_accuracy,
                    "update_norm": row.update_norm,
                    "bytes_in": row.bytes_in,
                    "bytes_out": row.bytes_out,
                    "bytes_sent_p2p": record.node_bytes_sent,
                    "bytes_received_p2p": record.node_bytes_received,
                    "rejected_messages": row.rejected,
                    "gossip_refused": row.gossip_refused,
                    # gossip bytes of the last round the node reported metrics for
                    "round_bytes_up": row.round_bytes_up,
                    "round_bytes_down": row.round_bytes_down,
                    "compression_ratio": row.compression_ratio,
                    "update_bytes": record.update_bytes,
                    "duplicates": record.duplicates,
                    "fetches": record.fetches,
                    "epsilon": record.epsilon,
                }
            )
        return out

    def summary_rounds(self, views: tuple[RoundView, ...]) -> list[dict[str, Any]]:
        out = []
        for view in views:
            row = self.round_row(view)
            record = self.record(view.round)
            # What each node reported it aggregated to, including reports that reached the
            # console after the run had moved on (the final round's, after Finished).
            reported = {node: h for node, (h, _) in record.aggregates.items()}
            aggregates = dict(sorted({**reported, **view.aggregates}.items()))
            out.append(
                {
                    "round": view.round,
                    "epoch": view.epoch,
                    "outcome": view.outcome.value,
                    "train_set": list(view.train_set),
                    "witnesses": list(view.witnesses),
                    "quorum": view.quorum,
                    "accepted": {t: r.hash for t, r in sorted(view.accepted.items())},
                    "duration": row.duration,
                    "aggregate_hashes": sorted(set(aggregates.values())),
                    "aggregates": aggregates,
                    "metrics": _finite(record.global_metrics()),
                    "clients": {cid: _finite(mt) for cid, mt in sorted(record.commits.items())},
                    "busiest_uplink": None
                    if row.busiest_uplink is None
                    else {"node": row.busiest_node, "bytes": row.busiest_uplink},
                    "gossip_bytes": row.gossip_bytes,
                    "learning_rate": row.learning_rate,
                }
            )
        return out


def _expected_hash(view: RoundView, trainer: str, attested: str) -> str:
    if trainer in view.commits:
        return view.commits[trainer].hash
    if trainer in view.accepted:
        return view.accepted[trainer].hash
    return attested  # nothing to compare with


def reported_count(value: float | None) -> int | None:
    """A byte figure or a count a node reported; None when it did not, or sent nonsense."""
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return int(value)


def _newer(value: float | None, last: int | None) -> int | None:
    count = reported_count(value)
    return last if count is None else count


def _finite(metrics: dict[str, float]) -> dict[str, float | None]:
    return {
        k: (v if isinstance(v, float | int) and math.isfinite(v) else None)
        for k, v in metrics.items()
    }
