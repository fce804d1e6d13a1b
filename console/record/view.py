"""What the operator console renders: an immutable view of the server's state (its rows).

Widgets read a :class:`ConsoleView` and nothing else; they never touch sockets. The
server builds one on demand (``ConsoleServer.view()``); snapshot tests build one by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from console.record.eventlog import LogLine
from transport.state import RoundOutcome, RunSnapshot


@dataclass(frozen=True)
class ClientRow:
    id: str
    address: str
    status: str  # the coordinator's client status (pending, active, dropped, kicked, left)
    stage: str  # what the node says it is doing (warming up, voting, training, ...)
    role: str  # "trainer", "witness", "trainer+witness" or "" for the current round
    heartbeat_age: float | None  # seconds since the console last heard from it
    rounds_trained: int = 0
    last_loss: float | None = None
    last_accuracy: float | None = None
    update_norm: float | None = None  # distance of its last update from the aggregate
    bytes_in: int = 0
    bytes_out: int = 0
    rejected: int = 0  # messages of this client the console rejected
    drop_reason: str = ""
    gossip_refused: int = 0  # model pushes this node refused from its peers (or strangers)
    # gossip bytes the node sent / received for its last reported round (None: not reported)
    round_bytes_up: int | None = None
    round_bytes_down: int | None = None
    compression_ratio: float | None = None  # raw fp32 update bytes / encoded update bytes
    epsilon: float | None = None  # [privacy] dp: the epsilon the node has spent (None: off)


@dataclass(frozen=True)
class WitnessRow:
    witness: str
    reported: bool
    attested: dict[str, str]  # trainer -> hash
    agrees: bool  # every attested hash equals the accepted (or majority) hash


@dataclass(frozen=True)
class RoundRow:
    round: int
    epoch: int
    train_set: tuple[str, ...]
    witnesses_elected: int
    witnesses_reported: int
    quorum: int
    accepted: tuple[str, ...]
    rejected: tuple[str, ...]  # trainers whose model no quorum saw
    outcome: RoundOutcome
    duration: float | None
    loss: float | None = None
    accuracy: float | None = None
    aggregate_hashes: int = 0  # distinct aggregate hashes the nodes reported (1 = all agree)
    witness_rows: tuple[WitnessRow, ...] = ()
    commits: dict[str, str] = field(default_factory=dict)  # trainer -> hash it committed
    busiest_uplink: int | None = None  # most gossip bytes one node sent this round
    busiest_node: str = ""  # the node that sent them
    gossip_bytes: int | None = None  # gossip bytes sent this round, summed over the nodes
    learning_rate: float | None = None  # the trainers' rate this round ([learning] lr_schedule)


@dataclass(frozen=True)
class ConsoleView:
    run: RunSnapshot
    address: str  # the control endpoint nodes connect to
    seq: int
    clients: tuple[ClientRow, ...]
    rounds: tuple[RoundRow, ...]
    log: tuple[LogLine, ...] = ()
    rejected_messages: int = 0
    checkpoint_dir: str = ""
    notes: dict[str, str] = field(default_factory=dict)
    # [privacy] dp: the worst epsilon any node reported and the delta it is at (None: DP off)
    epsilon: float | None = None
    delta: float | None = None
