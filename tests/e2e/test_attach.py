"""``fl-console attach`` on a real run: a headless console with three real fl-node processes.

The attached screen (the app under Textual's pilot, in this process) follows the run over the
console's sockets, then quits mid-run; the run goes on and finishes, its nodes untouched.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from textual.pilot import Pilot

from console.app.app import ConsoleApp
from console.app.widgets import ClientsTable, RoundsTable
from console.record.replay import view_from_dict
from console.remote.attach import RECENT_ROUNDS, AttachBackend
from console.remote.client import Target
from tests.console.pilot import run_console
from tests.e2e.operators import control_endpoint, run_id_of
from tests.e2e.runs import HeadlessConsole
from tests.factories import write_config
from transport import messages as m

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROUNDS = 16


def test_quitting_an_attached_screen_mid_run_leaves_the_run_to_finish(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        coordinator={"init_min_clients": 3, "min_clients": 2, "total_rounds": ROUNDS,
                     "rounds_per_epoch": 4},
        local={"spawn": 3},
    )  # fmt: skip
    console = HeadlessConsole(config, tmp_path / "run")
    try:
        console.wait_for_event(lambda e: "serving run" in e.get("text", ""), timeout=60)
        backend = AttachBackend(Target(control_endpoint(config), run_id_of(config)), interval=0.2)
        app = ConsoleApp(backend, refresh_hz=10)
        seen: dict[str, object] = {}

        async def scenario(pilot: Pilot) -> None:
            deadline = time.monotonic() + 120
            rounds = app.query_one(RoundsTable)
            while rounds.row_count < 7:  # watch until 7 rounds show, then quit mid-run
                assert time.monotonic() < deadline, "the attached screen never showed 7 rounds"
                assert console.alive, console.output()[-2000:]
                await pilot.pause(0.1)
            # Its rows came mostly as deltas (the latest rounds' rows); the settled ones are
            # those a full view has.
            held = {row.round: row for row in backend.view().rounds}
            assert backend.client is not None and backend._requests > 2
            full = await backend.client.view()
            assert isinstance(full, m.ViewReply) and full.rounds_from == 0
            fresh = {row.round: row for row in view_from_dict(full.view).rounds}
            assert sorted(held) == list(range(1, len(held) + 1))
            settled = [r for r in held if r <= max(held) - RECENT_ROUNDS - 1]
            assert settled and all(held[r] == fresh[r] for r in settled)
            seen["clients"] = app.query_one(ClientsTable).row_count
            seen["accepted"] = backend.view().run.accepted_rounds
            await pilot.press("q")
            await pilot.pause()

        run_console(app, scenario)
        assert app.return_code == 0 and backend.client is None
        assert seen["clients"] == 3
        assert isinstance(seen["accepted"], int) and seen["accepted"] < ROUNDS  # it was mid-run
        assert console.wait(timeout=240) == 0, console.output()[-3000:]
        summary = console.read_summary()
        assert (summary["final_state"], summary["accepted_rounds"]) == ("Finished", ROUNDS)
        assert not [e for e in console.events_seen() if e.get("kind") == "operator"]
    finally:
        console.reap()
