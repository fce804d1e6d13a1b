"""Stalls explained: WaitingForMembers, short of members with earlier members gone, says who is
missing (an event, at most once per ``stall_warning_after``), with a fake clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from console.coordinator.events import Stall
from tests.console.coordinator.test_machine import MS, Run, config
from transport.state import RunState as S

AFTER = 1024 * MS  # one second of the fake clock


def stalled_run(**overrides: object) -> Run:
    """c0..c3 started an epoch; c1, c2, c3 left in Warmup: back to WaitingForMembers."""
    run = Run(config(**{"stall_warning_after": AFTER, **overrides}))
    run.start_epoch(["c0", "c1", "c2", "c3"])
    for cid in ("c1", "c2", "c3"):
        run.ok(run.c.leave(cid, run.now))
    assert run.state is S.WAITING_FOR_MEMBERS
    return run


def stalls(run: Run, ms: int, step: int = 16) -> list[Stall]:
    out: list[Stall] = []
    for _ in range(ms // step):
        out += [e for e in run.advance(step).events if isinstance(e, Stall)]
    return out


def test_a_stall_names_the_missing_members_and_how_to_continue() -> None:
    run = stalled_run()
    started = run.now
    assert stalls(run, 1008) == []  # not yet: 1008 ms < stall_warning_after
    assert run.c.next_wakeup(run.now) == started + AFTER
    (stall,) = stalls(run, 16)
    assert stall.missing == ("c1", "c2", "c3") and stall.pending == ("c0",)
    assert stall.needed == 4 and stall.waited == AFTER
    text = stall.describe()
    assert "c1, c2, c3" in text and "1 of 4" in text
    assert "coordinator.init_min_clients" in text and "fl-console ctl data.toml set" in text
    assert "coordinator.min_clients=1" in text  # 1 pending < min_clients 2: both must go down


def test_a_stall_repeats_at_most_once_per_interval_until_the_members_are_back() -> None:
    run = stalled_run()
    assert len(stalls(run, 5 * 1024)) == 5
    run.join("c1", "c2")
    (later,) = stalls(run, 1024)
    assert later.missing == ("c3",) and later.pending == ("c0", "c1", "c2")
    run.join("c3")
    run.advance(64)
    assert run.state is S.WARMUP
    assert stalls(run, 512, step=64) == [] and run.state is S.WARMUP  # no stall once going


def test_a_kicked_member_is_not_waited_for() -> None:
    run = stalled_run()
    run.join("c1")
    run.ok(run.c.kick("c1", run.now))
    (stall,) = stalls(run, 1024)
    assert stall.missing == ("c2", "c3")


def test_a_first_start_is_not_a_stall_and_zero_turns_it_off() -> None:
    first = Run(config(stall_warning_after=AFTER))
    first.join("c0")
    assert stalls(first, 4096, step=256) == []
    off = stalled_run(stall_warning_after=0.0)
    assert stalls(off, 4096, step=256) == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 700), min_size=1, max_size=60))
def test_stalls_are_spaced_by_the_interval_whatever_the_ticks(steps: list[int]) -> None:
    run = stalled_run()
    start = run.now
    times = []
    for ms in steps:
        for e in run.advance(ms).events:
            if isinstance(e, Stall):
                assert e.waited >= AFTER and e.missing == ("c1", "c2", "c3")
                times.append(run.now)
    assert all(b - a >= AFTER for a, b in zip(times, times[1:], strict=False))
    elapsed = run.now - start
    assert len(times) <= elapsed / AFTER
    if elapsed >= AFTER + 700 * MS:
        assert times, "a stall long enough was never said"
