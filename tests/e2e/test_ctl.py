"""``fl-console ctl`` against a live headless console (a real process), every verb and refusal.

The console runs with no spawned nodes, so it waits for members as long as the test needs; a
raw DEALER joins as ``site-a`` (a real wire client) to give ``kick`` someone to kick. ``set``,
``kick --ban`` and ``unban`` are in ``test_ctl_settings.py``.
"""

from __future__ import annotations

import time
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
from tests.factories import free_ports, write_config
from transport.exit_codes import ExitCode
from transport.keys import read_keypair, write_keypair

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_every_verb_acts_on_a_live_headless_console_or_says_why_not(
    waiting_console: Any, raw: Callable[..., Any]
) -> None:
    config, console = waiting_console
    code, status = ctl_json(config, "status")
    assert code == ExitCode.OK
    assert status["ok"] and status["operator"] and status["who"] == "ctl@127.0.0.1"
    assert status["snapshot"]["state"] == "WaitingForMembers"
    assert status["snapshot"]["clients"] == []

    node = raw(control_endpoint(config), "site-a")
    assert node.join(run_id_of(config)).TYPE == "join_ack"
    human = ctl(config, "status")
    assert human.returncode == ExitCode.OK, human.stderr
    assert "WaitingForMembers" in human.stdout and "site-a" in human.stdout
    assert "may act: yes" in human.stdout

    # Wrong state: nothing to end while waiting for members; nothing to resume unless paused.
    code, refused = ctl_json(config, "end-phase")
    assert (code, refused["ok"], refused["code"]) == (ExitCode.REJECTED, False, "wrong_state")
    assert "more member" in refused["reason"]
    resume = ctl(config, "resume")
    assert resume.returncode == ExitCode.REJECTED
    assert "resume refused (wrong_state)" in resume.stderr

    pause = ctl(config, "pause")
    assert pause.returncode == ExitCode.OK, pause.stderr
    assert "Paused" in pause.stdout
    assert ctl_json(config, "status")[1]["snapshot"]["state"] == "Paused"
    code, again = ctl_json(config, "pause")
    assert (code, again["code"]) == (ExitCode.REJECTED, "wrong_state")
    code, resumed = ctl_json(config, "resume")
    assert code == ExitCode.OK and "WaitingForMembers" in resumed["message"]

    code, kicked = ctl_json(config, "kick", "site-a")
    assert code == ExitCode.OK, kicked
    clients = ctl_json(config, "status")[1]["snapshot"]["clients"]
    assert [(c["id"], c["status"]) for c in clients] == [("site-a", "kicked")]
    code, twice = ctl_json(config, "kick", "site-a")
    assert (code, twice["code"]) == (ExitCode.REJECTED, "duplicate")
    code, nobody = ctl_json(config, "kick", "nobody")
    assert (code, nobody["code"]) == (ExitCode.REJECTED, "not_member")

    by_ctl = [
        (e.get("level", "info"), e["text"])
        for e in console.events_seen()
        if e.get("kind") == "operator" and e.get("who") == "ctl@127.0.0.1"
    ]  # every action is logged with who asked
    for done in ("pause", "resume", "kick site-a"):
        assert any(level == "info" and text.endswith(done) for level, text in by_ctl), done
    assert any(level == "warning" and "end phase refused" in text for level, text in by_ctl)
    assert console.alive  # nothing ctl did stopped the console


