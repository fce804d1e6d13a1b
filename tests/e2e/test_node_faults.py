"""Nodes that die, stall or come back: the run goes on whenever min_clients survive.

Real ``fl-node`` processes that the test SIGKILLs, SIGSTOPs past ``health_timeout`` and SIGCONTs,
or starts again under the same name; a headless console (``--spawn 0``) on loopback. Each fault
is aimed at a phase and a role (trainer, witness, neither, checkpoint uploader) read from the
console's events, and the phase it actually hit is read back from the console's log. Short
phases are held open by faults the run must survive anyway: a stopped node that is neither
trainer nor witness holds RoundWitness (its vote is missing until it is dropped), an unwritable
checkpoint directory holds Cooldown (the upload is refused and retried).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.fault_runs import (
    ControlledRun,
    Event,
    Incarnation,
    controlled_run,
    fault_config,
    first_after,
    next_round,
    round_roles,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROUNDS_PER_EPOCH = 3
TOTAL_ROUNDS = 9
HEALTH_TIMEOUT = 2.0
STALL_HEALTH_TIMEOUT = 3.0  # the RoundWitness scenario needs room between its kills


def _config(
    directory: Path,
    nodes: int,
    witnesses: int,
    health_timeout: float = HEALTH_TIMEOUT,
    total_rounds: int = TOTAL_ROUNDS,
) -> Path:
    return fault_config(
        directory,
        coordinator={
            "init_min_clients": nodes,
            "min_clients": 2,
            "witness_nodes": witnesses,
            "waiting_for_members_extra_time": 0.5,
            "warmup_time": 30.0,
            "max_round_train_time": 30.0,
            "round_witness_time": 15.0,
            "cooldown_time": 30.0,
            "rounds_per_epoch": ROUNDS_PER_EPOCH,
            "total_rounds": total_rounds,
            "heartbeat_interval": 0.3,
            "health_timeout": health_timeout,
        },
        learning={
            "train_set_size": 2,
            "local_epochs": 40,
            "optimizer": "sgd",
            "learning_rate": 0.05,
        },
        model={"hidden": [64]},
        data={"source": "synthetic", "samples": 6000, "features": 64, "partition": "iid"},
    )


class FaultLog:
    """The faults injected in one run and what the console made of them."""

    def __init__(self, console: Incarnation) -> None:
        self.console = console
        self.faults: list[dict[str, Any]] = []

    def record(self, fault: str, node: str, at: float, expected_phase: str) -> dict[str, Any]:
        self.console.log.poll()
        phase = self.console.phase_at(at)
        assert phase == expected_phase, f"{fault} of {node} landed in {phase}, not {expected_phase}"
        entry = {"fault": fault, "node": node, "phase": phase, "at": at}
        self.faults.append(entry)
        return entry

    def settle(self) -> None:
        """Fill in, for every fault, when its node was out of the run (dropped, or left by
        its restarted process) and when the run next made progress (an accepted round or a
        saved checkpoint)."""
        self.console.log.poll()
        for entry in self.faults:
            removed = [
                first_after(self.console, entry["at"], kind, client_id=entry["node"])
                for kind in ("client_dropped", "client_left")
            ]
            gone = [e["t"] - entry["at"] for e in removed if e is not None]
            entry["dropped_s"] = min(gone) if gone else None
            progress = [
                first_after(self.console, entry["at"], "round_ended", outcome="accepted"),
                first_after(self.console, entry["at"], "checkpoint_saved"),
            ]
            times = [e["t"] - entry["at"] for e in progress if e is not None]
            entry["progress_s"] = min(times) if times else None

    def report(self) -> None:
        for e in self.faults:
            dropped = "-" if e["dropped_s"] is None else f"{e['dropped_s']:.1f}s"
            print(
                f"{e['fault']:<32} {e['phase']:<13} out after {dropped:>5}, next accepted "
                f"round or checkpoint after {e['progress_s']:.1f}s"
            )


def _epoch_members(console: Incarnation, epoch: int) -> list[str]:
    started = console.wait_for(
        lambda e: e.get("kind") == "epoch_started" and e.get("epoch") == epoch, 90, f"epoch {epoch}"
    )
    return list(started["clients"])


def _finish(run: ControlledRun, log: FaultLog, total: int = TOTAL_ROUNDS) -> dict[str, Any]:
    console = run.console
    assert console.wait(120) == 0, console.output()[-3000:]
    log.settle()
    log.report()
    summary = console.summary()
    assert summary["final_state"] == "Finished"
    assert summary["accepted_rounds"] == total
    # no round was lost to a fault: every round that started was accepted
    assert [r["outcome"] for r in summary["rounds"]] == ["accepted"] * total
    for entry in log.faults:  # the run went on well before any phase timeout (30 s)
        assert entry["progress_s"] is not None and entry["progress_s"] < 20.0, entry
    return summary


def _epoch_live(console: Incarnation, at: Event, killed: dict[str, float]) -> list[str]:
    """The members of the epoch that ``at`` belongs to that were not killed since it began."""
    began = [e for e in console.log.of("epoch_started") if e["t"] <= at["t"]][-1]
    return [n for n in began["clients"] if killed.get(n, float("-inf")) < began["t"]]


def test_nodes_killed_in_each_role_and_phase_are_dropped_and_the_run_finishes(
    tmp_path: Path,
) -> None:
    """SIGKILL in Warmup and of a trainer, a witness and a node that is neither in RoundTrain;
    killed nodes started again under the same name join the next epoch; in the last epoch the
    run goes on with just min_clients survivors."""
    nodes = [f"node-{i}" for i in range(5)]
    last_epoch_first_round = TOTAL_ROUNDS - ROUNDS_PER_EPOCH + 1
    config = _config(tmp_path, nodes=5, witnesses=2)
    killed: dict[str, float] = {}
    with controlled_run(tmp_path, config) as run:
        console = run.start_console()
        for name in nodes:
            run.start_node(name)
        log = FaultLog(console)

        # Warmup of the first epoch (models, data, torch's first steps): kill a node that has
        # not reported warmed up yet.
        console.wait_for_state("Warmup", 90)
        warmed = {e["client_id"] for e in console.log.of("client_warmed_up")}
        victim = next(n for n in nodes if n not in warmed)
        killed[victim] = run.nodes[victim].kill()
        log.record("SIGKILL (not yet warmed up)", victim, killed[victim], "Warmup")
        run.start_node(victim)

        # RoundTrain: a trainer that does not witness, a witness that does not train, a node
        # that is neither; each while at least two other members of its epoch live on.
        for role in ("trainer", "witness", "neither"):

            def has_role(e: Event, role: str = role) -> bool:
                live = _epoch_live(console, e, killed)
                return len(live) >= 3 and role in round_roles(e, live).values()

            started = next_round(
                console, has_role, after=len(console.log.events), what=f"a round with a {role}"
            )
            assert started["round"] < last_epoch_first_round
            roles = round_roles(started, _epoch_live(console, started, killed))
            victim = next(n for n, r in roles.items() if r == role)
            time.sleep(0.1)
            killed[victim] = run.nodes[victim].kill()
            log.record(f"SIGKILL {role}", victim, killed[victim], "RoundTrain")
            run.start_node(victim)

        # Each killed node, started again under its name, is a member of the next epoch.
        for name, at in killed.items():
            began = console.wait_for(
                lambda e, at=at: e.get("kind") == "epoch_started" and e["t"] > at,
                90,
                f"an epoch after {name} came back",
            )
            assert name in began["clients"]

        # The last epoch: all but one trainer and one witness die, and the epoch's rounds
        # finish with those min_clients survivors.
        started = next_round(
            console,
            lambda e: e["round"] == last_epoch_first_round,
            what="the first round of the last epoch",
        )
        assert set(_epoch_live(console, started, killed)) == set(nodes)
        pure = [t for t in started["train_set"] if t not in started["witnesses"]]
        trainer = (pure or started["train_set"])[0]
        witness = next(w for w in started["witnesses"] if w != trainer)
        time.sleep(0.1)
        for name in nodes:
            if name not in (trainer, witness):
                at = run.nodes[name].kill()
                log.record("SIGKILL (down to min_clients)", name, at, "RoundTrain")
        summary = _finish(run, log)
        exits = run.node_exits(30)

    assert exits[trainer] == 0 and exits[witness] == 0
    survivors = [c["id"] for c in summary["clients"] if c["status"] in ("active", "pending")]
    assert sorted(survivors) == sorted([trainer, witness])


def test_stalled_and_killed_nodes_in_round_witness_and_cooldown_do_not_stop_the_run(
    tmp_path: Path,
) -> None:
    """A node SIGSTOPped past health_timeout and continued; a trainer, the witness and a node
    that is neither SIGKILLed in RoundWitness; the checkpoint uploader SIGKILLed in Cooldown.
    Each stalled or killed node comes back and joins the next epoch."""
    nodes = [f"node-{i}" for i in range(6)]
    total = TOTAL_ROUNDS + ROUNDS_PER_EPOCH  # room to find a round that suits the stall
    config = _config(
        tmp_path, nodes=6, witnesses=1, health_timeout=STALL_HEALTH_TIMEOUT, total_rounds=total
    )
    with controlled_run(tmp_path, config) as run:
        console = run.start_console()
        for name in nodes:
            run.start_node(name)
        log = FaultLog(console)

        # A round that is not its epoch's last, whose witness does not train (a witness that
        # trains would wait for its own push to the stopped node, holding RoundTrain instead).
        started = next_round(
            console,
            lambda e: (
                e["round"] % ROUNDS_PER_EPOCH != 0
                and e["round"] <= total - ROUNDS_PER_EPOCH  # an epoch must follow
                and not set(e["witnesses"]) & set(e["train_set"])
            ),
            what="a round whose witness does not train",
        )
        roles = round_roles(started, nodes)
        idle = [n for n in nodes if roles[n] == "neither"]
        stalled, bystander = idle[0], idle[1]
        stop = log.record(
            "SIGSTOP > health_timeout", stalled, run.nodes[stalled].stop(), "RoundTrain"
        )
        console.wait_for_state("RoundWitness", 60, after=console.log.events.index(started))
        # The witness and the bystander have voted for the next round already; the trainer has
        # not (its push to the stopped node is pending), so the next round waits for its drop.
        # Killing it last lets the others be dropped first: a killed node the console has not
        # dropped yet may be elected the next round's only witness, and that round would fail.
        trainer = started["train_set"][0]
        witness = started["witnesses"][0]
        for victim, what in ((witness, "witness"), (bystander, "neither")):
            log.record(f"SIGKILL {what}", victim, run.nodes[victim].kill(), "RoundWitness")
        time.sleep(0.8)
        trainer_kill = log.record(
            "SIGKILL trainer", trainer, run.nodes[trainer].kill(), "RoundWitness"
        )
        voted = console.log.of("vote_cast", voter=trainer, round=started["round"] + 1)
        assert all(e["t"] > trainer_kill["at"] for e in voted), (
            "the trainer voted before it was killed"
        )
        console.wait_for(
            lambda e: e.get("kind") == "client_dropped" and e.get("client_id") == stalled,
            30,
            f"{stalled} dropped",
        )
        time.sleep(max(0.0, stop["at"] + STALL_HEALTH_TIMEOUT + 0.5 - time.monotonic()))
        run.nodes[stalled].cont()
        stop["stopped_s"] = time.monotonic() - stop["at"]
        assert stop["stopped_s"] > STALL_HEALTH_TIMEOUT
        for victim in (trainer, witness, bystander):
            run.start_node(victim)

        # Everyone is back for the next epoch: the continued node and the three restarted.
        epoch = started["epoch"] + 1
        assert set(_epoch_members(console, epoch)) == set(nodes)

        # Cooldown: the checkpoint directory cannot be written, so the upload is refused and
        # retried; kill the uploader while Cooldown waits, then let the disk recover.
        last_started = next_round(
            console,
            lambda e: e["epoch"] == epoch and e["round"] % ROUNDS_PER_EPOCH == 0,
            what=f"the last round of epoch {epoch}",
        )
        last = last_started["round"]
        console.wait_for(  # the round before it is on disk (it is uploaded during this one)
            lambda e: e.get("kind") == "checkpoint_saved" and e["round"] == last - 1,
            60,
            f"the checkpoint of round {last - 1}",
        )
        failed = run.fail_checkpoint_writes(after=console.log.events.index(last_started))
        requested = [e for e in console.log.of("checkpoint_requested") if e["t"] <= failed["t"]]
        uploader = requested[-1]["uploader"]
        killed = run.nodes[uploader].kill()
        log.record("SIGKILL checkpoint uploader", uploader, killed, "Cooldown")
        run.mend_checkpoint_dir()
        saved = console.wait_for(
            lambda e: e.get("kind") == "checkpoint_saved" and e["t"] > killed,
            60,
            "the checkpoint saved by another node",
        )
        assert saved["epoch"] == epoch
        assert console.log.of("checkpoint_requested")[-1]["uploader"] != uploader
        if saved["round"] < total:  # it would find the run over otherwise
            run.start_node(uploader)
        _finish(run, log, total)
        exits = run.node_exits(30)

    assert all(code == 0 for name, code in exits.items() if name != uploader), exits
