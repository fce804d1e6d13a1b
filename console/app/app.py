"""The operator console: renders the backend's ConsoleView a few times a second.

Widgets render, the backend decides. On mount the app starts the backend (the real server
binds its sockets on Textual's loop and spawns the local nodes); a timer reads
``backend.view()`` at ``refresh_hz`` and hands each widget its part inside one
``batch_update``. Every operator key calls the backend's API (which writes the event log)
and is also a command in the palette. Quit, or any other exit, stops the backend.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.timer import Timer
from textual.widgets import DataTable, Footer

from console.app.backend import ActionResult, ConsoleBackend
from console.app.commands import OperatorCommands
from console.app.screens import HelpScreen, KeyHelp, KickConfirm
from console.app.settings import SettingsScreen
from console.app.widgets import (
    ClientsTable,
    EventLogView,
    MetricsChart,
    RoundsTable,
    RunHeader,
    WitnessPanel,
)
from console.record.view import ConsoleView
from transport.exit_codes import ExitCode
from transport.state import RunState

log = logging.getLogger(__name__)

OPERATOR_ACTIONS = frozenset({"pause", "resume", "kick", "settings", "end_phase"})
REPLAY_ACTIONS = frozenset({"replay_toggle", "replay_step", "replay_seek", "replay_speed"})
_KEY_NAMES = {"question_mark": "?", "space": "space", "right": "→", "left": "←"}

CSS = """
Screen { layout: vertical; overflow: hidden; }
#clients, #rounds, #witnesses, #chart, #events {
    border: round $primary 40%;
    border-title-color: $text;
    border-title-style: bold;
}
#clients:focus-within, #rounds:focus-within { border: round $accent; }
#clients { height: 1fr; min-height: 6; }
DataTable { scrollbar-size-vertical: 1; }
#middle { height: 15; }
#round-pane { width: 1fr; }
#rounds { height: 1fr; min-height: 4; }
#witnesses { height: auto; max-height: 8; padding: 0 1; }
#chart { width: 40; }
#events { height: 9; padding: 0 1; overflow-x: hidden; }
Screen.-narrow #chart { display: none; }
Screen.-short #clients, Screen.-short #rounds, Screen.-short #witnesses,
Screen.-short #chart, Screen.-short #events { border: none; border-top: round $primary 40%; }
Screen.-short #clients:focus-within, Screen.-short #rounds:focus-within {
    border: none; border-top: round $accent;
}
Screen.-short #middle { height: 9; }
Screen.-short #witnesses { max-height: 4; }
Screen.-short #events { height: 4; }
"""


class ConsoleApp(App[int]):
    """``ConsoleApp(backend)``: the live run (LiveBackend), a replay, or a fixed snapshot."""

    TITLE = "fl-console"
    CSS = CSS
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    COMMANDS = App.COMMANDS | {OperatorCommands}
    BINDINGS = [
        Binding("p", "pause", "Pause", id="pause"),
        Binding("r", "resume", "Resume", id="resume"),
        Binding("k", "kick", "Kick", id="kick"),
        Binding("o", "settings", "Settings", id="settings"),
        Binding("e", "end_phase", "End phase", id="end_phase"),
        Binding("space", "replay_toggle", "Play/Stop", priority=True, id="replay_toggle"),
        Binding("right,n", "replay_step(1)", "Step", priority=True, id="replay_next"),
        Binding("left,p", "replay_step(-1)", "Back", priority=True, id="replay_back"),
        Binding("home", "replay_seek(0)", "Start", priority=True, show=False, id="replay_start"),
        Binding("end", "replay_seek(-1)", "End", priority=True, show=False, id="replay_end"),
        Binding("plus", "replay_speed(2.0)", "Faster", show=False, id="replay_faster"),
        Binding("minus", "replay_speed(0.5)", "Slower", show=False, id="replay_slower"),
        Binding("question_mark,f1", "help", "Help", id="help"),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(
        self,
        backend: ConsoleBackend,
        *,
        clock: Callable[[], float] = time.monotonic,
        refresh_hz: float = 5.0,
        nodes: object | None = None,
    ) -> None:
        super().__init__()
        self.theme = "textual-dark"
        self.backend = backend
        self.clock = clock
        self.refresh_hz = refresh_hz
        self.nodes = nodes  # extra children to stop on exit (anything with ``stop()``)
        self.replaying = callable(getattr(backend, "step", None))
        self.view: ConsoleView | None = None
        self.last_refresh_s = 0.0
        self._bindings_key: tuple[object, ...] | None = None
        self._stopped = False
        self._view_error = ""
        self._timer: Timer | None = None

    @property
    def operable(self) -> bool:
        """Whether operator keys apply (not in a replay; in an attached screen, if allowed)."""
        return bool(getattr(self.backend, "operable", True))

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        yield ClientsTable(id="clients")
        with Horizontal(id="middle"):
            with Vertical(id="round-pane"):
                yield RoundsTable(id="rounds")
                yield WitnessPanel(id="witnesses")
            yield MetricsChart(id="chart")
        yield EventLogView(id="events")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#events", EventLogView).border_title = "events"
        start = getattr(self.backend, "start_async", None)
        if start is not None:
            try:
                await start()
            except Exception as exc:  # noqa: BLE001 - shown to the operator, then exit
                log.exception("the console could not start")
                await self._stop_backend()
                code = getattr(exc, "exit_code", ExitCode.USAGE)  # e.g. attach: unreachable
                self.exit(code, return_code=code, message=f"fl-console could not start: {exc}")
                return
        self.refresh_view()
        # Bindings refreshed during on_mount are dropped (the app is not mounted yet): the
        # footer would keep the keys of before the backend started (an attached screen's
        # operator keys appear only once the console says this screen may act).
        self.call_after_refresh(self.refresh_bindings)
        if self.refresh_hz > 0:
            self._timer = self.set_interval(1 / self.refresh_hz, self.refresh_view, name="refresh")

    async def on_unmount(self) -> None:
        await self._stop_backend()

    # ------------------------------------------------------------------ rendering

    def refresh_view(self) -> None:
        """Read one snapshot and render it; widgets skip whatever did not change."""
        if self._stopped or not self.is_running:  # shutting down: widgets may be gone
            return
        started = self.clock()
        try:
            view = self.backend.view()
        except Exception as exc:  # noqa: BLE001 - a bad view must not take the run down with it
            if str(exc) != self._view_error:
                self._view_error = str(exc)
                log.exception("building the console's view failed")
                self.notify(f"the view could not be built: {exc}", severity="error")
            return
        self._view_error = ""
        if view is not self.view:
            self.view = view
            with self.batch_update():
                self.query_one(RunHeader).show(view)
                self.query_one(ClientsTable).show(view.clients)
                rounds = self.query_one(RoundsTable)
                rounds.show(view.rounds)
                self.query_one(WitnessPanel).show(rounds.selected)
                self.query_one(MetricsChart).show(view.rounds)
                self.query_one(EventLogView).show(view.log)
            key = (view.run.state, view.run.pending_pause, self.operable)
            if key != self._bindings_key:
                self._bindings_key = key
                self.refresh_bindings()
        self.last_refresh_s = self.clock() - started

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if isinstance(event.data_table, RoundsTable):
            self.query_one(WitnessPanel).show(event.data_table.selected)

    # ------------------------------------------------------------------ which keys apply

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Operator keys only where the run takes them; replay keys only in a replay; none
        of either while a dialog or the command palette is open (its input has the keys)."""
        if action in OPERATOR_ACTIONS or action in REPLAY_ACTIONS or action == "help":
            if isinstance(self.screen, ModalScreen):
                return False
        return self.command_allowed(action)

    def command_allowed(self, action: str) -> bool | None:
        """Whether ``action`` applies to the run shown (False: hidden, None: greyed out)."""
        if action in OPERATOR_ACTIONS:
            # A backend may offer only some (an attached screen: what ctl can ask for).
            offered = getattr(self.backend, "operator_actions", OPERATOR_ACTIONS)
            if action not in offered:
                return False
            return self.operable and self._operator_allowed(action)
        if action in REPLAY_ACTIONS:
            return self.replaying
        return True

    def _operator_allowed(self, action: str) -> bool | None:
        state = None if self.view is None else self.view.run.state
        pending = self.view is not None and self.view.run.pending_pause
        if action == "pause":
            return state not in (RunState.PAUSED, RunState.FINISHED) and not pending
        if action == "resume":
            return state is RunState.PAUSED
        if action == "end_phase":
            return state not in (RunState.PAUSED, RunState.FINISHED)
        if action == "settings":
            return True if callable(getattr(self.backend, "settings", None)) else None
        return state is not RunState.FINISHED  # kick

    def help_keys(self) -> list[KeyHelp]:
        keys: list[KeyHelp] = []
        for binding in self.BINDINGS:
            assert isinstance(binding, Binding)
            action = binding.action.split("(", 1)[0]
            if action in OPERATOR_ACTIONS and not self.operable:
                continue
            if action in REPLAY_ACTIONS and not self.replaying:
                continue
            names = ", ".join(_KEY_NAMES.get(k, k) for k in binding.key.split(","))
            help_id = binding.id or ""
            if help_id == "quit" and getattr(self.backend, "leaves_run", False):
                help_id = "quit_attached"
            keys.append((names, _HELP.get(help_id, binding.description)))
        keys += [
            ("↑ ↓, pgup, pgdn", "Move the cursor in the focused table"),
            ("tab", "Switch between the clients and the rounds table"),
            ("ctrl+p", "Command palette: every action above by name"),
        ]
        return keys

    # ------------------------------------------------------------------ operator actions

    def _operate(
        self, what: str, call: Callable[[], ActionResult | Awaitable[ActionResult]]
    ) -> ActionResult | None:
        """Call the backend; a remote backend (attach) answers later: its answer is awaited
        in a worker and shown when it comes (the return value is then None)."""
        try:
            result = call()
        except Exception as exc:  # noqa: BLE001 - an operator action never kills the console
            log.exception("operator action %s failed", what)
            self.notify(f"{what} failed: {exc}", severity="error")
            return None
        if inspect.isawaitable(result):
            self.run_worker(self._settle(what, result), group="operator")
            return None
        return self._settled(what, result)

    async def _settle(self, what: str, pending: Awaitable[ActionResult]) -> None:
        try:
            result = await pending
        except Exception as exc:  # noqa: BLE001 - an operator action never kills the console
            log.exception("operator action %s failed", what)
            self.notify(f"{what} failed: {exc}", severity="error")
            return
        self._settled(what, result)

    def _settled(self, what: str, result: ActionResult) -> ActionResult:
        rejection = getattr(result, "rejection", None)
        if rejection is not None:
            self.notify(f"{what} refused: {rejection.reason}", severity="warning")
        self.refresh_view()
        return result

    def action_pause(self) -> None:
        self._operate("pause", self.backend.pause)

    def action_resume(self) -> None:
        self._operate("resume", self.backend.resume)

    def action_end_phase(self) -> None:
        self._operate("end phase", self.backend.end_phase)

    def action_settings(self) -> None:
        rows = getattr(self.backend, "settings", None)
        if rows is None:
            self.notify("this console has no settings to change", severity="warning")
            return
        if not isinstance(self.screen, SettingsScreen):
            self.push_screen(SettingsScreen(rows, self._apply_setting))

    def _apply_setting(self, key: str, value: str) -> tuple[bool, str]:
        try:
            result = self.backend.set_settings({key: value})  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - an operator action never kills the console
            log.exception("changing %s failed", key)
            return False, f"{key} not changed: {exc}"
        self.refresh_view()
        return result.ok, result.message

    def action_kick(self) -> None:
        client = self.query_one(ClientsTable).selected
        if client is None:
            self.notify("select a client to kick first", severity="warning")
            return
        if client.status == "kicked":
            self.notify(f"{client.id} is already kicked", severity="warning")
            return
        self.push_screen(KickConfirm(client), partial(self._kick_confirmed, client.id))

    def _kick_confirmed(self, client_id: str, choice: str | None) -> None:
        if choice == "kick":
            self._operate(f"kick {client_id}", partial(self.backend.kick, client_id))
        elif choice == "ban":
            self._operate(f"ban {client_id}", partial(self.backend.kick, client_id, ban=True))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.help_keys()))

    async def action_quit(self) -> None:
        await self._stop_backend()
        self.exit(0)

    async def _stop_backend(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._timer is not None:
            self._timer.stop()
        stop = getattr(self.backend, "stop_async", None)
        try:
            if stop is not None:
                await stop()
        finally:
            if self.nodes is not None:
                self.nodes.stop()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ replay

    def action_replay_toggle(self) -> None:
        self.backend.toggle_play()  # type: ignore[attr-defined]
        self.refresh_view()

    def action_replay_step(self, delta: int) -> None:
        self.backend.step(delta)  # type: ignore[attr-defined]
        self.refresh_view()

    def action_replay_seek(self, index: int) -> None:
        self.backend.seek(index)  # type: ignore[attr-defined]
        self.refresh_view()

    def action_replay_speed(self, factor: float) -> None:
        self.backend.set_speed(self.backend.speed * factor)  # type: ignore[attr-defined]
        self.refresh_view()


_HELP = {
    "pause": "Pause the run (at once while waiting or warming up, else after Cooldown)",
    "resume": "Resume a paused run",
    "kick": "Kick (or kick and ban) the selected client; asks first",
    "settings": "Settings: every data.toml value, its help; change one live",
    "end_phase": "End the current phase now, as if its deadline had passed",
    "replay_toggle": "Play / stop the replay",
    "replay_next": "Step to the next recorded view",
    "replay_back": "Step back to the previous recorded view",
    "replay_start": "Go to the first recorded view",
    "replay_end": "Go to the last recorded view",
    "replay_faster": "Play twice as fast",
    "replay_slower": "Play half as fast",
    "help": "This help",
    "quit": "Quit: stops the spawned nodes and the server",
    "quit_attached": "Quit this screen: the run and its console go on",
}
