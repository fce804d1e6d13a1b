"""What the coordinator says happened: events, rejections and the outcome of one call.

The coordinator never logs or sends anything itself. Every call returns an :class:`Outcome`:
either a :class:`Rejection` (the call changed nothing; the server answers ``error{code,
reason}``) or the events the call caused, in order. The server turns events into log lines
(``describe()``), the JSONL event log (``to_dict()``) and a state broadcast. Keeping them as
small frozen dataclasses makes the state machine testable by comparing values.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from transport.fields import ErrorCode
from transport.state import RoundOutcome, RunState

REJECTION_CODES = frozenset(
    {
        ErrorCode.WRONG_RUN_ID,
        ErrorCode.NOT_MEMBER,
        ErrorCode.NOT_WITNESS,
        ErrorCode.WRONG_ROUND,
        ErrorCode.WRONG_STATE,
        ErrorCode.DUPLICATE,
        ErrorCode.KICKED,
        ErrorCode.BANNED,
        ErrorCode.MALFORMED,
        ErrorCode.UNAVAILABLE,
    }
)


@dataclass(frozen=True)
class Rejection:
    """Why a call was refused. ``code`` is one of the wire's error codes."""

    code: ErrorCode
    reason: str

    def __post_init__(self) -> None:
        if self.code not in REJECTION_CODES:
            raise ValueError(f"unknown rejection code {self.code!r}")

    def describe(self) -> str:
        return f"rejected ({self.code}): {self.reason}"


@dataclass(frozen=True)
class Event:
    """Base of every event. ``kind`` names the event in the JSONL log."""

    kind: ClassVar[str] = "event"

    def describe(self) -> str:  # pragma: no cover - every subclass overrides it
        return self.kind

    @property
    def routine(self) -> bool:
        """Part of every round: always in the event log and the console's pane, on a headless
        terminal only with --verbose."""
        return False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: ``kind`` plus the fields (tuples become lists, enums strings)."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class Outcome:
    """The result of one coordinator call: the events it caused, or why it was refused."""

    events: tuple[Event, ...] = ()
    rejection: Rejection | None = None

    @property
    def ok(self) -> bool:
        return self.rejection is None

    def of(self, kind: type[Event]) -> tuple[Event, ...]:
        """The events of one type, in order (handy for the server and for tests)."""
        return tuple(e for e in self.events if isinstance(e, kind))


def _ids(ids: tuple[str, ...]) -> str:
    return ", ".join(ids) if ids else "nobody"


@dataclass(frozen=True)
class StateChanged(Event):
    kind: ClassVar[str] = "state_changed"
    old: RunState
    new: RunState
    reason: str
    at: float

    def describe(self) -> str:
        return f"{self.old} -> {self.new}: {self.reason}"

    @property
    def routine(self) -> bool:
        return {self.old, self.new} <= {RunState.ROUND_TRAIN, RunState.ROUND_WITNESS}


@dataclass(frozen=True)
class ClientJoined(Event):
    kind: ClassVar[str] = "client_joined"
    client_id: str
    rejoined: bool

    def describe(self) -> str:
        return f"{self.client_id} {'rejoined' if self.rejoined else 'joined'}"


@dataclass(frozen=True)
class ClientDropped(Event):
    kind: ClassVar[str] = "client_dropped"
    client_id: str
    reason: str

    def describe(self) -> str:
        return f"{self.client_id} dropped: {self.reason}"


@dataclass(frozen=True)
class ClientKicked(Event):
    kind: ClassVar[str] = "client_kicked"
    client_id: str

    def describe(self) -> str:
        return f"{self.client_id} kicked by the operator"


@dataclass(frozen=True)
class ClientBanned(Event):
    """The operator banned an id: its joins are refused (``banned``) until it is unbanned."""

    kind: ClassVar[str] = "client_banned"
    client_id: str
    reason: str

    def describe(self) -> str:
        return f"{self.client_id} banned: {self.reason}"


@dataclass(frozen=True)
class ClientUnbanned(Event):
    """A ban (or a kick) lifted: the id may join again."""

    kind: ClassVar[str] = "client_unbanned"
    client_id: str

    def describe(self) -> str:
        return f"{self.client_id} may join again (unbanned)"


@dataclass(frozen=True)
class ClientLeft(Event):
    kind: ClassVar[str] = "client_left"
    client_id: str
    reason: str = ""  # what the node said (e.g. a device it lacks at warmup)

    def describe(self) -> str:
        return f"{self.client_id} left" + (f": {self.reason}" if self.reason else "")


@dataclass(frozen=True)
class ClientWarmedUp(Event):
    """Added to the brief's list: the warmup progress is worth a log line."""

    kind: ClassVar[str] = "client_warmed_up"
    client_id: str
    model_hash: str

    def describe(self) -> str:
        return f"{self.client_id} warmed up (model {self.model_hash[:12] or '?'})"


@dataclass(frozen=True)
class EpochStarted(Event):
    kind: ClassVar[str] = "epoch_started"
    epoch: int
    clients: tuple[str, ...]

    def describe(self) -> str:
        return f"epoch {self.epoch} started with {len(self.clients)} clients: {_ids(self.clients)}"


