"""Replay: views survive the JSONL round trip, bad lines are skipped and counted, and the
console steps and plays through a recording with operator actions switched off."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import pytest
from textual.pilot import Pilot

from console.app.app import ConsoleApp
from console.app.widgets import ClientsTable, EventLogView, RunHeader
from console.record.replay import (
    MAX_GAP,
    ReplayBackend,
    ReplayError,
    load_recording,
    view_from_dict,
    view_to_dict,
)
from console.record.view import ConsoleView
from tests.console.pilot import run_console
from tests.snapshots.fixtures import finished_view, mid_round_view, waiting_view

pytestmark = pytest.mark.timeout(60)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _log_record(t: float, text: str, kind: str = "state") -> str:
    return json.dumps({"t": t, "wall": 1.7e9 + t, "kind": kind, "text": text})


def _view_record(t: float, view: ConsoleView) -> str:
    return json.dumps({"kind": "view", "t": t, "view": view_to_dict(view, with_log=False)})


def write_recording(path: Path) -> Path:
    lines = [
        _log_record(1.0, "serving run", "server"),
        _view_record(1.0, waiting_view()),
        _log_record(2.0, "node-0 joined", "join"),
        "this is not json",
        _view_record(3.0, mid_round_view()),
        '{"kind": "view", "t": 3.5, "view": {"run": 1}}',
        _log_record(4.0, "Cooldown -> Finished"),
        _view_record(60.0, finished_view()),
        "",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("make", [waiting_view, mid_round_view, finished_view])
def test_a_view_survives_the_jsonl_round_trip(make) -> None:
    view = make()
    assert view_from_dict(json.loads(json.dumps(view_to_dict(view)))) == view


def test_gossip_bytes_and_compression_survive_the_round_trip() -> None:
    view = mid_round_view()
    back = view_from_dict(json.loads(json.dumps(view_to_dict(view))))
    node0 = back.clients[0]
    assert (node0.round_bytes_up, node0.round_bytes_down) == (47_600, 20_400)
    assert node0.compression_ratio == 3.94
    assert (back.rounds[1].busiest_node, back.rounds[1].busiest_uplink) == ("node-1", 47_600)
    assert back.rounds[1].gossip_bytes == 142_800


def test_a_recording_from_before_gossip_bytes_replays_with_them_unknown() -> None:
    raw = json.loads(json.dumps(view_to_dict(mid_round_view())))
    for client in raw["clients"]:
        for key in ("round_bytes_up", "round_bytes_down", "compression_ratio"):
            del client[key]
    for row in raw["rounds"]:
        for key in ("busiest_uplink", "busiest_node", "gossip_bytes"):
            del row[key]
    back = view_from_dict(raw)
    assert all(c.round_bytes_up is None and c.compression_ratio is None for c in back.clients)
    assert all(r.busiest_uplink is None and r.busiest_node == "" for r in back.rounds)
    assert all(r.gossip_bytes is None for r in back.rounds)


def test_a_view_without_its_log_comes_back_with_an_empty_log() -> None:
    view = mid_round_view()
    back = view_from_dict(json.loads(json.dumps(view_to_dict(view, with_log=False))))
    assert back == replace(view, log=())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("run"),
        lambda d: d["clients"][0].update(bytes_in="many"),
        lambda d: d["rounds"][0].update(outcome="maybe"),
        lambda d: d["rounds"][0]["witness_rows"][0].update(attested=[1, 2]),
        lambda d: d.update(seq=True),
        lambda d: d["clients"][0].update(round_bytes_up=1.5),
        lambda d: d["clients"][0].update(compression_ratio="4x"),
        lambda d: d["rounds"][1].update(busiest_uplink="48k"),
        lambda d: d["rounds"][1].update(busiest_node=3),
    ],
)
def test_a_malformed_view_is_refused_with_value_error(mutate) -> None:
    raw = json.loads(json.dumps(view_to_dict(mid_round_view())))
    mutate(raw)
    with pytest.raises(ValueError):
        view_from_dict(raw)


def test_bad_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    recording = load_recording(write_recording(tmp_path / "events.jsonl"))
    assert [v.view.run.state.value for v in recording.views] == [
        "WaitingForMembers",
        "RoundWitness",
        "Finished",
    ]
    assert recording.skipped == 2
    assert [line.text for line in recording.log] == [
        "serving run",
        "node-0 joined",
        "Cooldown -> Finished",
    ]
    assert [v.log_end for v in recording.views] == [1, 2, 3]


def test_a_file_without_views_or_missing_is_a_replay_error(tmp_path: Path) -> None:
    only_log = tmp_path / "old.jsonl"
    only_log.write_text(_log_record(1.0, "serving run") + "\n")
    with pytest.raises(ReplayError, match="no view records"):
        load_recording(only_log)
    with pytest.raises(ReplayError, match="cannot read"):
        load_recording(tmp_path / "missing.jsonl")


def test_each_view_shows_the_log_written_before_it(tmp_path: Path) -> None:
    backend = ReplayBackend(write_recording(tmp_path / "events.jsonl"), clock=FakeClock())
    assert [line.text for line in backend.view().log] == ["serving run"]
    backend.step(1)
    assert [line.text for line in backend.view().log] == ["serving run", "node-0 joined"]
    assert backend.view().notes["replay"].startswith("2/3 stopped")


def test_step_and_seek_stay_inside_the_recording(tmp_path: Path) -> None:
    backend = ReplayBackend(write_recording(tmp_path / "events.jsonl"), clock=FakeClock())
    backend.step(-1)
    assert backend.index == 0
    backend.seek(-1)
    assert backend.index == 2
    backend.step(1)
    assert backend.index == 2
    backend.seek(0)
    assert backend.view().run.state.value == "WaitingForMembers"


def test_play_follows_recorded_time_at_the_chosen_speed(tmp_path: Path) -> None:
    clock = FakeClock()
    backend = ReplayBackend(write_recording(tmp_path / "events.jsonl"), clock=clock)
    backend.set_speed(2.0)
    backend.toggle_play()
    clock.now = 0.9  # 1.8 recorded seconds: not yet the view at t=3
    assert backend.view().run.state.value == "WaitingForMembers"
    clock.now = 1.0
    assert backend.view().run.state.value == "RoundWitness"
    # the next view is 57 s later in the recording; a replay waits MAX_GAP at most
    clock.now = 1.0 + MAX_GAP / 2.0
    assert backend.view().run.state.value == "Finished"
    assert not backend.playing  # stops at the end


def test_replay_keys_step_and_play_and_operator_keys_are_off(tmp_path: Path) -> None:
    clock = FakeClock()
    backend = ReplayBackend(write_recording(tmp_path / "events.jsonl"), clock=clock)
    app = ConsoleApp(backend, refresh_hz=0)

    async def scenario(pilot: Pilot) -> None:
        assert app.check_action("pause", ()) is False
        assert app.check_action("kick", ()) is False
        await pilot.press("right")
        assert backend.index == 1
        assert len(app.query_one(ClientsTable).rows) == 8
        await pilot.press("p")  # in a replay p steps back; it never pauses anything
        assert backend.index == 0
        await pilot.press("end")
        assert backend.index == 2
        assert "3/3" in str(app.query_one(RunHeader).render())
        await pilot.press("home", "n")
        assert backend.index == 1
        lines = app.query_one(EventLogView).lines
        assert len(lines) == 2
        await pilot.press("space")
        assert backend.playing
        await pilot.press("space")
        assert not backend.playing
        await pilot.press("ctrl+p", "right", "left")  # the palette's input keeps its keys
        assert backend.index == 1
        await pilot.press("escape")
        helps = [what for _, what in app.help_keys()]
        assert any("Step back" in what for what in helps)
        assert not any("Pause the run" in what or "Kick" in what for what in helps)

    run_console(app, scenario)


def test_the_server_records_views_that_replay_loads(tmp_path: Path) -> None:
    from console.server import ConsoleServer
    from tests.console.test_app_pilot import make_config
    from transport import messages as m
    from transport.codec import encode

    server = ConsoleServer(make_config(tmp_path), run_dir=tmp_path / "run")

    async def main() -> None:
        server.start()
        for node_id in ("node-a", "node-b"):
            frames = encode(m.Join(run_id="pilot-run", node_id=node_id, gossip_endpoint=""))
            server.handle(node_id.encode(), frames, 0)
        await asyncio.sleep(0.3)  # past the record throttle: the pause's broadcast is recorded
        assert server.pause().rejection is None
        await server.stop()

    asyncio.run(main())
    recording = load_recording(tmp_path / "run" / "events.jsonl")
    assert recording.skipped == 0
    first, last = recording.views[0].view, recording.views[-1].view
    assert first.run.state.value == "WaitingForMembers" and first.clients == ()
    assert last.run.state.value == "Paused"
    assert [c.id for c in last.clients] == ["node-a", "node-b"]
    assert any(line.text == "operator: pause" for line in recording.log)


def test_run_replay_of_a_log_without_views_fails_with_2(tmp_path: Path, capsys) -> None:
    from console.app import run_replay

    only_log = tmp_path / "events.jsonl"
    only_log.write_text(_log_record(1.0, "serving run") + "\n")
    assert run_replay(only_log) == 2
    assert "no view records" in capsys.readouterr().err


def _delta_record(t: float, view: ConsoleView, rows: tuple) -> str:
    raw = view_to_dict(replace(view, rounds=rows), with_log=False)
    raw["rounds_delta"] = True
    return json.dumps({"kind": "view", "t": t, "view": raw})


def test_round_rows_recorded_as_changes_are_put_back_together_in_any_order(
    tmp_path: Path,
) -> None:
    full = mid_round_view()
    first, *rest = full.rounds
    assert rest, "the fixture needs two rounds or more"
    older = replace(first, loss=9.0)  # round 1 as it was before it changed
    lines = [
        _view_record(1.0, replace(full, rounds=(older,))),
        _delta_record(2.0, full, tuple(rest)),  # later rounds appear
        _delta_record(3.0, full, (first,)),  # round 1 changes
        _view_record(4.0, replace(full, rounds=(first,))),  # a new server: full again
        _delta_record(5.0, full, ()),  # nothing changed
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    backend = ReplayBackend(path, clock=FakeClock())
    expected = [(older,), (older, *rest), (first, *rest), (first,), (first,)]
    for index in [0, 1, 2, 3, 4, 2, 1, 4, 0, 2]:  # forwards, backwards, jumps
        backend.seek(index)
        assert backend.view().rounds == expected[index], index


def test_a_long_run_records_each_round_row_about_once(tmp_path: Path) -> None:
    """The log grows with rounds, not rounds x views: rows are written when they change."""
    from console.server import ConsoleServer
    from tests.console.test_app_pilot import make_config

    server = ConsoleServer(make_config(tmp_path), run_dir=tmp_path / "run")
    full_rows = {r.round: r for r in mid_round_view().rounds}
    rows = dict(full_rows)  # what server.view() shows: one more round at a time
    original = server.view

    def view() -> ConsoleView:
        return replace(original(), rounds=tuple(rows[r] for r in sorted(rows)))

    server.view = view  # type: ignore[method-assign]

    async def main() -> None:
        server.start()
        last = max(full_rows)
        for n in range(1, 41):  # forty more rounds, each recorded in three views
            rows[last + n] = replace(full_rows[last], round=last + n)
            for _ in range(3):
                server._view_recorded = (float("-inf"), None)  # past the throttle
                server._record_view(server.clock())
        await server.stop()

    asyncio.run(main())
    lines = (tmp_path / "run" / "events.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r.get("kind") == "view"]
    written = sum(len(r["view"]["rounds"]) for r in records)
    assert len(records) >= 120
    assert written == len(full_rows) + 40  # every row once, however many views
    backend = ReplayBackend(tmp_path / "run" / "events.jsonl", clock=FakeClock())
    backend.seek(-1)
    assert [r.round for r in backend.view().rounds] == sorted(rows)
