"""What each cell of the console says: pure formatting from the view's rows to text + style.

No Textual here. A cell is a ``(text, style)`` pair, cheap to build and to compare, so the
tables can tell which cells changed and update only those; the widgets turn the pairs into
Rich ``Text`` when they write them.
"""

from __future__ import annotations

import math
from collections import Counter

from console.app.columns import Column
from console.record.view import ClientRow, RoundRow
from transport.state import RoundOutcome, RunSnapshot, RunState

Cell = tuple[str, str]  # (text, Rich style)
NONE = ("·", "dim")

# Columns in the order shown; the priority says which stay when the terminal is narrow (0:
# always; then 1, 2, ...). At 120 columns every one but the address fits, at 80 the client,
# state, role, heartbeat, loss, bytes up per round and the note.
CLIENT_COLUMNS: tuple[Column, ...] = (
    Column("id", "client", 10),
    Column("address", "address", 15, priority=11),
    Column("state", "state", 10),
    Column("role", "role", 9, priority=2),
    Column("heartbeat", "hb", 5, right=True, priority=1),
    Column("rounds", "rnds", 4, right=True, priority=8),
    Column("loss", "loss", 6, right=True, priority=3),
    Column("accuracy", "acc", 6, right=True, priority=5),
    Column("bytes_in", "in", 4, right=True, priority=10),
    Column("bytes_out", "out", 4, right=True, priority=9),
    Column("round_bytes_up", "up/r", 4, right=True, priority=4),  # gossip, last round
    Column("round_bytes_down", "dn/r", 4, right=True, priority=6),
    Column("compression_ratio", "ratio", 5, right=True, priority=7),
    Column("note", "note", None),
)

# "train" is the denominator of "accepted", so it is the first to go.
ROUND_COLUMNS: tuple[Column, ...] = (
    Column("round", "round", 5, right=True),
    Column("epoch", "ep", 2, right=True, priority=8),
    Column("train", "train", 5, right=True, priority=9),
    Column("witnesses", "wit", 3, right=True, priority=5),
    Column("quorum", "quorum", 6, right=True, priority=7),
    Column("accepted", "accepted", 8, right=True, priority=1),
    Column("outcome", "outcome", 9),
    Column("duration", "time", 5, right=True, priority=4),
    Column("loss", "loss", 6, right=True, priority=2),
    Column("accuracy", "acc", 6, right=True, priority=3),
    Column("busiest_uplink", "max up", 6, right=True, priority=6),  # the busiest node's bytes
    Column("learning_rate", "lr", 7, right=True, priority=10),  # the round's scheduled rate
)

_STAGE_STYLE = {
    "pending": "dim",
    "warming up": "cyan",
    "voting": "blue",
    "training": "bold yellow",
    "waiting": "",
    "gossiping": "magenta",
    "aggregating": "cyan",
    "done": "green",
    "finished": "bold green",
    "cooldown": "cyan",
    "checkpointing": "cyan",
    "dropped": "bold red",
    "kicked": "bold magenta",
    "left": "dim red",
}

_STATE_STYLE = {
    RunState.WAITING_FOR_MEMBERS: "bold yellow",
    RunState.WARMUP: "bold cyan",
    RunState.ROUND_TRAIN: "bold green",
    RunState.ROUND_WITNESS: "bold blue",
    RunState.COOLDOWN: "bold cyan",
    RunState.PAUSED: "bold magenta",
    RunState.FINISHED: "bold",
    RunState.UNINITIALIZED: "dim",
}

_OUTCOME = {
    RoundOutcome.OPEN: ("open", "yellow"),
    RoundOutcome.ACCEPTED: ("accepted", "green"),
    RoundOutcome.NO_QUORUM: ("no quorum", "bold red"),
    RoundOutcome.ABANDONED: ("abandoned", "dim red"),
}


# ------------------------------------------------------------------ numbers


def number(value: float | None) -> str:
    if value is None:
        return "·"
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf"
    if abs(value) < 10:
        return f"{value:.4f}"
    if abs(value) < 1000:
        return f"{value:.2f}"
    return f"{value:.3g}"