@dataclass(frozen=True)
class EpochEnded(Event):
    """``abandoned``: the epoch ended in Warmup (too few clients, or a pause) and its number
    is used again by the next one."""

    kind: ClassVar[str] = "epoch_ended"
    epoch: int
    abandoned: bool = False

    def describe(self) -> str:
        return f"epoch {self.epoch} {'abandoned' if self.abandoned else 'ended'}"


@dataclass(frozen=True)
class TrainingDeclined(Event):
    """A client says it will not train any more (e.g. its privacy budget is spent). It still
    witnesses and aggregates; it is no longer elected to the train set."""

    kind: ClassVar[str] = "training_declined"
    round: int  # the round its vote was for
    client_id: str
    reason: str

    def describe(self) -> str:
        return f"{self.client_id} stops training from round {self.round}: {self.reason}"


@dataclass(frozen=True)
class VoteCast(Event):
    kind: ClassVar[str] = "vote_cast"
    round: int
    voter: str

    def describe(self) -> str:
        return f"{self.voter} voted for the train set of round {self.round}"


@dataclass(frozen=True)
class RoundStarted(Event):
    kind: ClassVar[str] = "round_started"
    round: int
    epoch: int
    train_set: tuple[str, ...]
    witnesses: tuple[str, ...]
    quorum: int

    def describe(self) -> str:
        return (
            f"round {self.round} (epoch {self.epoch}) started: trainers {_ids(self.train_set)}; "
            f"witnesses {_ids(self.witnesses)}; quorum {self.quorum}"
        )


@dataclass(frozen=True)
class ResultCommitted(Event):
    kind: ClassVar[str] = "result_committed"
    round: int
    trainer: str
    hash: str

    def describe(self) -> str:
        return f"round {self.round}: {self.trainer} committed {self.hash[:12]}"


@dataclass(frozen=True)
class WitnessReported(Event):
    kind: ClassVar[str] = "witness_reported"
    round: int
    witness: str
    attested: int  # how many trainers it attested

    def describe(self) -> str:
        return f"round {self.round}: witness {self.witness} attested {self.attested} results"


@dataclass(frozen=True)
class ResultAccepted(Event):
    kind: ClassVar[str] = "result_accepted"
    round: int
    trainer: str
    hash: str

    def describe(self) -> str:
        return f"round {self.round}: accepted {self.trainer}'s result {self.hash[:12]}"


@dataclass(frozen=True)
class ResultRejected(Event):
    kind: ClassVar[str] = "result_rejected"
    round: int
    trainer: str
    reason: str

    def describe(self) -> str:
        return f"round {self.round}: rejected {self.trainer}'s result: {self.reason}"


@dataclass(frozen=True)
class WitnessesReplaced(Event):
    """Every elected witness of the open round dropped before a live one could attest: the
    coordinator elected ``new`` (seeded) from the live epoch clients. ``gone``: the witnesses
    that dropped."""

    kind: ClassVar[str] = "witnesses_replaced"
    round: int
    gone: tuple[str, ...]
    new: tuple[str, ...]
    quorum: int

    def describe(self) -> str:
        return (
            f"round {self.round}: every witness gone ({_ids(self.gone)}); "
            f"replacements {_ids(self.new)}; quorum {self.quorum}"
        )


@dataclass(frozen=True)
class RoundEnded(Event):
    kind: ClassVar[str] = "round_ended"
    round: int
    outcome: RoundOutcome
    accepted: tuple[str, ...]

    def describe(self) -> str:
        return f"round {self.round} ended {self.outcome}: accepted {_ids(self.accepted)}"


@dataclass(frozen=True)
class AggregateReported(Event):
    kind: ClassVar[str] = "aggregate_reported"
    round: int
    client_id: str
    hash: str

    def describe(self) -> str:
        return f"round {self.round}: {self.client_id} aggregated to {self.hash[:12]}"


@dataclass(frozen=True)
class CheckpointRequested(Event):
    kind: ClassVar[str] = "checkpoint_requested"
    epoch: int
    round: int
    uploader: str

    def describe(self) -> str:
        return f"checkpoint of round {self.round} requested from {self.uploader}"

    @property
    def routine(self) -> bool:
        return True


@dataclass(frozen=True)
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint_saved"
    epoch: int
    round: int
    hash: str

    def describe(self) -> str:
        return f"checkpoint of round {self.round} saved ({self.hash[:12]})"


@dataclass(frozen=True)
class PauseRequested(Event):
    kind: ClassVar[str] = "pause_requested"

    def describe(self) -> str:
        return "pause requested: the run pauses after this round's Cooldown"


@dataclass(frozen=True)
class Paused(Event):
    kind: ClassVar[str] = "paused"

    def describe(self) -> str:
        return "run paused"


@dataclass(frozen=True)
class Resumed(Event):
    kind: ClassVar[str] = "resumed"

    def describe(self) -> str:
        return "run resumed"


@dataclass(frozen=True)
class RunFinished(Event):
    kind: ClassVar[str] = "run_finished"
    accepted_rounds: int
    reason: str = ""  # why it ended early ("" when total_rounds were accepted)

    def describe(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        return f"run finished after {self.accepted_rounds} accepted rounds{why}"
