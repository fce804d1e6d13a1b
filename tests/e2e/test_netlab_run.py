"""README's "Nodes on other machines" recipe, run for real across addresses (plain and CURVE).

A network lab (bench/netlab.py) gives the console and four ``fl-node`` processes a network
namespace each: the console binds the bridge's address in the hub namespace (``[local] spawn
= 0``), every node joins with ``--connect tcp://HUB:PORT --gossip-host ITS_OWN_ADDRESS``, and
every link is rate-limited. The same again with the console and the nodes' gossip sockets
bound on every interface (``0.0.0.0``). Nodes in different namespaces can only reach each other through
the bridge, so a finished run whose nodes announced their own addresses and exchanged models
proves that joining, the state broadcast and the gossip all crossed it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from bench.netlab import NetLab, cleanup_stale, lab_unavailable
from tests.e2e.child import Child, node_args, start_node
from tests.e2e.runs import HeadlessConsole
from tests.factories import REPO, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

NODES = 4
ROUNDS = 4
RATE_MBIT = 100.0


@pytest.fixture
def lab() -> Iterator[NetLab]:
    why = lab_unavailable()
    if why is not None:
        pytest.skip(why)
    cleanup_stale()  # namespaces of an earlier run that was killed before it could tear down
    with NetLab(NODES, rate_mbit=RATE_MBIT) as made:
        yield made


def _keys(directory: Path) -> Path:
    done = subprocess.run(
        [sys.executable, "-m", "console.cli", "keygen", str(directory), "--nodes", str(NODES)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return directory


@pytest.mark.parametrize(
    ("curve", "wildcard"),
    [(False, False), (True, False), (False, True)],
    ids=["plain", "curve", "every-interface"],
)
def test_nodes_in_their_own_namespaces_finish_the_run_through_the_console_on_the_bridge(
    tmp_path: Path, lab: NetLab, curve: bool, wildcard: bool
) -> None:
    """``wildcard``: the console and every node's gossip socket bind ``0.0.0.0``, not an address
    (README's first choice); peers must still be told each node's own address."""
    security: dict[str, Any] = {}
    node_keys: list[list[str]] = [[] for _ in range(NODES)]
    if curve:
        keys = _keys(tmp_path / "keys")
        security = {
            "curve": True,
            "server_key": "keys/console.key_secret",
            "authorized_keys": "keys/authorized",
        }
        node_keys = [
            ["--curve-key", str(keys / f"node-{i}.key_secret")]
            + ["--server-key", str(keys / "console.key")]
            for i in range(NODES)
        ]
    config = write_config(
        tmp_path,
        server={"host": "0.0.0.0" if wildcard else lab.hub_address},
        coordinator={
            "init_min_clients": NODES,
            "total_rounds": ROUNDS,
            "rounds_per_epoch": ROUNDS,
        },
        local={"spawn": 0},
        security=security,
    )
    doc = tomlkit.parse(config.read_text())
    control = f"tcp://{lab.hub_address}:{doc['server']['control_port']}"
    run_id = str(doc["run_id"])
    console = HeadlessConsole(config, tmp_path / "run", prefix=lab.exec_args(lab.hub_ns))
    nodes: list[Child] = []
    try:
        for i, (ns, address) in enumerate(zip(lab.node_ns, lab.node_address, strict=True)):
            args = node_args(control, run_id, f"site-{i}")
            gossip_host = "0.0.0.0" if wildcard else address
            args += ["--gossip-host", gossip_host, "--join-timeout", "60", *node_keys[i]]
            nodes.append(start_node(f"site-{i}", args, tmp_path / f"site-{i}.log", lab=lab, ns=ns))

        assert console.wait(timeout=100) == 0, console.output()[-3000:]
        for node in nodes:
            assert node.wait(timeout=30) == 0, node.output()[-3000:]

        summary = console.read_summary()
        assert summary["final_state"] == "Finished", summary
        assert summary["accepted_rounds"] == ROUNDS
        assert [r["outcome"] for r in summary["rounds"]] == ["accepted"] * ROUNDS
        for r in summary["rounds"]:
            assert len(r["aggregates"]) == NODES, r
            assert len(set(r["aggregates"].values())) == 1, r  # every node holds the same model
        assert summary["spawned_pids"] == []
        if curve:
            assert any("CURVE on" in e.get("text", "") for e in console.events_seen())
            assert summary["refused_connections"] == 0

        clients = {c["id"]: c for c in summary["clients"]}
        assert set(clients) == {f"site-{i}" for i in range(NODES)}
        for i, address in enumerate(lab.node_address):
            client = clients[f"site-{i}"]
            # each node announced a gossip endpoint on its own namespace's address ...
            assert client["address"].startswith(f"tcp://{address}:"), client
            # ... and models went node to node over it
            assert client["bytes_sent_p2p"] > 0 and client["bytes_received_p2p"] > 0, client
            # which crossed the node's own link: its veth carried at least the models it sent
            received, sent = lab.link_bytes(i)
            assert sent >= client["bytes_sent_p2p"], (sent, client)
            assert received >= client["bytes_received_p2p"], (received, client)
    finally:
        for node in nodes:
            node.reap()
        console.reap()
