"""The event log: every line in the file and the console's pane; on a headless terminal the
lines that come with every round only with --verbose."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from console.coordinator.events import CheckpointRequested, RoundEnded, StateChanged
from console.record.eventlog import EventLog
from transport.state import RoundOutcome, RunState


def test_routine_lines_are_in_the_file_and_pane_but_on_the_terminal_only_when_verbose(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = [
        StateChanged(RunState.ROUND_TRAIN, RunState.ROUND_WITNESS, "every witness reported", 1.0),
        StateChanged(RunState.ROUND_WITNESS, RunState.ROUND_TRAIN, "round 1 decided", 1.1),
        CheckpointRequested(epoch=0, round=1, uploader="n1"),
        StateChanged(RunState.ROUND_WITNESS, RunState.COOLDOWN, "the epoch's rounds are done", 2),
    ]
    assert [e.routine for e in events] == [True, True, True, False]
    log = EventLog(tmp_path / "events.jsonl")
    with caplog.at_level(logging.INFO, logger="fl.events"):
        for e in events:
            log.write(1.0, e.kind, e.describe(), detail=e.routine)
    log.close()

    assert [r.getMessage() for r in caplog.records] == [events[-1].describe()]
    assert [line.text for line in log.tail] == [e.describe() for e in events]
    written = [json.loads(x)["text"] for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert written == [e.describe() for e in events]


def test_a_round_ending_is_not_routine() -> None:
    ended = RoundEnded(round=3, outcome=RoundOutcome.ACCEPTED, accepted=("n1",))
    assert not ended.routine
