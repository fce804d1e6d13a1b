"""Compressed, relayed updates in real runs: every node still holds bit-identical weights.

The default job with four spawned ``fl-node`` processes, once per codec (with and without
relaying): every round is accepted, every node reports the same aggregate hash every round,
no node received an update twice or had to fetch one, and the trainers' updates shrank by the
codec's ratio. Then, in a network lab with slow links, a relay is SIGKILLed while the round's
updates are on their way: the round is still accepted for every live trainer.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomlkit

from bench.netlab import NetLab, cleanup_stale, lab_unavailable
from tests.e2e.child import Child, node_args, start_node
from tests.e2e.runs import HeadlessConsole
from tests.factories import write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROUNDS = 3


@pytest.mark.parametrize(
    ("codec", "fanout", "ratio"),
    [("fp16", 0, 2.0), ("int8", 2, 3.9), ("topk", 1, 4.9)],
    ids=["fp16", "int8-fanout2", "topk-fanout1"],
)
def test_every_node_holds_the_same_model_with_compressed_relayed_updates(
    tmp_path: Path, codec: str, fanout: int, ratio: float
) -> None:
    config = write_config(
        tmp_path,
        coordinator={"total_rounds": ROUNDS, "rounds_per_epoch": ROUNDS},
        learning={"compression": codec, "gossip_fanout": fanout},
    )
    console = HeadlessConsole(config, tmp_path / "run")
    try:
        assert console.wait(timeout=150) == 0, console.output()[-3000:]
        summary = console.read_summary()
    finally:
        console.reap()
    assert summary["final_state"] == "Finished"
    rounds = summary["rounds"]
    assert [r["outcome"] for r in rounds] == ["accepted"] * ROUNDS
    for r in rounds:
        assert len(r["aggregates"]) == 4 and len(r["aggregate_hashes"]) == 1, r
        ratios = [c["compression_ratio"] for c in r["clients"].values()]
        assert ratios and all(x == pytest.approx(ratio, rel=0.05) for x in ratios), ratios
    for client in summary["clients"]:
        assert client["duplicates"] == 0 and client["fetches"] == 0, client
        assert client["compression_ratio"] == pytest.approx(ratio, rel=0.05), client


# ----------------------------------------------------------------------- a relay dies


NODES = 4
RATE_MBIT = 4.0  # a ~340 kB update takes ~0.7 s a hop: long enough to die in the middle


@pytest.fixture
def lab() -> Iterator[NetLab]:
    why = lab_unavailable()
    if why is not None:
        pytest.skip(why)
    cleanup_stale()
    with NetLab(NODES, rate_mbit=RATE_MBIT) as made:
        yield made


def test_a_relay_killed_mid_gossip_loses_no_live_trainers_update(
    tmp_path: Path, lab: NetLab
) -> None:
    config = write_config(
        tmp_path,
        server={"host": lab.hub_address},
        coordinator={
            "init_min_clients": NODES,
            "total_rounds": 3,
            "rounds_per_epoch": 3,
            "max_round_train_time": 60.0,
            "round_witness_time": 10.0,
        },
        learning={"gossip_fanout": 1},  # a chain: every node but the last relays
        model={"hidden": [256, 256]},
        local={"spawn": 0},
    )
    doc = tomlkit.parse(config.read_text())
    control = f"tcp://{lab.hub_address}:{doc['server']['control_port']}"
    console = HeadlessConsole(config, tmp_path / "run", prefix=lab.exec_args(lab.hub_ns))
    nodes: dict[str, Child] = {}
    try:
        for i, ns in enumerate(lab.node_ns):
            name = f"site-{i}"
            args = node_args(control, str(doc["run_id"]), name)
            args += ["--gossip-host", lab.node_address[i], "--join-timeout", "60"]
            nodes[name] = start_node(name, args, tmp_path / f"{name}.log", lab=lab, ns=ns)
        started = console.wait_for_event(
            lambda e: e["kind"] == "round_started" and e["round"] == 2, timeout=120
        )
        # Every node trains; the victim is no witness (its loss must not cost the quorum).
        victim = sorted(set(started["train_set"]) - set(started["witnesses"]))[0]
        console.wait_for_event(
            lambda e: e["kind"] == "result_committed" and e["round"] == 2, timeout=60
        )
        time.sleep(0.5)  # the updates are on their way along the chains
        nodes[victim].signal(signal.SIGKILL)
        assert console.wait(timeout=150) == 0, console.output()[-3000:]
        summary = console.read_summary()
        fetched = sum(c["fetches"] or 0 for c in summary["clients"] if c["id"] != victim)
    finally:
        for node in nodes.values():
            node.reap()
        console.reap()

    round2 = next(r for r in summary["rounds"] if r["round"] == 2)
    assert round2["outcome"] == "accepted", round2
    live_trainers = set(round2["train_set"]) - {victim}
    assert live_trainers <= set(round2["accepted"]), round2
    survivors = {n for n in nodes if n != victim}
    assert survivors <= set(round2["aggregates"]) and len(round2["aggregate_hashes"]) == 1
    assert summary["final_state"] == "Finished"
    print(f"killed {victim}; the survivors fetched {fetched} update(s) a dead relay held")