def percent(value: float | None) -> str:
    if value is None:
        return "·"
    if not math.isfinite(value):
        return "nan"
    return f"{value * 100:.1f}%"


def rate(value: float | None) -> str:
    """A learning rate in at most 7 characters: 0.01, 0.00707, 1e-05."""
    if value is None or not math.isfinite(value):
        return "·"
    return f"{value:.3g}"


def seconds(value: float | None) -> str:
    if value is None:
        return "·"
    if value < 100:
        return f"{value:.1f}s"
    if value < 6000:
        return f"{value / 60:.0f}m"
    return f"{value / 3600:.0f}h"


def size(value: int) -> str:
    """Bytes in at most 4 characters: 512B, 9.8k, 912k, 2.5M, 12M, 1.2G."""
    if value < 1000:
        return f"{value}B" if value < 100 else f"{value / 1000:.1f}k"
    for unit, scale in (("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        scaled = value / scale
        if scaled < 9.95:
            return f"{scaled:.1f}{unit}"
        if scaled < 999.5:
            return f"{scaled:.0f}{unit}"
    return f"{value / 1e15:.0f}P"


def optional_size(value: int | None) -> Cell:
    """Bytes a node reported, dim when none moved; "·" when it did not say."""
    if value is None:
        return NONE
    return (size(value), "dim" if not value else "")


def ratio(value: float | None) -> Cell:
    """A compression ratio in at most 5 characters: 1.0×, 3.9×, 50×, 1.2k×; dim at 1 (none)."""
    if value is None or not math.isfinite(value):
        return NONE
    if value < 9.95:
        text = f"{value:.1f}×"
    elif value < 999.5:
        text = f"{value:.0f}×"
    else:
        text = f"{size(int(value)).removesuffix('B')}×"
    return (text, "dim" if text == "1.0×" else "")


def address(value: str) -> str:
    """An endpoint without its ``tcp://`` scheme (the scheme is the same for every client)."""
    return value.removeprefix("tcp://") or "·"


_ROLES = {"trainer+witness": "train+wit"}


def short_hash(value: str, length: int = 6) -> str:
    return value[:length] if value else "·"


# ------------------------------------------------------------------ clients


def client_state(row: ClientRow) -> str:
    """One of: pending, warming up, voting, training, waiting, gossiping, done, dropped, kicked..."""
    if row.status in ("dropped", "kicked", "left"):
        return row.status
    if row.status == "pending" and row.stage != "finished":
        return row.status
    return row.stage or row.status


HEARTBEAT = 4  # the heartbeat cell's index in a client row


def heartbeat_cell(age: float | None) -> Cell:
    return (seconds(age), "" if age is None or age < 2 else "bold red" if age >= 5 else "yellow")


def client_cells(row: ClientRow) -> tuple[Cell, ...]:
    state = client_state(row)
    live = row.status in ("pending", "active")
    note = row.drop_reason if not live else ""
    extra = []
    if row.rejected:
        extra.append(f"{row.rejected} rejected")
    if row.gossip_refused:
        extra.append(f"refused {row.gossip_refused} push{'es' if row.gossip_refused != 1 else ''}")
    if row.epsilon is not None:  # [privacy] dp: what this node has spent
        extra.append(f"ε {row.epsilon:.2f}")
    note = "; ".join([note, *extra] if note else extra)
    return (
        (row.id, "bold" if live else "dim"),
        (address(row.address), "" if live else "dim"),
        (state, _STAGE_STYLE.get(state, "")),
        (
            _ROLES.get(row.role, row.role) or "·",
            "bold" if "witness" in row.role else "" if row.role else "dim",
        ),
        heartbeat_cell(row.heartbeat_age),
        (str(row.rounds_trained), ""),
        (number(row.last_loss), ""),
        (percent(row.last_accuracy), ""),
        (size(row.bytes_in), "dim" if not row.bytes_in else ""),
        (size(row.bytes_out), "dim" if not row.bytes_out else ""),
        optional_size(row.round_bytes_up),
        optional_size(row.round_bytes_down),
        ratio(row.compression_ratio),
        (note, "red" if not live else "yellow"),
    )


# ------------------------------------------------------------------ rounds


def round_cells(row: RoundRow) -> tuple[Cell, ...]:
    outcome, outcome_style = _OUTCOME.get(row.outcome, (str(row.outcome), ""))
    reported = f"{row.witnesses_reported}/{row.witnesses_elected}"
    short = row.witnesses_reported < row.witnesses_elected and row.outcome != RoundOutcome.OPEN
    disagree = any(not w.agrees for w in row.witness_rows if w.reported)
    accepted = f"{len(row.accepted)}/{len(row.train_set)}"
    return (
        (str(row.round), "bold"),
        (str(row.epoch), "dim"),
        (str(len(row.train_set)), ""),
        (reported, "yellow" if short else "red" if disagree else ""),
        (str(row.quorum), ""),
        (accepted, "red" if row.rejected else ""),
        (outcome, outcome_style),
        (seconds(row.duration), ""),
        (number(row.loss), ""),
        (percent(row.accuracy), "bold" if row.accuracy is not None else ""),
        optional_size(row.busiest_uplink),
        (rate(row.learning_rate), "dim"),
    )


def round_traffic(row: RoundRow) -> str:
    """The round's gossip in a few words (who sent the most, and all nodes together), or ""
    when no node reported its round's bytes."""
    if row.busiest_uplink is None:
        return ""
    text = f"busiest up {row.busiest_node} {size(row.busiest_uplink)}"
    if row.gossip_bytes is not None:
        text += f" · gossip {size(row.gossip_bytes)}"
    return text


def reference_hashes(row: RoundRow) -> dict[str, str]:
    """Per trainer, the hash a witness should have attested: what the trainer committed, else
    what a strict majority of the reporting witnesses attested (no reference on a tie)."""
    votes: dict[str, Counter[str]] = {}
    for w in row.witness_rows:
        if w.reported:
            for trainer, h in w.attested.items():
                votes.setdefault(trainer, Counter())[h] += 1
    out: dict[str, str] = {}
    for trainer, counter in votes.items():
        (best, count), *rest = counter.most_common()
        if not rest or rest[0][1] < count:
            out[trainer] = best
    out.update(getattr(row, "commits", {}))  # the trainers' own commits win
    return out


# ------------------------------------------------------------------ header


def state_style(state: RunState) -> str:
    return _STATE_STYLE.get(state, "")


def phase_line(run: RunSnapshot) -> list[Cell]:
    """The run state, its countdown and where the run is, as styled pieces."""
    parts: list[Cell] = [(f" {run.state.value} ", f"reverse {state_style(run.state)}")]
    remaining = run.remaining
    if remaining is not None:
        parts.append((f" {remaining:.1f}s left", "bold"))
    if run.state is RunState.PAUSED:
        parts.append(("  PAUSED", "bold reverse magenta"))
    elif run.pending_pause:
        parts.append(("  PAUSE PENDING", "bold magenta"))
    if run.state is RunState.WAITING_FOR_MEMBERS:
        pending = sum(1 for c in run.clients if c.status == "pending")
        needed = run.waiting_for
        if needed:
            parts.append(
                (f"  waiting for {needed} more member{'s' if needed != 1 else ''}", "bold yellow")
            )
        else:
            parts.append(("  enough members", "green"))
        parts.append((f" ({pending}/{run.init_min_clients} pending)", "dim"))
    parts.append((f"  epoch {run.epoch} · round {run.round}", ""))
    if run.epoch_rounds:
        parts.append((f" ({run.epoch_rounds}/{run.rounds_per_epoch} in epoch)", "dim"))
    parts.append((f" · accepted {run.accepted_rounds}/{run.total_rounds}", "bold"))
    parts.append((f" · {len(run.live_clients)} live", ""))
    if run.checkpoint is not None:
        cp = run.checkpoint
        parts.append((f"  checkpoint e{cp.epoch} r{cp.round} {short_hash(cp.hash)}", "dim"))
    return parts
