"""Bans and live settings in the pure coordinator: kick --ban, unban, reconfigure by state."""

from __future__ import annotations

import dataclasses
import json

import pytest

from console.coordinator import Coordinator
from console.coordinator.events import ClientBanned, ClientKicked, ClientUnbanned, StateChanged
from tests.console.coordinator.test_machine import RUN, SEED, Run, config
from transport.state import ClientStatus
from transport.state import RunState as S


def code(outcome) -> str:  # type: ignore[no-untyped-def]
    assert outcome.rejection is not None, outcome
    return str(outcome.rejection.code)


def test_ban_refuses_requests_and_joins_with_the_reason() -> None:
    run = Run()
    run.join("c0", "c1")
    out = run.ok(run.c.kick("c0", run.now, ban=True, reason="banned by the operator (ctl)"))
    assert out.events == (ClientKicked("c0"), ClientBanned("c0", "banned by the operator (ctl)"))
    assert run.status("c0") is ClientStatus.KICKED
    hb = run.c.heartbeat("c0", run.now)
    assert code(hb) == "banned" and "banned by the operator (ctl)" in hb.rejection.reason  # type: ignore[union-attr]
    joined = run.c.join("c0", RUN, run.now)
    assert code(joined) == "banned"
    assert joined.rejection.reason == "c0 is banned: banned by the operator (ctl)"  # type: ignore[union-attr]
    assert code(run.c.kick("c0", run.now, ban=True)) == "duplicate"


def test_a_plain_kick_then_a_ban_and_an_unknown_id_can_be_banned() -> None:
    run = Run()
    run.join("c0")
    run.ok(run.c.kick("c0", run.now))
    assert code(run.c.join("c0", RUN, run.now)) == "kicked"
    assert run.ok(run.c.kick("c0", run.now, ban=True)).events == (
        ClientBanned("c0", "banned by the operator"),
    )
    assert run.ok(run.c.kick("stranger", run.now, ban=True)).events == (
        ClientBanned("stranger", "banned by the operator"),
    )
    assert code(run.c.join("stranger", RUN, run.now)) == "banned"
    assert code(run.c.kick("nobody", run.now)) == "not_member"
    assert code(run.c.kick("bad id!", run.now, ban=True)) == "malformed"


def test_unban_lets_the_id_join_again_and_refuses_what_is_not_banned() -> None:
    run = Run()
    run.join("c0")
    run.ok(run.c.kick("c0", run.now, ban=True))
    assert run.ok(run.c.unban("c0", run.now)).events == (ClientUnbanned("c0"),)
    run.join("c0")
    assert run.status("c0") is ClientStatus.PENDING
    assert code(run.c.unban("c0", run.now)) == "not_member"  # live: nothing to lift
    run.ok(run.c.kick("c0", run.now))  # a plain kick is lifted the same way
    run.ok(run.c.unban("c0", run.now))
    run.join("c0")
    assert code(run.c.unban("never", run.now)) == "not_member"


def test_bans_survive_a_restore_and_plain_kicks_do_not() -> None:
    run = Run()
    run.join("c0", "c1", "c2")
    run.ok(run.c.kick("c0", run.now, ban=True, reason="why"))
    run.ok(run.c.kick("c1", run.now))
    saved = json.loads(json.dumps(run.c.to_state()))
    assert saved["banned"] == {"c0": "why"} and "kicked" not in saved
    back = Coordinator(config(), run_id=RUN, seed=SEED, train_set_size=2, now=9.0, restore=saved)
    assert code(back.join("c0", RUN, 9.0)) == "banned"
    assert back.join("c1", RUN, 9.0).ok
    assert back.bans == {"c0": "why"}
    back.unban("c0", 9.0)
    assert back.to_state()["banned"] == {}


def test_a_state_written_before_bans_keeps_its_kicked_ids_refused() -> None:
    run = Run()
    saved = json.loads(json.dumps(run.c.to_state()))
    del saved["banned"]
    saved["kicked"] = ["old"]
    back = Coordinator(config(), run_id=RUN, seed=SEED, train_set_size=2, now=0.0, restore=saved)
    assert code(back.join("old", RUN, 0.0)) == "banned"


def test_lowering_init_min_clients_in_waiting_for_members_starts_the_epoch_at_once() -> None:
    run = Run()
    run.join("c0", "c1", "c2")
    run.advance(1000)
    assert run.state is S.WAITING_FOR_MEMBERS
    assert code(run.c.end_phase(run.now)) == "wrong_state"
    out = run.ok(run.c.reconfigure(run.now, config=config(init_min_clients=3)))
    assert run.state is S.WARMUP
    assert any(isinstance(e, StateChanged) and e.new is S.WARMUP for e in out.events)
    assert run.snap().init_min_clients == 3


def test_coordinator_settings_are_refused_outside_waiting_and_paused() -> None:
    run = Run()
    run.start_epoch()
    out = run.c.reconfigure(run.now, config=config(warmup_time=5.0))
    assert code(out) == "wrong_state"
    assert "only in WaitingForMembers or Paused, not in Warmup" in out.rejection.reason  # type: ignore[union-attr]
    # a learning setting is taken in any state, and the same config is no change
    assert run.c.reconfigure(run.now, config=config(), train_set_size=3).ok
    run.ok(run.c.pause(run.now))
    assert run.state is S.PAUSED
    run.ok(run.c.reconfigure(run.now, config=config(warmup_time=5.0)))
    assert run.snap().state is S.PAUSED


@pytest.mark.parametrize(
    ("change", "message"),
    [({"min_clients": 0}, "min_clients must be >= 1"), ({"total_rounds": 0}, "total_rounds")],
)
def test_reconfigure_keeps_the_machine_invariants(change: dict, message: str) -> None:
    run = Run()
    out = run.c.reconfigure(run.now, config=dataclasses.replace(config(), **change))
    assert code(out) == "malformed" and message in out.rejection.reason  # type: ignore[union-attr]
    assert run.snap().min_clients == 2
