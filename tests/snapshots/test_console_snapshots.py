"""Snapshot tests of the operator console, built from fixed fake ConsoleSnapshots.

No sockets and no wall clock: the app renders a StaticBackend's snapshot, and every time on
screen (countdown, heartbeat ages, log times) comes from the snapshot itself. Fixed terminal
sizes, Textual's default dark theme, nothing that blinks.
"""

from __future__ import annotations

from console.app.app import ConsoleApp
from console.app.backend import StaticBackend
from console.config import load_config
from console.config.edit import Setting, settings
from console.record.replay import RecordedView, Recording, ReplayBackend
from console.record.view import ConsoleView
from console.remote.attach import AttachBackend
from console.remote.client import Target
from console.server import SettingsResult
from tests.factories import REPO
from tests.snapshots.fixtures import finished_view, mid_round_view, waiting_view

WIDE = (120, 40)
SMALL = (80, 24)


def make_app(view: ConsoleView) -> ConsoleApp:
    return ConsoleApp(StaticBackend(view), clock=lambda: 0.0)


def test_waiting_for_members_shows_how_many_more_are_needed(snap_compare) -> None:
    assert snap_compare(make_app(waiting_view()), terminal_size=WIDE)


def test_waiting_for_members_at_80x24(snap_compare) -> None:
    assert snap_compare(make_app(waiting_view()), terminal_size=SMALL)


def test_mid_round_with_a_dropped_client_and_a_disagreeing_witness(snap_compare) -> None:
    assert snap_compare(make_app(mid_round_view()), terminal_size=WIDE)


def test_mid_round_at_80x24(snap_compare) -> None:
    assert snap_compare(make_app(mid_round_view()), terminal_size=SMALL)


def test_finished_run_shows_the_checkpoint_and_every_round(snap_compare) -> None:
    assert snap_compare(make_app(finished_view()), terminal_size=WIDE)


def test_help_screen_lists_the_keys(snap_compare) -> None:
    assert snap_compare(make_app(mid_round_view()), terminal_size=WIDE, press=["question_mark"])


def test_kick_asks_for_confirmation(snap_compare) -> None:
    # the cursor starts on node-0; two rows down is node-2, the trainer the witness disputes
    assert snap_compare(make_app(mid_round_view()), terminal_size=WIDE, press=["down", "down", "k"])


def test_replay_shows_its_position_and_no_operator_keys(snap_compare) -> None:
    views = tuple(
        RecordedView(t, view, 0)
        for t, view in ((1.0, waiting_view()), (60.0, mid_round_view()), (90.0, finished_view()))
    )
    log = mid_round_view().log
    backend = ReplayBackend(Recording(views, log, skipped=1), clock=lambda: 0.0)
    backend.seek(1)
    app = ConsoleApp(backend, clock=lambda: 0.0)
    assert snap_compare(app, terminal_size=WIDE)


class _FixedAttach(AttachBackend):
    """An attached screen's backend on a fixed view: what the sockets would have brought."""

    def __init__(self, view: ConsoleView, *, operable: bool) -> None:
        super().__init__(Target(control=view.address, run_id=view.run.run_id))
        self._fixed, self._operable = view, operable

    async def start_async(self) -> None:
        self.operable = self._operable
        self._view = self._note(self._fixed)

    async def stop_async(self) -> None:
        pass


def test_attached_read_only_screen_shows_no_operator_keys(snap_compare) -> None:
    app = ConsoleApp(_FixedAttach(mid_round_view(), operable=False), clock=lambda: 0.0)
    assert snap_compare(app, terminal_size=WIDE)


def test_attached_operator_screen_shows_the_operator_keys(snap_compare) -> None:
    app = ConsoleApp(_FixedAttach(mid_round_view(), operable=True), clock=lambda: 0.0)
    assert snap_compare(app, terminal_size=WIDE)


class SettingsBackend(StaticBackend):
    """A fixed snapshot plus the repository's data.toml as the settings screen lists it."""

    def settings(self) -> list[Setting]:
        path = REPO / "data.toml"
        return settings(load_config(path), path.read_text())

    def set_settings(self, changes: dict[str, str]) -> SettingsResult:
        self.calls.append(("set_settings", *changes))
        return SettingsResult(False, "coordinator.min_clients = 9: must be <= ...")


def test_settings_screen_lists_values_with_the_files_comments(snap_compare) -> None:
    app = ConsoleApp(SettingsBackend(waiting_view()), clock=lambda: 0.0)
    # o opens it; the cursor goes to coordinator.init_min_clients (5 server/top keys first)
    assert snap_compare(app, terminal_size=WIDE, press=["o", *["down"] * 6])
