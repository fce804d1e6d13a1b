"""Replay a recorded run: ``fl-console --replay run/events.jsonl`` drives the console from it.

The server appends, on state-changing broadcasts (throttled), a record
``{"kind": "view", "t": ..., "view": view_to_dict(server.view(), with_log=False)}`` to the
run's ``events.jsonl``, between the plain log lines (records with ``"text"``). Loading
keeps both: each view is shown with the log lines written before it, as the live console
showed them. Bad lines (not JSON, or not our shape) are skipped and counted, never fatal.

Round rows are recorded as they change: a view with ``"rounds_delta": true`` carries only
the rows that changed since the view before it (a new round, a round decided), so a long
run's log grows with its rounds, not with rounds x views. Replay puts each view's rows back
together from the last full view before it.

No Textual and no zmq here: the server imports :func:`view_to_dict`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgspec

from console.record.eventlog import LogLine
from console.record.view import ConsoleView, RoundRow

log = logging.getLogger(__name__)

LOG_TAIL = 500  # lines of log shown with each view, as the live console keeps
MAX_GAP = 2.0  # seconds of recorded time a replay waits at most between two views


class ReplayError(ValueError):
    """A recording that cannot be replayed at all (missing, or without a single view)."""


# ---------------------------------------------------------------------- views <-> dicts


def view_to_dict(view: ConsoleView, *, with_log: bool = True) -> dict[str, Any]:
    """A JSON-able dict of ``view``; :func:`view_from_dict` gives back an equal snapshot."""
    out: dict[str, Any] = msgspec.to_builtins(replace(view, log=()))
    del out["log"]
    if with_log:
        out["log"] = [[line.t, line.kind, line.text, line.level] for line in view.log]
    return out


def view_from_dict(raw: Any) -> ConsoleView:
    """The snapshot ``raw`` describes; raises :class:`ValueError` when it is not our shape.

    The view's declaration (``console/view.py``, ``transport/state.py``) is the schema: msgspec
    checks every field; a field added later takes its default in an older recording.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"malformed view: expected an object, got {type(raw).__name__}")
    view = msgspec.convert({**raw, "log": ()}, ConsoleView)
    lines = msgspec.convert(raw.get("log", []), list[tuple[float, str, str, str]])
    return replace(view, log=tuple(LogLine(*line) for line in lines)) if lines else view


# ---------------------------------------------------------------------- a recording


@dataclass(frozen=True)
class RecordedView:
    t: float
    view: ConsoleView  # with ``delta``, its ``rounds`` are only the rows that changed
    log_end: int  # how many log lines were written before it
    delta: bool = False  # True: rows missing from ``view.rounds`` are those of the views before


@dataclass(frozen=True)
class Recording:
    views: tuple[RecordedView, ...]
    log: tuple[LogLine, ...]
    skipped: int  # lines that were not JSON, or not a record we know


def parse_recording(lines: Iterable[str]) -> Recording:
    views: list[RecordedView] = []
    log_lines: list[LogLine] = []
    skipped = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
            if record.get("kind") == "view" and "view" in record:
                view = view_from_dict(record["view"])
                t = msgspec.convert(record.get("t", view.run.now), float)
                delta = record["view"].get("rounds_delta") is True and bool(views)
                views.append(RecordedView(t, view, len(log_lines), delta))
            elif isinstance(record.get("text"), str):
                log_lines.append(
                    LogLine(
                        msgspec.convert(record.get("t", 0.0), float),
                        str(record.get("kind", "")),
                        record["text"],
                        str(record.get("level", "info")),
                    )
                )
            else:
                raise ValueError("neither a view nor a log line")
        except (ValueError, TypeError, KeyError) as exc:
            skipped += 1
            log.debug("line %d skipped: %s", number, exc)
    return Recording(tuple(views), tuple(log_lines), skipped)


