"""``fl-console ctl set``, ``kick --ban`` and ``unban`` against a live headless console.

Each verb goes through the console's own operator API (``ConsoleServer.set_settings``,
``kick(ban=True)``, ``unban``), so a refusal reads as the console's settings screen shows it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.operators import (
    WAITING,
    control_endpoint,
    ctl,
    ctl_json,
    reached_from_afar,
    run_id_of,
    serving,
)
from tests.e2e.runs import HeadlessConsole
from tests.factories import write_config
from transport.exit_codes import ExitCode
from transport.messages import Error

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
]


def test_set_changes_a_coordinator_setting_live_and_in_the_file(waiting_console: Any) -> None:
    config, console = waiting_console
    before = config.read_text()
    code, done = ctl_json(config, "set", "coordinator.init_min_clients=3")
    assert code == ExitCode.OK, done
    assert done["changed"] == [["coordinator.init_min_clients", "2", "3"]]
    assert ctl_json(config, "status")[1]["snapshot"]["init_min_clients"] == 3
    after = config.read_text()
    lines = zip(before.splitlines(), after.splitlines(), strict=True)
    differ = [(a, b) for a, b in lines if a != b]
    assert differ == [("init_min_clients = 2", "init_min_clients = 3")]
    assert (config.parent / "data.toml.bak").read_text() == before
    human = ctl(config, "set", "coordinator.min_clients=3", "coordinator.witness_nodes=3")
    assert human.returncode == ExitCode.OK, human.stderr
    assert "coordinator.min_clients: 2 -> 3" in human.stdout
    assert "coordinator.witness_nodes: 2 -> 3" in human.stdout
    texts = " ".join(e.get("text", "") for e in console.events_seen())
    assert "init_min_clients" in texts and "ctl@127.0.0.1" in texts


def test_set_refuses_a_bad_value_with_the_config_rule_message(waiting_console: Any) -> None:
    config, _ = waiting_console
    before = config.read_text()
    code, refused = ctl_json(config, "set", "coordinator.init_min_clients=0")
    assert (code, refused["code"]) == (ExitCode.REJECTED, "bad_setting")
    assert "must be >= 1" in refused["reason"]
    code, refused = ctl_json(config, "set", "coordinator.no_such_key=1")
    assert (code, refused["code"]) == (ExitCode.REJECTED, "bad_setting")
    assert "no_such_key" in refused["reason"]
    assert config.read_text() == before
    assert ctl_json(config, "status")[1]["snapshot"]["init_min_clients"] == 2


def test_set_refuses_coordinator_settings_outside_waiting_and_paused(
    tmp_path: Path, raw: Callable[..., Any]
) -> None:
    config = write_config(
        tmp_path,
        coordinator={**WAITING, "warmup_time": 120.0, "waiting_for_members_extra_time": 0.0},
        local={"spawn": 0},
    )
    console = HeadlessConsole(config, tmp_path / "run")
    try:
        serving(console)
        for name in ("site-a", "site-b"):  # two raw members that never warm up: Warmup stays
            assert raw(control_endpoint(config), name).join(run_id_of(config)).TYPE == "join_ack"
        console.wait_for_event(lambda e: "Warmup" in e.get("text", ""), timeout=30)
        code, refused = ctl_json(config, "set", "coordinator.total_rounds=3")
        assert (code, refused["code"]) == (ExitCode.REJECTED, "bad_setting")
        assert "WaitingForMembers" in refused["reason"] or "Paused" in refused["reason"]
    finally:
        console.reap()


def test_set_from_a_non_operator_is_denied(tmp_path: Path) -> None:
    with reached_from_afar(tmp_path) as (config, remote, _):
        before = config.read_text()
        code, denied = ctl_json(None, *remote, "set", "coordinator.init_min_clients=3")
        assert (code, denied["code"]) == (ExitCode.DENIED, "not_operator")
        assert config.read_text() == before


def test_kick_ban_refuses_the_node_until_unban(
    waiting_console: Any, raw: Callable[..., Any]
) -> None:
    config, _ = waiting_console
    control, run_id = control_endpoint(config), run_id_of(config)
    assert raw(control, "site-a").join(run_id).TYPE == "join_ack"
    code, banned = ctl_json(config, "kick", "site-a", "--ban")
    assert code == ExitCode.OK, banned
    refused = raw(control, "site-a").join(run_id)
    assert isinstance(refused, Error) and refused.code == "banned"
    code, lifted = ctl_json(config, "unban", "site-a")
    assert code == ExitCode.OK, lifted
    again = raw(control, "site-a").join(run_id)
    assert not (isinstance(again, Error) and again.code == "banned")
    code, unknown = ctl_json(config, "unban", "never-banned")
    assert code == ExitCode.REJECTED, unknown


def test_a_stalled_run_is_rescued_by_ctl_set_and_finishes(tmp_path: Path) -> None:
    """Issue 15: a run that waits for a fourth member that never comes finishes once
    ``ctl set coordinator.init_min_clients=3`` lowers the bar."""
    config = write_config(
        tmp_path,
        coordinator={"init_min_clients": 4, "min_clients": 2, "total_rounds": 2,
                     "rounds_per_epoch": 2},
        local={"spawn": 3},
    )  # fmt: skip
    console = HeadlessConsole(config, tmp_path / "run")
    try:
        console.wait_for_event(
            lambda e: e.get("kind") == "client_joined" and e.get("client_id") == "node-2",
            timeout=120,
        )
        assert ctl_json(config, "status")[1]["snapshot"]["state"] == "WaitingForMembers"
        code, done = ctl_json(config, "set", "coordinator.init_min_clients=3")
        assert code == ExitCode.OK, done
        assert console.wait(timeout=240) == 0, console.output()[-3000:]
        summary = console.read_summary()
        assert (summary["final_state"], summary["accepted_rounds"]) == ("Finished", 2)
        assert "init_min_clients = 3" in config.read_text()
    finally:
        console.reap()  # and the nodes it spawned
