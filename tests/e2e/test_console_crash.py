"""Crash anywhere, resume: the console SIGKILLed in each phase and restarted with --resume.

One run, five console processes, four ``fl-node`` processes that outlive every console. The
console is killed in Warmup, RoundTrain, RoundWitness and Cooldown; each time it is started
again with ``--resume`` and the nodes find it and join again on their own. Short phases are
held open with faults the run must survive anyway: a node SIGSTOPped past ``health_timeout``
(Warmup waits for its report, RoundWitness for its vote) and a checkpoint directory that cannot
be written (Cooldown retries the upload). The phase each kill landed in is read back from the
console's own event log. Crashes *inside* a checkpoint write are covered file by file in
``tests/console/test_checkpoint_crash.py``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from console.server.checkpoint import load_latest
from tests.e2e.fault_runs import (
    ControlledRun,
    Incarnation,
    controlled_run,
    fault_config,
    round_roles,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NODES = [f"node-{i}" for i in range(4)]
ROUNDS_PER_EPOCH = 3
TOTAL_ROUNDS = 9


def _config(directory: Path) -> Path:
    return fault_config(
        directory,
        coordinator={
            "init_min_clients": 4,
            "min_clients": 2,
            "witness_nodes": 1,
            "waiting_for_members_extra_time": 1.0,
            "warmup_time": 30.0,
            "max_round_train_time": 30.0,
            "round_witness_time": 20.0,
            "cooldown_time": 30.0,
            "rounds_per_epoch": ROUNDS_PER_EPOCH,
            "total_rounds": TOTAL_ROUNDS,
            "heartbeat_interval": 0.3,
            "health_timeout": 3.0,
        },
        learning={
            "train_set_size": 1,  # most rounds then have a witness that does not train
            "local_epochs": 40,
            "optimizer": "sgd",
            "learning_rate": 0.05,
        },
        model={"hidden": [64]},
        data={"source": "synthetic", "samples": 6000, "features": 64, "partition": "iid"},
    )


def _accepted(console: Incarnation) -> dict[int, dict[str, Any]]:
    return {e["round"]: e for e in console.log.of("round_ended", outcome="accepted")}


def _crash(run: ControlledRun, target: str, at: float, checkpointed: int) -> dict[str, Any]:
    """Record a console kill: the phase it hit and the accepted rounds it lost."""
    console = run.console
    phase = console.phase_at(at)
    assert phase == target, f"the kill landed in {phase}, not {target}"
    saved = [e["round"] for e in console.log.of("checkpoint_saved")]
    last_checkpoint = max([checkpointed, *saved])
    lost = sorted(r for r in _accepted(console) if r > last_checkpoint)
    return {"phase": phase, "lost": lost, "killed": at, "checkpoint": last_checkpoint}


def _wait_until_on_disk(run: ControlledRun, round: int, timeout: float = 60.0) -> None:
    """Until the latest checkpoint on disk holds ``round`` (saved by any console so far)."""
    deadline = time.monotonic() + timeout
    while (stored := load_latest(run.checkpoint_dir)) is None or stored.round < round:
        assert time.monotonic() < deadline, f"round {round} not checkpointed in {timeout:.0f}s"
        time.sleep(0.01)


def _recovery(run: ControlledRun, crash: dict[str, Any]) -> None:
    """After a restart: every node joins again and training resumes; note the times."""
    console = run.console
    for name in NODES:
        console.wait_for(
            lambda e, n=name: e.get("kind") == "client_joined" and e.get("client_id") == n,
            60,
            f"{name} joining console {console.number}",
        )
    resumed = console.wait_for(
        lambda e: e.get("kind") == "round_started", 60, f"a round in console {console.number}"
    )
    crash["rejoined_s"] = max(e["t"] for e in console.log.of("client_joined")) - crash["killed"]
    crash["recovered_s"] = resumed["t"] - crash["killed"]


def _round_with_an_idle_node(console: Incarnation) -> tuple[dict[str, Any], str]:
    """The next round that is not its epoch's last and whose witness does not train, and a
    node that neither trains nor witnesses in it. (A witness that trains would wait for its own
    push to a stopped node, holding RoundTrain instead of RoundWitness.)"""
    after = 0
    while True:
        started = console.wait_for(
            lambda e: e.get("kind") == "round_started", 90, "a round", after=after
        )
        after = console.log.events.index(started) + 1
        roles = round_roles(started, NODES)
        idle = [n for n in NODES if roles[n] == "neither"]
        last_of_epoch = started["round"] % ROUNDS_PER_EPOCH == 0
        if idle and not last_of_epoch and "trainer+witness" not in roles.values():
            return started, idle[0]


def test_console_killed_in_every_phase_resumes_and_the_nodes_rejoin_on_their_own(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    crashes: dict[str, dict[str, Any]] = {}
    with controlled_run(tmp_path, config) as run:
        first = run.start_console()
        for name in NODES:
            run.start_node(name)
        saved = first.wait_for(
            lambda e: e.get("kind") == "checkpoint_saved" and e["round"] == ROUNDS_PER_EPOCH,
            120,
            "the checkpoint of epoch 0",
        )
        checkpointed = saved["round"]
        epoch0 = _accepted(first)

        # Warmup: a node stopped just before the epoch starts holds Warmup (no warmed_up).
        stalled = run.nodes["node-3"]
        stalled.stop()
        first.wait_for_state("Warmup", 30, after=first.log.events.index(saved))
        time.sleep(0.3)
        crashes["Warmup"] = _crash(run, "Warmup", first.kill(), checkpointed)
        stalled.cont()
        run.start_console(resume=True)
        _recovery(run, crashes["Warmup"])

        # RoundTrain: local training takes about a second; kill right after the round opens.
        second = run.console
        time.sleep(0.2)
        crashes["RoundTrain"] = _crash(run, "RoundTrain", second.kill(), checkpointed)
        run.start_console(resume=True)
        _recovery(run, crashes["RoundTrain"])

        # RoundWitness: a stopped node that is neither trainer nor witness never votes for the
        # next round, so the decided round waits in RoundWitness until the node is dropped.
        third = run.console
        started, idle = _round_with_an_idle_node(third)
        run.nodes[idle].stop()
        third.wait_for(
            lambda e: (
                e.get("kind") == "state_changed"
                and e.get("new") == "RoundWitness"
                and e["t"] > started["t"]
            ),
            60,
            f"RoundWitness of round {started['round']}",
        )
        time.sleep(0.2)
        crashes["RoundWitness"] = _crash(run, "RoundWitness", third.kill(), checkpointed)
        checkpointed = crashes["RoundWitness"]["checkpoint"]
        run.nodes[idle].cont()
        run.start_console(resume=True)
        _recovery(run, crashes["RoundWitness"])

        # Cooldown: the checkpoint directory cannot be written, so the upload is refused and
        # retried; kill the console while it waits in Cooldown for a checkpoint.
        fourth = run.console

        # The next round that ends in Cooldown: its epoch's last, or the run's. A resumed
        # console starts a fresh epoch, so epochs need not align with round numbers.
        def _goes_to_cooldown(event: dict[str, Any]) -> bool:
            if event.get("kind") != "round_started":
                return False
            same_epoch = fourth.log.of("round_started", epoch=event["epoch"])
            last_of_epoch = len(same_epoch) == ROUNDS_PER_EPOCH and same_epoch[-1] is event
            return last_of_epoch or event["round"] == TOTAL_ROUNDS

        last = fourth.wait_for(_goes_to_cooldown, 60, "a round that ends in Cooldown")["round"]
        _wait_until_on_disk(run, last - 1)  # the round before it is safe before the disk fails
        run.fail_checkpoint_writes()
        crashes["Cooldown"] = _crash(run, "Cooldown", fourth.kill(), checkpointed)
        run.mend_checkpoint_dir()
        last = run.start_console(resume=True)
        _recovery(run, crashes["Cooldown"])

        assert last.wait(120) == 0, last.output()[-3000:]
        exits = run.node_exits(60)
        summary = last.summary()
        nodes_logs = {name: node.output() for name, node in run.nodes.items()}

    assert exits == dict.fromkeys(NODES, 0), nodes_logs
    assert summary["final_state"] == "Finished"
    assert summary["accepted_rounds"] == TOTAL_ROUNDS
    rounds = {r["round"]: r for r in summary["rounds"]}
    # the checkpointed epoch is kept as it was accepted, bit for bit
    for number, ended in epoch0.items():
        assert rounds[number]["outcome"] == "accepted"
        assert sorted(rounds[number]["accepted"]) == sorted(ended["accepted"])
    accepted = [r for r in summary["rounds"] if r["outcome"] == "accepted"]
    assert len(accepted) == TOTAL_ROUNDS
    # every accepted round is checkpointed while the next one runs: a crash loses none...
    assert crashes["Warmup"]["lost"] == []
    assert crashes["RoundTrain"]["lost"] == []
    assert crashes["RoundWitness"]["lost"] == []
    # ...except a round whose checkpoint the disk refused (the Cooldown case): that one only
    assert crashes["Cooldown"]["lost"] == [crashes["Cooldown"]["checkpoint"] + 1]
    stored = load_latest(run.checkpoint_dir)
    assert stored is not None and stored.round == summary["checkpoint"]["round"]
    for phase, crash in crashes.items():
        print(
            f"console SIGKILL in {phase}: lost rounds {crash['lost']}; every node joined again "
            f"{crash['rejoined_s']:.1f}s and training resumed {crash['recovered_s']:.1f}s "
            "after the kill"
        )
