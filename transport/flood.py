"""Flood control for a ROUTER: per-peer accounting of refusals, aggregated log lines, back-off.

One :class:`FloodGuard` sits beside each ROUTER that strangers can reach (the console's control
socket, a node's gossip socket, the data server). It knows no sockets and reads no clock: every
call takes ``now``, so its behaviour is tested with a fake clock. The socket loop asks it two
things:

* :meth:`FloodGuard.admit`, before decoding: a peer in back-off is dropped here, for the price
  of a dict lookup (``DROP``); the first message it sends in its back-off is answered once with
  ``rate_limited`` (``TELL``). A member's messages always pass: its legitimate traffic is never
  throttled, and a member is never dropped from the run for this.
* :meth:`FloodGuard.refused`, for each refusal: counts it and says whether to log it in full
  (the first of a quiet peer), to answer ``rate_limited`` instead (the refusal that crossed the
  limit, from a non-member).

Only refusals count towards the limit, so a member's accepted requests never do. A peer is its
address (libzmq's ``Peer-Address``) when the connection has one, else its routing id: a hostile
peer can pick a new routing id for every message, not a new address. Members on the same host as
a flooder share its address, which is why members are exempt by routing id.

:meth:`FloodGuard.due` returns the aggregated lines: one per peer per ``report_every`` seconds
("peer 10.0.0.7 (x1, x2): 1,843 refused in the last 2.0 s (1,843 malformed)"), never one per
refusal. A flood costs the receiver a ``recv`` and a lookup per message, not a log line.
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

# A member is refused a handful of times per round (a report racing a broadcast); 200 a second
# is two orders above that, and far below what costs a receiver noticeable CPU.
REFUSAL_LIMIT = 200
WINDOW = 1.0  # seconds over which refusals are counted against REFUSAL_LIMIT
# Long enough that a flooder costs one reply per back-off, short enough that a peer which was
# misconfigured and fixed (a wrong run id) is heard again soon.
BACKOFF = 10.0
REPORT_INTERVAL = 2.0  # seconds between two aggregated lines about the same peer
MAX_PEERS = 4096  # peers remembered at once (least recently heard forgotten first)
MAX_IDS_SHOWN = 3  # routing ids a line names for one address
# A socket loop awaits asyncio.sleep(0) every this many messages: pyzmq's recv returns a done
# future while messages wait, so under a flood the loop would never let the rest of the event
# loop run (the console's ticks and broadcasts starved for minutes without it).
YIELD_EVERY = 16
MAX_IDS_COUNTED = 1024  # further routing ids a line counts (bounded memory)


class Admit(enum.Enum):
    PASS = "pass"  # decode and handle it
    DROP = "drop"  # in back-off: drop unread, no reply
    TELL = "tell"  # in back-off, first message since: answer rate_limited, unread


@dataclass(frozen=True)
class Verdict:
    """What to do with one refusal."""

    rate_limited: bool = False  # answer ``rate_limited`` instead of the refusal
    log: bool = False  # log this refusal in full (the first of a quiet peer)
    throttled: Throttled | None = None  # a back-off began with this refusal: log it once


@dataclass(frozen=True)
class Throttled:
    peer: str
    identity: str  # the routing id whose refusal crossed the limit
    refusals: int  # in the last ``window`` seconds
    window: float
    backoff: float

    def describe(self) -> str:
        return (
            f"peer {self.peer} rate-limited: {self.refusals:,} refusals in {self.window:g} s "
            f"(last from {self.identity}); its messages are ignored for {self.backoff:g} s "
            "(members' are not)"
        )


@dataclass(frozen=True)
class FloodReport:
    """One aggregated line: what a peer was refused and dropped over an interval."""

    peer: str
    seconds: float
    refused: dict[str, int]  # error code -> count
    dropped: int  # unread while rate-limited
    ids: tuple[str, ...]
    more_ids: int
    latest: str  # the latest refusal's reason

    @property
    def count(self) -> int:
        return sum(self.refused.values()) + self.dropped

    def describe(self) -> str:
        who = ", ".join(self.ids) + (f" +{self.more_ids} more" if self.more_ids else "")
        parts = []
        if self.refused:
            codes = ", ".join(f"{n:,} {c}" for c, n in sorted(self.refused.items()))
            parts.append(f"{sum(self.refused.values()):,} refused ({codes})")
        if self.dropped:
            parts.append(f"{self.dropped:,} dropped while rate-limited")
        text = f"peer {self.peer} ({who}): {'; '.join(parts)} in the last {self.seconds:.1f} s"
        return f"{text}; latest: {self.latest}" if self.latest else text


@dataclass
class _Peer:
    window_start: float = float("-inf")
    window_count: int = 0
    until: float = float("-inf")  # back-off end
    told: bool = True  # rate_limited already answered in this back-off
    interval_start: float | None = None  # None: quiet (the next refusal is logged in full)
    refused: Counter[str] = field(default_factory=Counter)
    dropped: int = 0
    logged_first: bool = False  # the interval's first refusal was logged in full
    ids: dict[str, None] = field(default_factory=dict)  # the first routing ids (ordered set)
    other_ids: set[str] = field(default_factory=set)  # the others, counted up to a cap
    latest: str = ""


class FloodGuard:
    """Per-peer refusal accounting for one ROUTER (see the module docstring)."""

    def __init__(
        self,
        *,
        limit: int = REFUSAL_LIMIT,
        window: float = WINDOW,
        backoff: float = BACKOFF,
        report_every: float = REPORT_INTERVAL,
        max_peers: int = MAX_PEERS,
    ) -> None:
        """``limit`` refusals per ``window`` seconds (0: never rate-limit, still aggregate)."""
        if limit < 0 or window <= 0 or backoff < 0 or report_every <= 0 or max_peers < 1:
            raise ValueError(
                "limit >= 0, window > 0, backoff >= 0, report_every > 0, max_peers >= 1"
            )
        self.limit = limit
        self.window = window
        self.backoff = backoff
        self.report_every = report_every
        self.max_peers = max_peers
        self.refusals = 0  # every refusal counted, all peers
        self.dropped = 0  # every message dropped unread
        self.rate_limited = 0  # back-offs begun
        self._peers: OrderedDict[str, _Peer] = OrderedDict()

    @staticmethod
    def peer_of(identity: str, address: str) -> str:
        return address or identity

    def _peer(self, key: str) -> _Peer:
        p = self._peers.get(key)
        if p is None:
            p = self._peers[key] = _Peer()
            if len(self._peers) > self.max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(key)
        return p

    def admit(self, identity: str, address: str, member: bool, now: float) -> Admit:
        """Before decoding: may this message be read? Members' always may."""
        if member:
            return Admit.PASS
        key = self.peer_of(identity, address)
        p = self._peers.get(key)
        if p is None or now >= p.until:
            return Admit.PASS
        self.dropped += 1
        p.dropped += 1
        self._note(p, identity, now)
        if not p.told:
            p.told = True
            return Admit.TELL
        return Admit.DROP

    def refused(
        self, identity: str, address: str, code: str, reason: str, now: float, *, member: bool
    ) -> Verdict:
        """Count one refusal of ``identity``'s message; what to do with it."""
        self.refusals += 1
        key = self.peer_of(identity, address)
        p = self._peer(key)
        quiet = p.interval_start is None
        self._note(p, identity, now)
        p.refused[code] += 1
        p.latest = reason
        if now - p.window_start >= self.window:
            p.window_start, p.window_count = now, 0
        p.window_count += 1
        throttled = None
        if now < p.until:  # in back-off already: a member's (strangers' are dropped unread)
            return Verdict()
        if self.limit and p.window_count > self.limit:
            p.until = now + self.backoff
            p.told = not member  # a member is not told: the next stranger from there is
            self.rate_limited += 1
            throttled = Throttled(key, identity, p.window_count, self.window, self.backoff)
            return Verdict(rate_limited=not member, throttled=throttled)
        if quiet:
            p.logged_first = True
        return Verdict(log=quiet)

    def _note(self, p: _Peer, identity: str, now: float) -> None:
        if p.interval_start is None:
            p.interval_start = now
        if identity in p.ids or identity in p.other_ids:
            return
        if len(p.ids) < MAX_IDS_SHOWN:
            p.ids[identity] = None
        elif len(p.other_ids) < MAX_IDS_COUNTED:
            p.other_ids.add(identity)

    def due(self, now: float, *, final: bool = False) -> list[FloodReport]:
        """The aggregated lines due at ``now``: one per peer whose interval is over and that
        was refused or dropped more than the one message already logged in full.
        ``final``: every interval is over (the socket closes)."""
        out = []
        for key, p in self._peers.items():
            if p.interval_start is None:
                continue
            if not final and now - p.interval_start < self.report_every:
                continue
            unlogged = sum(p.refused.values()) + p.dropped - (1 if p.logged_first else 0)
            if unlogged > 0:
                out.append(
                    FloodReport(
                        key,
                        now - p.interval_start,
                        dict(p.refused),
                        p.dropped,
                        tuple(p.ids),
                        len(p.other_ids),
                        p.latest,
                    )
                )
            p.refused, p.dropped, p.latest = Counter(), 0, ""
            p.ids, p.other_ids, p.logged_first = {}, set(), False
            # a peer still busy stays hot: its next interval begins now, with no line in full
            p.interval_start = now if unlogged > 0 else None
        return out

    def throttled(self, now: float) -> list[str]:
        """The peers in back-off at ``now``."""
        return [key for key, p in self._peers.items() if now < p.until]
