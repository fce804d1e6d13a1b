"""Flood control (transport/flood.py): per-peer accounting with a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transport.flood import Admit, FloodGuard

ADDR = "10.0.0.7"


def _flood(guard: FloodGuard, n: int, start: float, rate: float, **kw: object) -> list:
    identity = str(kw.get("identity", "x1"))
    address = str(kw.get("address", ADDR))
    member = bool(kw.get("member", False))
    out = []
    for i in range(n):
        now = start + i / rate
        if guard.admit(identity, address, member, now) is Admit.PASS:
            out.append(guard.refused(identity, address, "malformed", "bad", now, member=member))
    return out


def test_a_lone_refusal_is_logged_in_full_and_never_summarised() -> None:
    guard = FloodGuard()
    verdict = guard.refused("x1", ADDR, "malformed", "not json", 0.0, member=False)
    assert verdict.log and not verdict.rate_limited
    assert guard.due(100.0) == []


def test_a_burst_is_one_line_in_full_then_one_aggregated_line() -> None:
    guard = FloodGuard(limit=0)  # never throttled: only aggregation
    verdicts = _flood(guard, 1843, 0.0, 1000.0)
    assert sum(v.log for v in verdicts) == 1
    assert guard.due(1.0) == []  # the interval is not over
    (report,) = guard.due(2.0)
    assert report.refused == {"malformed": 1843} and report.peer == ADDR
    assert "1,843 refused (1,843 malformed) in the last 2.0 s" in report.describe()
    assert guard.due(4.0) == []  # quiet since: nothing more, and quiet again
    assert guard.refused("x1", ADDR, "malformed", "bad", 5.0, member=False).log


def test_a_sustained_flood_is_one_line_per_interval() -> None:
    guard = FloodGuard(limit=0, report_every=2.0)
    lines = 0
    now = 0.0
    full = 0
    while now < 20.0:
        v = guard.refused("x1", ADDR, "malformed", "bad", now, member=False)
        full += v.log
        lines += len(guard.due(now))
        now += 0.001
    lines += len(guard.due(now + 2.0))
    assert full == 1
    assert 9 <= lines <= 11  # 20 s of flood, one line per 2 s


def test_crossing_the_limit_answers_rate_limited_once_then_silence_until_back_off_ends() -> None:
    guard = FloodGuard(limit=10, window=1.0, backoff=5.0)
    verdicts = _flood(guard, 11, 0.0, 100.0)
    assert [v.rate_limited for v in verdicts] == [False] * 10 + [True]
    assert verdicts[-1].throttled is not None and verdicts[-1].throttled.refusals == 11
    assert [guard.admit("x1", ADDR, False, 0.2 + i * 0.1) for i in range(40)] == [Admit.DROP] * 40
    assert guard.throttled(4.0) == [ADDR]
    assert guard.admit("x1", ADDR, False, 5.2) is Admit.PASS
    assert guard.throttled(5.2) == []
    assert guard.rate_limited == 1 and guard.dropped == 40


def test_new_routing_ids_from_a_throttled_address_are_dropped_too() -> None:
    guard = FloodGuard(limit=5, backoff=10.0)
    for i in range(6):
        guard.refused(f"id-{i}", ADDR, "malformed", "bad", 0.01 * i, member=False)
    assert [guard.admit(f"new-{i}", ADDR, False, 1.0) for i in range(3)] == [Admit.DROP] * 3
    assert guard.admit("elsewhere", "10.0.0.8", False, 1.0) is Admit.PASS
    (report,) = guard.due(10.0)
    assert report.ids == ("id-0", "id-1", "id-2") and report.more_ids == 6
    assert report.dropped == 3


def test_members_are_never_throttled_nor_silenced() -> None:
    guard = FloodGuard(limit=5, backoff=10.0)
    verdicts = _flood(guard, 50, 0.0, 100.0, identity="node-1", member=True)
    assert len(verdicts) == 50 and not any(v.rate_limited for v in verdicts)
    assert sum(v.throttled is not None for v in verdicts) == 1  # logged once all the same
    assert guard.admit("node-1", ADDR, True, 1.0) is Admit.PASS
    # a stranger on the member's address is told once, then ignored
    assert guard.admit("stranger", ADDR, False, 1.0) is Admit.TELL
    assert guard.admit("stranger", ADDR, False, 1.1) is Admit.DROP


def test_peers_remembered_are_bounded() -> None:
    guard = FloodGuard(max_peers=100)
    for i in range(1000):
        guard.refused(f"x{i}", "", "malformed", "bad", float(i), member=False)
    assert len(guard._peers) == 100


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="window > 0"):
        FloodGuard(window=0)


EVENT = st.tuples(
    st.sampled_from(["a", "b", "m1", "m2", "z"]),  # m*: members
    st.sampled_from(["", "10.0.0.1", "10.0.0.2"]),
    st.floats(min_value=0.0, max_value=0.5),  # time step
    st.booleans(),  # refused when read
)


@settings(max_examples=200, deadline=None)
@given(st.lists(EVENT, max_size=400), st.integers(0, 20), st.floats(0.1, 3.0))
def test_every_message_is_accounted_for_and_members_always_pass(
    events: list, limit: int, backoff: float
) -> None:
    guard = FloodGuard(limit=limit, window=1.0, backoff=backoff, report_every=2.0)
    now = 0.0
    full = counted = tells = 0
    in_lines = 0
    lines_by_peer: dict[str, list[float]] = {}
    for identity, address, step, refuse in events:
        now += step
        member = identity.startswith("m")
        admit = guard.admit(identity, address, member, now)
        if member:
            assert admit is Admit.PASS
        if admit is Admit.PASS and refuse:
            v = guard.refused(identity, address, "malformed", "bad", now, member=member)
            counted += 1
            full += v.log
            if member:
                assert not v.rate_limited
            tells += v.rate_limited
        elif admit is not Admit.PASS:
            counted += 1
            tells += admit is Admit.TELL
        for r in guard.due(now):
            in_lines += r.count
            lines_by_peer.setdefault(r.peer, []).append(now)
    for r in guard.due(now + 100.0):
        in_lines += r.count
        lines_by_peer.setdefault(r.peer, []).append(now + 100.0)
    # every refusal and drop is in an aggregated line, or was the one line logged in full
    assert in_lines <= counted <= in_lines + full
    assert counted == guard.refusals + guard.dropped
    assert tells <= guard.rate_limited  # rate_limited answered at most once per back-off
    for times in lines_by_peer.values():  # at most one aggregated line per peer per interval
        assert all(b - a >= 2.0 for a, b in zip(times, times[1:], strict=False))


def test_a_final_report_takes_the_unfinished_interval() -> None:
    guard = FloodGuard(limit=0)
    _flood(guard, 10, 0.0, 100.0)
    assert guard.due(0.5) == []
    (report,) = guard.due(0.5, final=True)
    assert report.count == 10 and guard.due(100.0, final=True) == []