def test_bad_arguments_and_a_wrong_run_id_are_refused_with_the_reason(
    waiting_console: Any,
) -> None:
    config, _ = waiting_console
    bad_id = ctl(config, "kick", "no spaces allowed")
    assert bad_id.returncode == ExitCode.USAGE
    assert "node id must be" in bad_id.stderr
    bad_set = ctl(config, "set", "learning_rate")
    assert bad_set.returncode == ExitCode.USAGE and "SECTION.KEY=VALUE" in bad_set.stderr
    no_wait = ctl(config, "status", "--timeout", "0")
    assert no_wait.returncode == ExitCode.USAGE and "--timeout must be > 0" in no_wait.stderr
    no_verb = ctl(config, "reboot")
    assert no_verb.returncode == ExitCode.USAGE and "invalid choice" in no_verb.stderr
    control = control_endpoint(config)
    code, wrong = ctl_json(None, "--connect", control, "--run-id", "other-run", "status")
    assert (code, wrong["code"]) == (ExitCode.REJECTED, "wrong_run_id")
    code, right = ctl_json(None, "--connect", control, "--run-id", run_id_of(config), "status")
    assert code == ExitCode.OK and right["snapshot"]["run_id"] == run_id_of(config)


def test_no_console_is_a_clear_timeout(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    started = time.monotonic()
    code, answer = ctl_json(
        None, "--connect", f"tcp://127.0.0.1:{port}", "--run-id", "r", "--timeout", "1", "status"
    )
    assert (code, answer["code"]) == (ExitCode.UNREACHABLE, "unreachable")
    assert "no console answered" in answer["reason"]
    assert time.monotonic() - started < 30


def test_without_curve_only_loopback_may_act_and_anyone_may_read(tmp_path: Path) -> None:
    with reached_from_afar(tmp_path) as (config, remote, address):
        code, status = ctl_json(None, *remote, "status")
        assert code == ExitCode.OK
        assert status["operator"] is False and status["who"] == f"ctl@{address}"
        assert "loopback" in status["refusal"]
        code, denied = ctl_json(None, *remote, "pause")
        assert (code, denied["code"]) == (ExitCode.DENIED, "not_operator")
        assert "loopback" in denied["reason"]
        assert ctl_json(config, "status")[1]["snapshot"]["state"] == "WaitingForMembers"
        code, _ = ctl_json(config, "pause")  # the same console, from loopback
        assert code == ExitCode.OK


def test_with_curve_only_operator_keys_may_act(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    console_public, console_secret = write_keypair(keys, "console")
    (keys / "authorized").mkdir()  # the data.toml's authorized_keys: no node keys
    _, operator_secret = write_keypair(tmp_path / "operator", "alice")
    _, reader_secret = write_keypair(tmp_path / "reader", "bob")
    _, stranger_secret = write_keypair(tmp_path / "stranger", "eve")
    operator_key, _ = read_keypair(operator_secret)
    reader_key, _ = read_keypair(reader_secret)
    config = write_config(
        tmp_path,
        coordinator=WAITING,
        local={"spawn": 0},
        security={
            "curve": True,
            "server_key": str(console_secret),
            "allowed": [reader_key.decode()],  # admitted (may read), not an operator
            "operators": [operator_key.decode()],
        },
    )
    console = HeadlessConsole(config, tmp_path / "run")
    try:
        serving(console)
        as_operator = ("--key", str(operator_secret))
        as_reader = ("--key", str(reader_secret), "--server-key", str(console_public))
        code, status = ctl_json(config, *as_reader, "status")
        assert code == ExitCode.OK and status["operator"] is False
        assert "operators" in status["refusal"]
        code, denied = ctl_json(config, *as_reader, "pause")
        assert (code, denied["code"]) == (ExitCode.DENIED, "not_operator")
        code, status = ctl_json(config, *as_operator, "status")
        assert code == ExitCode.OK and status["operator"] is True
        assert status["who"] == operator_key.decode()[:8] + "…"
        code, paused = ctl_json(config, *as_operator, "pause")
        assert code == ExitCode.OK and "Paused" in paused["message"]
        code, stranger = ctl_json(config, "--key", str(stranger_secret), "--timeout", "2", "status")
        assert (code, stranger["code"]) == (ExitCode.UNREACHABLE, "unreachable")
        assert "refused this operator key" in stranger["reason"]
        no_key = ctl(config, "status")
        assert no_key.returncode == ExitCode.USAGE and "--key" in no_key.stderr
    finally:
        console.reap()
