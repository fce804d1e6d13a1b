"""The event log pane: joins, drops, rejections, state changes, operator actions."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import RichLog

from console.record.eventlog import LogLine

MAX_LINES = 500
_LEVEL_STYLE = {"warning": "yellow", "error": "bold red"}
_LABEL = {  # the coordinator's event kinds (console/coordinator/events.py) as short labels
    "state_changed": "state",
    "client_joined": "join",
    "client_dropped": "drop",
    "client_kicked": "kick",
    "client_banned": "ban",
    "client_unbanned": "unban",
    "client_left": "leave",
    "client_warmed_up": "warmed up",
    "epoch_started": "epoch",
    "epoch_ended": "epoch",
    "vote_cast": "vote",
    "round_started": "round",
    "round_ended": "round",
    "result_committed": "commit",
    "witness_reported": "witness",
    "witnesses_replaced": "witness",
    "result_accepted": "accepted",
    "result_rejected": "rejected",
    "aggregate_reported": "aggregate",
    "checkpoint_requested": "checkpoint",
    "checkpoint_saved": "checkpoint",
    "pause_requested": "pause",
    "paused": "pause",
    "resumed": "resume",
    "run_finished": "finished",
    "training_declined": "privacy",
    "setting_changed": "setting",  # the server's (console/server/operator.py), not events.py
    "spec_changed": "spec",
}
_STYLE = {
    "state": "bold cyan",
    "operator": "bold magenta",
    "drop": "red",
    "kick": "bold red",
    "ban": "bold red",
    "setting": "bold magenta",
    "leave": "yellow",
    "privacy": "bold magenta",
    "reject": "yellow",
    "rejected": "red",
    "join": "green",
    "accepted": "green",
    "checkpoint": "cyan",
    "finished": "bold green",
}


class EventLogView(RichLog):
    """Appends the lines it has not shown yet; starts over only when the log went backwards."""

    DEFAULT_CSS = """
    EventLogView { height: 1fr; scrollbar-size-vertical: 1; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(max_lines=MAX_LINES, wrap=False, markup=False, highlight=False, **kwargs)  # type: ignore[arg-type]
        self._last: LogLine | None = None
        self._count = 0  # lines shown from the current tail
        self._origin: float | None = None

    def show(self, lines: Sequence[LogLine]) -> None:
        if not lines:
            if self._last is not None:
                self._reset()
            return
        if self._origin is None:
            self._origin = lines[0].t
        if self._last is not None and lines[-1] == self._last:
            return
        start = self._new_from(lines)
        if start is None:
            self._reset()
            start = 0
        for line in lines[start:]:
            self.write(self.format(line))
        self._last = lines[-1]
        self._count = len(lines)

    def _new_from(self, lines: Sequence[LogLine]) -> int | None:
        """Index of the first line not shown yet, or None when the shown lines are not a prefix."""
        if self._last is None:
            return 0
        # the tail is bounded: the last shown line sits at most ``_count`` back from the end
        for index in range(len(lines) - 1, -1, -1):
            if lines[index] == self._last:
                return index + 1
        return None

    def _reset(self) -> None:
        self.clear()
        self._last = None
        self._count = 0

    def format(self, line: LogLine) -> Text:
        offset = line.t - (self._origin if self._origin is not None else line.t)
        minutes, secs = divmod(max(0.0, offset), 60)
        label = _LABEL.get(line.kind, line.kind)
        style = _LEVEL_STYLE.get(line.level) or _STYLE.get(label, "")
        return Text.assemble(
            (f"{int(minutes):02d}:{secs:04.1f} ", "dim"),
            (f"{label:<10.10} ", "dim"),
            (line.text, style),
        )
