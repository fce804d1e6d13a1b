"""``[security]``: the config section, ``fl-console keygen``, and the console's key handling."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq

from console.cli import main as fl_console
from console.config import ConfigError, SecurityConfig, load_config
from console.keygen import generate_keys
from console.record.eventlog import EventLog
from console.server.security import ConsoleSecurity, Throttle
from transport.keys import read_key_dir, read_keypair, read_public_key

SECTION = """
[security]
curve = true
server_key = "keys/console.key_secret"
authorized_keys = "keys/authorized"
"""


def issues(path: Path) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [(i.key, i.line, i.message) for i in info.value.issues]


# ----------------------------------------------------------------------------- keygen


def test_keygen_writes_the_console_and_node_keys_and_prints_the_data_toml_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    assert fl_console(["keygen", "keys", "--nodes", "2"]) == 0

    out = capsys.readouterr().out
    keys = tmp_path / "keys"
    console_public, _ = read_keypair(keys / "console.key_secret")
    assert read_public_key(keys / "console.key") == console_public
    nodes = {f.name: k for f, k in read_key_dir(keys / "authorized").items()}
    assert nodes == {
        "node-0.key": read_keypair(keys / "node-0.key_secret")[0],
        "node-1.key": read_keypair(keys / "node-1.key_secret")[0],
    }
    for secret in keys.glob("*.key_secret"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    for line in SECTION.strip().splitlines():
        assert line in out  # what to paste into data.toml
    assert "--curve-key node-1.key_secret --server-key console.key" in out
    # ... and what it prints is a valid config next to the keys.
    (tmp_path / "data.toml").write_text(SECTION)
    config = load_config(tmp_path / "data.toml")
    assert config.security.curve and config.security.server_key == keys / "console.key_secret"


def test_keygen_operator_writes_a_key_pair_and_the_operators_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert fl_console(["keygen", "ops", "--operator", "alice"]) == 0
    out = capsys.readouterr().out
    public, _ = read_keypair(tmp_path / "ops" / "alice.key_secret")
    assert f'operators = ["{public.decode()}"]' in out
    assert not (tmp_path / "ops" / "console.key_secret").exists()  # no console key made
    (tmp_path / "data.toml").write_text(f'[security]\noperators = ["{public.decode()}"]\n')
    assert load_config(tmp_path / "data.toml").security.operators == (public.decode(),)
    assert fl_console(["keygen", "ops", "--operator", "alice"]) == 2  # never overwritten


def test_operator_keys_are_admitted_and_only_they_may_act(tmp_path: Path) -> None:
    operator, _ = zmq.curve_keypair()
    security = console_security(tmp_path, operators=(operator.decode(),))
    node0, _ = read_keypair(tmp_path / "keys" / "node-0.key_secret")
    assert operator in security.allowlist and node0 in security.allowlist
    assert security.operator_refusal(operator.decode()) is None
    refusal = security.operator_refusal(node0.decode())
    assert refusal is not None and "[security] operators" in refusal


def test_a_bad_operator_key_is_reported_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "data.toml").write_text('[security]\noperators = ["not-a-key"]\n')
    [(key, line, message)] = issues(tmp_path / "data.toml")
    assert (key, line) == ("security.operators", 2)
    assert "40-character Z85" in message


def test_keygen_again_keeps_the_console_key_and_adds_nodes(tmp_path: Path) -> None:
    first = generate_keys(tmp_path, nodes=1)
    before = first.console_secret.read_bytes()

    again = generate_keys(tmp_path, nodes=2)

    assert again.console_reused and again.console_secret.read_bytes() == before
    assert [s.name for _, s in again.nodes] == ["node-1.key_secret", "node-2.key_secret"]
    assert len(read_key_dir(tmp_path / "authorized")) == 3


def test_keygen_reports_a_broken_console_key_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "console.key_secret").write_text("garbage\n")

    assert fl_console(["keygen", str(tmp_path)]) == 2

    assert "console.key_secret: holds no secret key" in capsys.readouterr().err


def test_a_config_named_keygen_is_not_taken_for_the_subcommand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("keygen.toml").write_text('run_id = "x"\n')
    assert fl_console(["keygen.toml", "--check"]) == 0


# ----------------------------------------------------------------------------- config


def test_security_is_off_by_default(tmp_path: Path) -> None:
    (tmp_path / "data.toml").write_text("")
    assert load_config(tmp_path / "data.toml").security == SecurityConfig()
    assert SecurityConfig().curve is False


def test_curve_without_a_server_key_names_the_key_and_its_line(tmp_path: Path) -> None:
    path = tmp_path / "data.toml"
    path.write_text('run_id = "x"\n\n[security]\ncurve = true\n')

    [(key, line, message)] = issues(path)

    assert (key, line) == ("security.curve", 4)
    assert "needs security.server_key" in message and "fl-console keygen" in message


def test_bad_key_files_and_keys_are_each_reported(tmp_path: Path) -> None:
    generate_keys(tmp_path / "keys", nodes=1)
    (tmp_path / "keys" / "authorized" / "broken.key").write_text("nothing here\n")
    path = tmp_path / "data.toml"
    path.write_text(
        "[security]\n"
        "curve = true\n"
        'server_key = "keys/console.key"\n'  # the public file, not the secret one
        'authorized_keys = "keys/authorized"\n'
        'allowed = ["not-a-key"]\n'
    )

    found = {key: (line, message) for key, line, message in issues(path)}

    assert found["security.server_key"][0] == 3
    assert "holds no secret key (give the .key_secret file)" in found["security.server_key"][1]
    assert found["security.authorized_keys"][0] == 4
    assert "broken.key: not a CURVE key file" in found["security.authorized_keys"][1]
    assert found["security.allowed"][0] == 5
    assert "40-character Z85 CURVE public key" in found["security.allowed"][1]


def test_curve_is_refused_with_served_data_until_the_data_server_has_it(tmp_path: Path) -> None:
    generate_keys(tmp_path / "keys")
    path = tmp_path / "data.toml"
    path.write_text(SECTION + "\n[data]\nserve = true\n")

    [(key, _, message)] = issues(path)

    assert key == "security.curve" and "data.serve" in message


def test_key_paths_need_not_exist_while_curve_is_off(tmp_path: Path) -> None:
    path = tmp_path / "data.toml"
    path.write_text(SECTION.replace("curve = true", "curve = false"))

    security = load_config(path).security

    assert not security.curve and security.server_key == tmp_path / "keys" / "console.key_secret"


# ----------------------------------------------------------------------------- the console


def console_security(
    tmp_path: Path, allowed: tuple[str, ...] = (), operators: tuple[str, ...] = ()
) -> ConsoleSecurity:
    keys = generate_keys(tmp_path / "keys", nodes=1)
    config = SecurityConfig(
        curve=True,
        server_key=keys.console_secret,
        authorized_keys=keys.authorized,
        allowed=allowed,
        operators=operators,
    )
    return ConsoleSecurity(config, EventLog(None))


def test_allowlist_is_the_authorized_files_and_the_allowed_keys(tmp_path: Path) -> None:
    extra, _ = zmq.curve_keypair()
    security = console_security(tmp_path, allowed=(extra.decode(),))
    node0, _ = read_keypair(tmp_path / "keys" / "node-0.key_secret")

    assert set(security.allowlist) == {node0, extra}
    assert security.name_of(node0.decode()) == "node-0.key"


def test_spawned_nodes_get_fresh_allowed_keys_that_are_deleted_at_the_end(tmp_path: Path) -> None:
    security = console_security(tmp_path)

    args = security.spawn_args("node-7")

    assert args[0] == "--curve-key" and args[2] == "--server-key"
    secret, console_key = Path(args[1]), Path(args[3])
    public, _ = read_keypair(secret)
    assert public in security.allowlist
    assert read_public_key(console_key) == security.public
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    security.close()
    assert not secret.parent.exists()


def test_a_node_id_stays_bound_to_the_key_it_joined_with(tmp_path: Path) -> None:
    security = console_security(tmp_path)
    security.joined("node-0", "A" * 40)

    assert security.check("node-0", "A" * 40) is None
    assert security.check("never-joined", "B" * 40) is None  # the coordinator says not_member
    why = security.check("node-0", "B" * 40)
    assert why is not None and "joined with key AAAAAAAA" in why


def test_a_refused_key_is_logged_once_then_counted(tmp_path: Path) -> None:
    events = EventLog(tmp_path / "events.jsonl")
    security = console_security(tmp_path)
    security.events = events
    key, _ = zmq.curve_keypair()

    for t in (1.0, 2.0, 3.0):
        security.refuse("10.0.0.9", key, now=t)
    security.refuse("10.0.0.9", key, now=40.0)

    lines = [line for line in events.tail if line.kind == "reject"]
    assert security.refused == 4 and len(lines) == 2
    assert lines[0].level == "warning"
    assert f"connection from 10.0.0.9 refused: key {key.decode()} is not authorized" in (
        lines[0].text
    )
    assert "(and 2 more times since it was last logged)" in lines[1].text


def test_throttle_says_a_thing_again_after_its_interval() -> None:
    throttle = Throttle(every=10.0)
    assert throttle.note("x", 0.0) == 0
    assert throttle.note("x", 1.0) is None and throttle.note("y", 1.0) == 0
    assert throttle.note("x", 10.0) == 1
