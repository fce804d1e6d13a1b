"""``fl-console attach`` (and ``ctl`` on an interactive console), under Textual's pilot.

A real :class:`ConsoleServer` serves on its own loop thread (``ServerThread``: real sockets on
127.0.0.1); the app under the pilot is attached to it over those sockets (``AttachBackend``), as
another terminal would be. Its keys act on that server; quitting leaves it running.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Footer

from console.app.app import ConsoleApp
from console.app.backend import LiveBackend
from console.app.screens import HelpScreen, KickConfirm
from console.app.widgets import ClientsTable, RunHeader
from console.config import SecurityConfig
from console.remote.attach import AttachBackend
from console.remote.attach import main as attach_main
from console.remote.client import Target, client_curve
from tests.console.pilot import run_console
from tests.e2e.helpers import ServerThread, make_config
from tests.e2e.operators import ctl, ctl_json, non_loopback_ipv4
from tests.factories import free_ports
from transport import messages as m
from transport.codec import encode
from transport.exit_codes import ExitCode
from transport.keys import read_keypair, write_keypair
from transport.net import with_host
from transport.state import ClientStatus, RunState

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerThread]:
    config = make_config(tmp_path, health_timeout=60.0, init_min_clients=3)
    server = ServerThread(config, tmp_path / "run")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def join(server: ServerThread, node_id: str) -> None:
    frames = encode(
        m.Join(run_id=server.config.run_id, node_id=node_id, gossip_endpoint="tcp://127.0.0.1:9")
    )
    replies = server.call(lambda s: s.handle(node_id.encode(), frames, 64, address="127.0.0.1"))
    assert isinstance(replies[0], m.JoinAck), replies


def attached(server: ServerThread, control: str | None = None) -> tuple[AttachBackend, ConsoleApp]:
    target = Target(control=control or server.endpoints.control, run_id=server.config.run_id)
    backend = AttachBackend(target, interval=0.1, timeout=3.0)
    return backend, ConsoleApp(backend, refresh_hz=10)


async def until(pilot: Pilot, check: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def test_attached_screen_shows_the_run_and_its_keys_act_on_it(served: ServerThread) -> None:
    join(served, "node-a")
    join(served, "node-b")
    backend, app = attached(served)

    async def scenario(pilot: Pilot) -> None:
        table = app.query_one(ClientsTable)
        await until(pilot, lambda: table.row_count == 2, "the two clients' rows")
        assert backend.operable and app.check_action("pause", ()) is True
        header = str(app.query_one(RunHeader).render())
        assert "attached: operator" in header and "WaitingForMembers" in header
        await pilot.press("p")
        await until(pilot, lambda: served.snapshot().state is RunState.PAUSED, "paused")
        await until(pilot, lambda: "PAUSED" in str(app.query_one(RunHeader).render()), "header")
        assert app.check_action("pause", ()) is False  # resume is offered instead
        await pilot.press("r")
        await until(
            pilot, lambda: served.snapshot().state is RunState.WAITING_FOR_MEMBERS, "resumed"
        )
        await until(pilot, lambda: table.cursor_key is not None, "a selected row")
        await pilot.press("down")
        assert table.cursor_key == "node-b"
        await pilot.press("k")
        assert isinstance(app.screen, KickConfirm)
        await pilot.press("y")
        await until(
            pilot,
            lambda: served.snapshot().client("node-b").status is ClientStatus.KICKED,
            "node-b kicked",
        )
        await until(pilot, lambda: table.get_cell("node-b", "state").plain == "kicked", "row")
        events = [e["text"] for e in served.events("operator") if e["who"] == "ctl@127.0.0.1"]
        assert any(text.endswith(": pause") for text in events)
        assert any(text.endswith(": kick node-b") for text in events)
        await pilot.press("e")  # refused while waiting for members: shown, not raised
        await until(
            pilot, lambda: any("refused" in n.message for n in app._notifications), "refusal"
        )

    run_console(app, scenario)


def test_quitting_an_attached_screen_leaves_the_run_alone(served: ServerThread) -> None:
    join(served, "node-a")
    backend, app = attached(served)

    async def scenario(pilot: Pilot) -> None:
        await until(pilot, lambda: app.query_one(ClientsTable).row_count == 1, "the row")
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert any("the run and its console go on" in text for _, text in app.help_keys())
        await pilot.press("escape")
        await pilot.press("q")
        await pilot.pause()

    run_console(app, scenario)
    assert app.return_code == 0
    assert backend.client is None  # its sockets are closed
    snap = served.snapshot()  # the console still serves, the client still there
    assert snap.state is RunState.WAITING_FOR_MEMBERS
    assert snap.client("node-a").status is ClientStatus.PENDING
    assert served.call(lambda s: all(not t.done() for t in s._tasks))
    assert not served.events("operator")


def test_a_screen_that_may_not_act_hides_the_operator_keys(tmp_path: Path) -> None:
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    config = make_config(tmp_path, health_timeout=60.0)
    config = replace(config, server=replace(config.server, host="0.0.0.0"))
    server = ServerThread(config, tmp_path / "run")
    server.start()
    try:
        join(server, "node-a")
        backend, app = attached(server, with_host(server.endpoints.control, address))

        async def scenario(pilot: Pilot) -> None:
            await until(pilot, lambda: app.query_one(ClientsTable).row_count == 1, "the row")
            assert backend.operable is False and "loopback" in backend.refusal
            assert "attached: read only" in str(app.query_one(RunHeader).render())
            for action in ("pause", "kick", "end_phase", "resume"):
                assert app.check_action(action, ()) is False, action
            assert not any(keys == "p" for keys, _ in app.help_keys())
            await pilot.press("p")  # hidden: nothing is sent
            await pilot.pause(0.3)

        run_console(app, scenario)
        assert server.snapshot().state is RunState.WAITING_FOR_MEMBERS
    finally:
        server.stop()


def test_attaching_to_no_console_exits_4_saying_so(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    backend = AttachBackend(Target(control=f"tcp://127.0.0.1:{port}", run_id="r"), timeout=0.5)
    app = ConsoleApp(backend, refresh_hz=10)

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.1)

    run_console(app, scenario)
    assert app.return_code == ExitCode.UNREACHABLE


def test_attaching_with_a_wrong_run_id_exits_3(served: ServerThread) -> None:
    target = Target(control=served.endpoints.control, run_id="another-run")
    app = ConsoleApp(AttachBackend(target, timeout=3.0), refresh_hz=10)

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.1)

    run_console(app, scenario)
    assert app.return_code == ExitCode.REJECTED


def test_the_attached_view_follows_the_broadcast(served: ServerThread) -> None:
    """The state comes from the PUB at once, the rows with the next view request."""
    backend = AttachBackend(
        Target(control=served.endpoints.control, run_id=served.config.run_id), interval=30.0
    )

    async def main() -> None:
        await backend.start_async()
        try:
            assert backend.view().run.state is RunState.WAITING_FOR_MEMBERS
            served.call(lambda s: s.pause())
            deadline = time.monotonic() + 5
            while backend.view().run.state is not RunState.PAUSED:
                assert time.monotonic() < deadline, "the broadcast's state never came"
                await asyncio.sleep(0.02)
        finally:
            await backend.stop_async()

    asyncio.run(main())


def test_ctl_acts_on_an_interactive_console_and_its_screen_shows_it(tmp_path: Path) -> None:
    """``fl-console ctl`` (a real process) against the interactive console (the app, with its
    server on the app's loop): the operator's screen shows the pause ctl asked for."""
    config = make_config(tmp_path, health_timeout=60.0)
    backend = LiveBackend(config, run_dir=tmp_path / "run")
    app = ConsoleApp(backend, refresh_hz=10)

    async def scenario(pilot: Pilot) -> None:
        assert backend.server is not None
        remote = ("--connect", backend.server.endpoints.control, "--run-id", config.run_id)
        done = await asyncio.to_thread(ctl, None, *remote, "pause")
        assert done.returncode == ExitCode.OK, done.stderr
        await until(pilot, lambda: "PAUSED" in str(app.query_one(RunHeader).render()), "PAUSED")
        assert app.check_action("resume", ()) is True
        code, status = await asyncio.to_thread(ctl_json, None, *remote, "status")
        assert code == ExitCode.OK and status["snapshot"]["state"] == "Paused"

    run_console(app, scenario)


class _SlowAttach(AttachBackend):
    """Attaching takes a while (a busy machine, a far console): the footer must catch up."""

    async def start_async(self) -> None:
        await asyncio.sleep(1.5)
        await super().start_async()


def test_the_footer_shows_the_operator_keys_once_a_slow_attach_is_allowed(
    served: ServerThread,
) -> None:
    target = Target(control=served.endpoints.control, run_id=served.config.run_id)
    backend = _SlowAttach(target, interval=5.0)
    app = ConsoleApp(backend, refresh_hz=10)

    def footer_keys() -> list[str]:
        return [key.key for key in app.query_one(Footer).query("FooterKey")]  # type: ignore[attr-defined]

    async def scenario(pilot: Pilot) -> None:
        await until(pilot, lambda: backend.operable, "the console's answer")
        await until(pilot, lambda: "p" in footer_keys(), "the pause key in the footer", 3.0)
        assert {"p", "k", "e"} <= set(footer_keys())

    run_console(app, scenario)


def test_with_curve_an_operator_key_may_act_and_another_admitted_key_only_watch(
    tmp_path: Path,
) -> None:
    console_public, console_secret = write_keypair(tmp_path / "keys", "console")
    _, operator_secret = write_keypair(tmp_path / "keys", "alice")
    _, reader_secret = write_keypair(tmp_path / "keys", "bob")
    operator_key, reader_key = read_keypair(operator_secret)[0], read_keypair(reader_secret)[0]
    config = make_config(tmp_path, health_timeout=60.0)
    security = SecurityConfig(
        curve=True,
        server_key=console_secret,
        allowed=(reader_key.decode(),),
        operators=(operator_key.decode(),),
    )
    server = ServerThread(replace(config, security=security), tmp_path / "run")
    server.start()
    try:
        join(server, "node-a")
        for secret, may_act in ((operator_secret, True), (reader_secret, False)):
            target = Target(
                control=server.endpoints.control,
                run_id=config.run_id,
                curve=client_curve(secret, console_public),
            )
            # No view request after the first: a newer seq can only come over the CURVE SUB.
            backend = AttachBackend(target, interval=60.0, timeout=3.0)
            app = ConsoleApp(backend, refresh_hz=10)

            async def scenario(
                pilot: Pilot, app: ConsoleApp = app, may_act: bool = may_act
            ) -> None:
                await until(pilot, lambda: app.query_one(ClientsTable).row_count == 1, "row")
                assert app.check_action("pause", ()) is may_act
                before = app.backend.view().seq
                server.call(lambda s: s._broadcast())
                await until(pilot, lambda: app.backend.view().seq > before, "the broadcast")

            run_console(app, scenario)
            assert backend.operable is may_act, secret.name
    finally:
        server.stop()


def test_attach_without_a_console_to_name_or_with_a_bad_timeout_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert attach_main([]) == ExitCode.USAGE
    assert "--connect and --run-id" in capsys.readouterr().err
    assert attach_main(["--connect", "tcp://127.0.0.1:9", "--run-id", "r", "--timeout", "0"]) == 2
    assert "--timeout must be > 0" in capsys.readouterr().err
    assert attach_main(["--connect", "tcp://127.0.0.1:9", "--run-id", "r", "--key", "nope"]) == 2
    assert "--server-key" in capsys.readouterr().err


def test_an_attached_screen_follows_a_console_restarted_at_the_same_address(
    tmp_path: Path,
) -> None:
    """The new console's seq starts again; its state and rows still replace the old ones."""
    state_port, control_port = free_ports(2)
    config = make_config(
        tmp_path, health_timeout=60.0, state_port=state_port, control_port=control_port
    )
    first = ServerThread(config, tmp_path / "run-1")
    first.start()
    servers = [first]
    try:
        join(first, "node-a")
        first.call(lambda s: [s._broadcast() for _ in range(50)])  # the old seq runs ahead
        backend, app = attached(first)
        backend.timeout = 1.0

        async def scenario(pilot: Pilot) -> None:
            table = app.query_one(ClientsTable)
            await until(pilot, lambda: table.row_count == 1, "node-a's row")
            await asyncio.to_thread(first.stop)
            await until(pilot, lambda: "no answer" in backend.view().notes["attached"], "stale")
            second = ServerThread(config, tmp_path / "run-2")
            servers.append(second)
            await asyncio.to_thread(second.start)
            await asyncio.to_thread(second.call, lambda s: s.pause())
            await until(pilot, lambda: backend.view().run.state is RunState.PAUSED, "Paused")
            await until(pilot, lambda: table.row_count == 0, "the new console's rows")
            assert "no answer" not in backend.view().notes["attached"]

        run_console(app, scenario)
    finally:
        for server in servers:
            server.stop()