def load_recording(path: Path) -> Recording:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            recording = parse_recording(fh)
    except OSError as exc:
        raise ReplayError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not recording.views:
        raise ReplayError(
            f"{path} holds no view records ({len(recording.log)} log lines, "
            f"{recording.skipped} bad lines): it was not written by a recording console server"
        )
    return recording


# ---------------------------------------------------------------------- the backend


class ReplayBackend:
    """Serves the recorded views one at a time; steps, seeks, and plays at a speed.

    While playing, :meth:`view` advances to the view whose recorded time matches the time
    played (``clock`` elapsed times ``speed``), waiting at most ``MAX_GAP`` recorded seconds
    between two views. Operator actions are not offered (``operable`` is False).
    """

    operable = False

    def __init__(
        self,
        source: Path | Recording,
        *,
        clock: Callable[[], float] = time.monotonic,
        speed: float = 1.0,
    ) -> None:
        self.recording = source if isinstance(source, Recording) else load_recording(source)
        self.clock = clock
        self.speed = speed
        self.index = 0
        self.playing = False
        self._anchor = 0.0  # clock time at which the current view was reached
        self._cache: tuple[tuple[object, ...], ConsoleView] | None = None
        self._rows: dict[int, RoundRow] = {}  # the round rows as of view ``_rows_at``
        self._rows_at = -1

    def __len__(self) -> int:
        return len(self.recording.views)

    # controls ----------------------------------------------------------------

    def step(self, delta: int) -> None:
        self.playing = False
        self.seek(self.index + delta if delta >= 0 else max(0, self.index + delta))

    def seek(self, index: int) -> None:
        """Go to view ``index``; negative counts from the end (``-1``: the last view)."""
        count = len(self.recording.views)
        self.index = min(count - 1, max(0, index if index >= 0 else count + index))
        self._anchor = self.clock()

    def toggle_play(self) -> None:
        if not self.playing and self.index >= len(self.recording.views) - 1:
            self.index = 0  # play from the start again once at the end
        self.playing = not self.playing
        self._anchor = self.clock()

    def set_speed(self, speed: float) -> None:
        self._advance()
        self.speed = min(64.0, max(0.125, speed))

    # the view ------------------------------------------------------------------

    def _advance(self) -> None:
        if not self.playing:
            return
        views = self.recording.views
        now = self.clock()
        while self.index < len(views) - 1:
            wait = min(MAX_GAP, max(0.0, views[self.index + 1].t - views[self.index].t))
            due = self._anchor + wait / self.speed
            if now < due:
                break
            self.index += 1
            self._anchor = due
        if self.index >= len(views) - 1:
            self.playing = False

    def view(self) -> ConsoleView:
        self._advance()
        key = (self.index, self.playing, self.speed)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        recorded = self.recording.views[self.index]
        end = recorded.log_end
        lines = self.recording.log[max(0, end - LOG_TAIL) : end] or recorded.view.log
        state = "playing" if self.playing else "stopped"
        note = f"{self.index + 1}/{len(self.recording.views)} {state} x{self.speed:g}"
        if self.recording.skipped:
            note += f", {self.recording.skipped} bad lines skipped"
        view = replace(
            recorded.view,
            rounds=self._rounds(self.index),
            log=tuple(lines),
            notes={**recorded.view.notes, "replay": note},
        )
        self._cache = (key, view)
        return view

    def _rounds(self, index: int) -> tuple[RoundRow, ...]:
        """The round rows as of view ``index``: its own when it is full, else the last full
        view's with every later change up to ``index`` laid over them."""
        views = self.recording.views
        if not views[index].delta:
            return views[index].view.rounds
        if self._rows_at > index or self._rows_at < 0:  # start again from the last full view
            start = index
            while views[start].delta:
                start -= 1
            self._rows, self._rows_at = {}, start - 1
        for k in range(self._rows_at + 1, index + 1):
            if not views[k].delta:
                self._rows = {}
            self._rows.update((row.round, row) for row in views[k].view.rounds)
        self._rows_at = index
        return tuple(self._rows[r] for r in sorted(self._rows))
