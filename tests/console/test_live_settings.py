"""Live settings against a real console server: data.toml edited in place, checked by the
load-time rules, refused by state or conflict, applied, logged; raw DEALERs are the members."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from console.config import load_config
from console.config.edit import comments_above, settings
from console.record.replay import load_recording
from console.server import SettingsResult
from tests.e2e.conftest import Consoles
from tests.e2e.helpers import RawClient, RawClients, ServerThread
from tests.factories import write_config
from transport import messages as m
from transport.state import RunState

RawFactory = Callable[[str, str], RawClient]


@pytest.fixture
def console_at(tmp_path: Path) -> Iterator[Callable[..., tuple[ServerThread, Path]]]:
    consoles = Consoles(tmp_path)

    def start(**coordinator: object) -> tuple[ServerThread, Path]:
        path = write_config(
            tmp_path / "cfg",
            coordinator={"init_min_clients": 3, "waiting_for_members_extra_time": 0.0,
                         "health_timeout": 60.0, **coordinator},
            local={"spawn": 0},
        )  # fmt: skip
        return consoles.start(load_config(path), run_dir=tmp_path / "run"), path

    yield start
    consoles.close()


@pytest.fixture
def raw() -> Iterator[RawClients]:
    with closing(RawClients()) as made:
        yield made


def diff(before: str, after: str) -> list[str]:
    return [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def set_(console: ServerThread, who: str = "console", **changes: str) -> SettingsResult:
    flat = {k.replace("__", "."): v for k, v in changes.items()}
    return console.call(lambda s: s.set_settings(flat, who=who))


def test_lowering_init_min_clients_starts_the_epoch_and_only_that_value_changes(
    console_at: Callable[..., tuple[ServerThread, Path]], raw: RawFactory
) -> None:
    console, path = console_at()
    before = path.read_text()
    for i in range(2):
        assert isinstance(raw(console.endpoints.control, f"n{i}").join("digits-demo"), m.JoinAck)
    console.wait_for(lambda s: s.waiting_for == 1, 5, "one member missing")
    result = set_(console, who="ctl", coordinator__init_min_clients="2")
    assert result.ok, result.message
    assert result.changed == (("coordinator.init_min_clients", "3", "2"),)
    assert result.message == "saved coordinator.init_min_clients 3 -> 2"
    console.wait_for(lambda s: s.state is RunState.WARMUP, 5, "Warmup")
    after = path.read_text()
    assert diff(before, after) == ["-init_min_clients = 3", "+init_min_clients = 2"]
    assert (path.parent / "data.toml.bak").read_text() == before
    changed = console.events("setting_changed")
    assert [(e["who"], e["key"], e["old"], e["new"]) for e in changed] == [
        ("ctl", "coordinator.init_min_clients", "3", "2")
    ]
    assert changed[0]["text"] == "operator (ctl): coordinator.init_min_clients 3 -> 2"
    assert load_config(path).coordinator.init_min_clients == 2  # what a --resume reads
    replayed = load_recording(console.run_dir / "events.jsonl")
    assert any(
        line.kind == "setting_changed" and "init_min_clients 3 -> 2" in line.text
        for line in replayed.log
    )


def test_a_bad_value_gets_the_load_time_rule_and_nothing_is_written(
    console_at: Callable[..., tuple[ServerThread, Path]],
) -> None:
    console, path = console_at()
    before = path.read_text()
    bad = set_(console, coordinator__min_clients="7")
    assert not bad.ok
    assert bad.message == (
        "coordinator.min_clients = 7: must be <= coordinator.init_min_clients (3)"
    )
    typed = set_(console, coordinator__min_clients='"two"')
    assert typed.message == 'coordinator.min_clients = "two": must be an integer, got a string'
    assert (
        "unknown key; valid keys in [coordinator]"
        in set_(console, coordinator__min_client="2").message
    )
    assert "did you mean min_clients?" in set_(console, coordinator__min_client="2").message
    assert "not a TOML value" in set_(console, learning__aggregator="fedavg").message
    assert "cannot change while the run is going" in set_(console, server__host='"0.0.0.0"').message
    krum = set_(console, learning__aggregator='"krum"')
    assert not krum.ok and "krum needs learning.train_set_size" in krum.message
    assert path.read_text() == before and not (path.parent / "data.toml.bak").exists()
    assert console.events("setting_changed") == []
    refusals = [e["text"] for e in console.events("operator")]
    assert refusals[0].startswith("operator: settings refused: coordinator.min_clients = 7")


def test_coordinator_keys_are_refused_in_a_running_epoch_learning_keys_are_not(
    console_at: Callable[..., tuple[ServerThread, Path]], raw: RawFactory
) -> None:
    console, path = console_at(init_min_clients=1, min_clients=1, witness_nodes=1)
    assert isinstance(raw(console.endpoints.control, "n0").join("digits-demo"), m.JoinAck)
    console.wait_for(lambda s: s.state is RunState.WARMUP, 5, "Warmup")
    refused = set_(console, coordinator__total_rounds="50")
    assert not refused.ok
    assert refused.message == (
        "coordinator settings change only in WaitingForMembers or Paused, not in Warmup; "
        "pause the run first"
    )
    lr = set_(console, learning__learning_rate="0.02")
    assert lr.ok and lr.changed == (("learning.learning_rate", "0.01", "0.02"),)
    assert "reach the nodes at the next Warmup" in lr.message
    assert console.snapshot().state is RunState.WARMUP
    assert console.call(lambda s: s._run_spec().learning.learning_rate) == 0.01  # this epoch
    assert console.call(lambda s: s.pause()).ok
    assert set_(console, coordinator__total_rounds="50").ok
    assert console.snapshot().total_rounds == 50
    assert console.call(lambda s: s.resume()).ok  # the next Warmup carries spec v1
    console.wait_for(lambda s: s.state is RunState.WARMUP, 5, "the next Warmup")
    assert console.call(lambda s: (s.spec_version, s._run_spec().learning.learning_rate)) == (
        1,
        0.02,
    )
    assert console.call(lambda s: s._snapshot(s.clock()).spec_version) == 1
    spec = console.events("spec_changed")
    assert spec and "learning.learning_rate 0.01 -> 0.02" in spec[0]["text"]


def test_a_file_changed_on_disk_is_not_overwritten(
    console_at: Callable[..., tuple[ServerThread, Path]],
) -> None:
    console, path = console_at()
    edited = path.read_text().replace("total_rounds = 20", "total_rounds = 30")
    path.write_text(edited)
    result = set_(console, coordinator__min_clients="1")
    assert not result.ok and "changed on disk since the console read it" in result.message
    assert path.read_text() == edited and not (path.parent / "data.toml.bak").exists()
    assert console.snapshot().min_clients == 2


def test_every_setting_is_listed_with_its_value_and_the_files_comment() -> None:
    text = (Path(__file__).resolve().parents[2] / "data.toml").read_text()
    rows = {
        s.key: s
        for s in settings(load_config(Path(__file__).resolve().parents[2] / "data.toml"), text)
    }
    assert rows["coordinator.init_min_clients"].value == "4"
    assert rows["coordinator.init_min_clients"].help.startswith("Clients that must have joined")
    assert rows["coordinator.init_min_clients"].live == "now"
    assert rows["learning.learning_rate"].live == "next warmup"
    assert rows["server.host"].live == ""
    assert "run_id" in rows and comments_above(text)["run_id"].startswith("Names the run")
