"""Hostile input on every socket while a real run goes on: each message refused with a reason.

Four ``fl-node`` processes learn the digits under a headless console. Meanwhile:

* raw DEALERs send 10,000 malformed or unwelcome requests to the console's control ROUTER
  (random bytes, truncated and oversized frames, wrong versions, a join for another run,
  members' requests from strangers, spoofed ids, lying tensor frames, NaN weights, ...);
  two messages over the socket's size limit are dropped by libzmq instead;
* a scripted member (tests/e2e/puppet.py) sends what only a member can get wrong: witness
  reports from a non-witness, for another round, twice; second votes and warm-ups; commits
  without training; uploads nobody asked for; a warm-up with a model that is not the
  checkpoint;
* model pushes with wrong shapes, dtypes, NaN or Inf, a lying hash, for another run or round,
  go to a node's gossip ROUTER.

Each one must be answered by exactly one ``error`` with the right code and a reason, counted
and logged by the console (a few aggregated lines, not one each) and shown per client; and the
run must finish as configured, every round accepted and every node holding the same model.
Flood control is off on the console here (``refusal_limit = 0``), so that every hostile request
is answered; tests/e2e/test_flood.py runs a flood with it on.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from console.server.checkpoint import load_latest
from tests.e2e.fault_runs import controlled_run, fault_config
from tests.e2e.hostile import (
    FuzzResult,
    fuzz_control,
    gossip_messages,
    oversized_is_dropped,
    send_one,
)
from tests.e2e.puppet import Puppet
from transport import messages as m
from transport.codec import encode
from transport.state import ClientStatus, RunState

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FUZZ_COUNT = 4_000  # answered before the run ends, even on a busy machine
TOTAL_ROUNDS = 32  # long enough for the gossip attack to find open rounds after the first epoch
NODES = [f"node-{i}" for i in range(4)]


def _config(directory: Path) -> Path:
    return fault_config(
        directory,
        coordinator={
            "init_min_clients": len(NODES) + 1,  # and the puppet
            "min_clients": 2,
            "witness_nodes": 2,
            "waiting_for_members_extra_time": 0.2,
            "rounds_per_epoch": 4,
            "total_rounds": TOTAL_ROUNDS,
            "heartbeat_interval": 0.3,
            "health_timeout": 5.0,
            "max_round_train_time": 30.0,
            "round_witness_time": 10.0,
            "cooldown_time": 10.0,
        },
        learning={"train_set_size": 3, "local_epochs": 5, "aggregator": "fedavg"},
        server={"refusal_limit": 0},  # every request answered: its code is what is tested
    )


def _gossip_attack(
    puppet: Puppet, run_id: str, model: Any, deadline: float
) -> dict[str, list[str]]:
    """Send every hostile push to a node's gossip ROUTER while a round is open; retry a push
    whose round moved on meanwhile. Returns what -> the codes the node answered."""
    answers: dict[str, list[str]] = {}
    pending = None
    while time.monotonic() < deadline:
        snap = puppet.snapshot
        current = snap.current if snap is not None else None
        if snap is None or snap.state is RunState.FINISHED:
            break
        if snap.state is not RunState.ROUND_TRAIN or current is None:
            time.sleep(0.01)
            continue
        live = {c.id: c for c in snap.clients if c.status is ClientStatus.ACTIVE}
        trainers = [t for t in current.train_set if t in live]
        targets = [n for n in NODES if n in live and n != trainers[0]]
        if not trainers or not targets:
            time.sleep(0.01)
            continue
        target = live[targets[0]].gossip_endpoint
        hostile = gossip_messages(run_id, current.round, trainers[0], model)
        pending = [h for h in hostile if not any(c in h.codes for c in answers.get(h.kind, []))]
        if not pending:
            return answers
        for h in pending:
            reply = send_one(target, h.frames)
            code = reply.code if isinstance(reply, m.Error) else repr(reply)
            assert isinstance(reply, m.Error) and reply.reason, f"{h.kind}: answered {code}"
            answers.setdefault(h.kind, []).append(code)
    missing = [h.kind for h in pending or []]
    raise AssertionError(f"gossip pushes never answered as expected: {missing}; got {answers}")


def test_hostile_input_on_every_socket_is_refused_with_a_reason_and_the_run_is_unaffected(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    fuzz: dict[str, FuzzResult] = {}

    with controlled_run(tmp_path, config) as run:
        console = run.start_console()
        time.sleep(0.5)
        puppet = Puppet(run.control, run.state, run.run_id, NODES)
        puppet.start()
        for name in NODES:
            run.start_node(name)
        console.wait_for(lambda e: e.get("kind") == "round_started", 120, "the first round")

        def control_fuzz() -> None:
            fuzz["control"] = fuzz_control(run.control, run.run_id, count=FUZZ_COUNT, seed=6)

        fuzzer = threading.Thread(target=control_fuzz, name="fuzz")
        fuzzer.start()
        dropped = [oversized_is_dropped(run.control, 65 << 20) for _ in range(2)]

        console.wait_for(lambda e: e.get("kind") == "checkpoint_saved", 120, "a checkpoint")
        stored = load_latest(run.checkpoint_dir)
        assert stored is not None
        gossip = _gossip_attack(puppet, run.run_id, stored.payloads(), time.monotonic() + 60)
        # the checkpointed weights go to members only
        stranger = send_one(run.control, encode(m.ModelRequest(node_id="fuzz-gossip", epoch=0)))

        fuzzer.join(240)
        assert not fuzzer.is_alive(), "the fuzzer did not finish"
        assert console.wait(120) == 0, console.output()[-3000:]
        log = puppet.stop()
        summary = console.summary()
        rejects = console.log.of("reject")
        node_logs = {name: node.output() for name, node in run.nodes.items()}
        exits = run.node_exits(30)

    # the control socket: every message answered by one error, with an allowed code
    result = fuzz["control"]
    assert result.sent == result.answered == FUZZ_COUNT
    assert result.unexpected == [], result.unexpected[:20]
    assert dropped == [True, True]  # over MAXMSGSIZE: dropped by libzmq, the console unharmed
    print(
        f"control fuzz: {FUZZ_COUNT} messages in {result.seconds:.1f}s; codes {dict(result.codes)}"
    )

    assert isinstance(stranger, m.Error) and stranger.code == "not_member", stranger

    # what only a member can get wrong: each refused with an allowed code and a reason
    by_kind: dict[str, list[str]] = {}
    for refusal in log.refusals:
        assert refusal.reply.startswith("error:"), refusal
        code, reason = refusal.reply.removeprefix("error:").split(":", 1)
        assert code in refusal.expected and reason.strip(), refusal
        by_kind.setdefault(refusal.what, []).append(code)
    for what, codes in sorted(by_kind.items()):
        print(f"member: {what}: {sorted(set(codes))}")
    assert len(by_kind) == 9, sorted(by_kind)
    seen = {code for codes in by_kind.values() for code in codes}
    assert {"not_witness", "wrong_round", "duplicate", "not_member", "hash_mismatch"} <= seen
    assert len(log.epochs) >= 2 and log.witnessed, "the puppet did not take part"

    # a node's gossip socket
    for what, codes in gossip.items():
        print(f"gossip: {what}: {codes}")
    assert len(gossip) == 14
    # the first refusal of a quiet peer in full, the rest in aggregated lines
    assert sum(text.count("rejected gossip") for text in node_logs.values()) >= 1
    # ... and the nodes tell the console with their heartbeats: the operator sees them too
    told = [e for e in rejects if e.get("code") == "gossip"]
    assert told and all("latest: " in e["text"] for e in told), told[:3]
    assert sum(c["gossip_refused"] for c in summary["clients"]) >= len(gossip)

    # counted, logged and shown per client; the run itself unaffected
    assert summary["rejected_messages"] >= FUZZ_COUNT + len(log.refusals)
    # logged: each refusal in full or in an aggregated line (which counts the interval's first
    # one too), a few lines for the lot
    logged = sum(e["count"] if e.get("code") == "flood" else 1 for e in rejects)
    assert logged >= FUZZ_COUNT + len(log.refusals)
    assert len(rejects) < 500, len(rejects)
    assert all(e.get("code") and e.get("text") for e in rejects)
    puppet_row = next(c for c in summary["clients"] if c["id"] == "zz-puppet")
    assert puppet_row["rejected_messages"] >= len(log.refusals)
    assert summary["final_state"] == "Finished"
    assert summary["accepted_rounds"] == TOTAL_ROUNDS
    assert [r["outcome"] for r in summary["rounds"]] == ["accepted"] * TOTAL_ROUNDS
    for r in summary["rounds"]:
        assert len(set(r["aggregates"].values())) == 1, r
    assert summary["final_metrics"]["accuracy"] >= 0.85
    assert all(exits[name] == 0 for name in NODES), exits
