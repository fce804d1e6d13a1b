"""Rounds settled long ago, kept compact so that a console's memory stays flat in the rounds.

A round the nodes can no longer report on (older than the last few: see the server's
``ROUNDS_OPEN_TO_REPORTS``) needs no live record: its table row is final, and its reports are
only read again for the summary, the metrics CSV or a checkpoint check. It is kept as that row
and its reports encoded and compressed (a few hundred bytes; the same metric names recur for
every node).
"""

from __future__ import annotations

import zlib
from bisect import bisect_left
from typing import Any

import msgspec

from console.record.view import RoundRow

Metrics = dict[str, Any]  # Any: a figure comes back as the type it went in


class Reports(msgspec.Struct, array_like=True):
    """What the nodes reported for one round (``RoundRecord``'s fields)."""

    commits: dict[str, Metrics]
    aggregates: dict[str, tuple[str, Metrics]]
    node_metrics: dict[str, Metrics]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Reports)


class SettledRounds:
    """Settled rounds, numbered in increasing order: each one's row and compressed reports."""

    def __init__(self) -> None:
        self._rounds: dict[int, tuple[RoundRow, bytes]] = {}
        self._rows: tuple[RoundRow, ...] | None = ()
        self.through = 0  # the newest settled round (every older one is settled too)

    def add(self, row: RoundRow, reports: Reports | None) -> None:
        blob = b"" if reports is None else zlib.compress(_encoder.encode(reports), 1)
        self._rounds[row.round] = (row, blob)
        self._rows = None
        self.through = max(self.through, row.round)

    def row(self, round: int) -> RoundRow | None:
        settled = self._rounds.get(round)
        return None if settled is None else settled[0]

    def reports(self, round: int) -> Reports | None:
        """The round's reports (empty ones when nobody reported), or None: not settled."""
        settled = self._rounds.get(round)
        if settled is None:
            return None
        if not settled[1]:
            return Reports({}, {}, {})
        return _decoder.decode(zlib.decompress(settled[1]))

    def rows(self, rounds_from: int = 1) -> tuple[RoundRow, ...]:
        """The rows of the settled rounds numbered from ``rounds_from``, oldest first."""
        if self._rows is None:
            self._rows = tuple(row for row, _ in self._rounds.values())
        if rounds_from <= 1:
            return self._rows
        return self._rows[bisect_left(self._rows, rounds_from, key=row_round) :]


def row_round(row: RoundRow) -> int:
    return row.round
