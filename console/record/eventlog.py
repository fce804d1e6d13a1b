"""The run's event log: every state change and every request outcome, one JSON object a line.

The log is the run's memory: ``--replay`` drives the console from it and a crashed run can be
read back line by line. Lines are flushed as they are written; a bounded in-memory tail feeds
the console's log pane.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("fl.events")
_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# One line per node per round: in the file and the console's log pane always, on the terminal
# only with --verbose. Rendering them through Rich cost the headless console about a third of
# its CPU time (py-spy, default job), on the cores the nodes train on.
DETAIL_KINDS = frozenset(
    {"vote_cast", "result_committed", "result_accepted", "aggregate_reported", "witness_reported"}
)


@dataclass(frozen=True)
class LogLine:
    t: float  # console clock
    kind: str  # "state", "join", "drop", "reject", "operator", "round", ...
    text: str
    level: str = "info"  # info | warning | error


class EventLog:
    def __init__(self, path: Path | None, *, keep: int = 500) -> None:
        self.path = path
        self.tail: deque[LogLine] = deque(maxlen=keep)
        self._fh: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(
        self,
        t: float,
        kind: str,
        text: str,
        *,
        level: str = "info",
        detail: bool = False,
        **fields: Any,
    ) -> LogLine:
        """Record one line; ``detail``: a routine line, on the terminal only with --verbose."""
        line = LogLine(t, kind, text, level)
        self.tail.append(line)
        severity = _LEVELS.get(level, logging.INFO)
        if severity == logging.INFO and (detail or kind in DETAIL_KINDS):
            severity = logging.DEBUG
        if log.isEnabledFor(severity):
            log.log(severity, text)
        if self._fh is not None:
            record = {"t": round(t, 6), "wall": time.time(), "kind": kind, "text": text}
            if level != "info":
                record["level"] = level
            record.update(fields)
            self._fh.write(json.dumps(record, default=str) + "\n")
            self._fh.flush()
        return line

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
