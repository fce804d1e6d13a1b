"""The coordinator: Psyche's round state machine, pure, clock-free and seeded.

Read it in this order:

- ``machine.py``: :class:`Coordinator`, the run states: what ends each one
  (``_tick_<state>``) and what entering it does (``_to_<state>``); the operator's calls.
- ``messages.py``: what nodes send, checked before it changes anything, then recorded.
- ``state.py``: the coordinator's fields and its read side (snapshot, waiting_on, to_state).
- ``committee.py``: who trains, who witnesses, and whose result a quorum accepts.
- ``events.py``: what a call returns: an :class:`Outcome` of events, or a rejection.
- ``records.py``: the mutable client and round records behind a snapshot.
- ``saved.py``: the saved progress a restarted console resumes from (no file I/O).
"""

from console.coordinator import events
from console.coordinator.committee import (
    MAX_AUTO_WITNESSES,
    elect_witnesses,
    quorum,
    round_seed,
    tally_votes,
)
from console.coordinator.events import Event, Outcome, Rejection
from console.coordinator.machine import Coordinator
from console.coordinator.saved import STATE_VERSION, round_from_dict
from console.coordinator.state import WaitingOn
from transport.state import round_to_dict  # a saved state keeps its rounds in this form

__all__ = [
    "MAX_AUTO_WITNESSES",
    "STATE_VERSION",
    "Coordinator",
    "Event",
    "Outcome",
    "Rejection",
    "WaitingOn",
    "elect_witnesses",
    "events",
    "quorum",
    "round_from_dict",
    "round_seed",
    "round_to_dict",
    "tally_votes",
]
