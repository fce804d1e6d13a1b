"""A headless run with ``[security] curve = true``: real processes, real sockets, loopback.

The console spawns three nodes (fresh keys made at spawn time); a fourth, started by hand
like a node on another machine, uses a key pair from ``fl-console keygen``. The run needs all
four, so it finishes only if the hand-started node joined and gossiped over CURVE. Meanwhile
a node with an unlisted key and a node without CURVE try to join: both are refused, exit
non-zero within their join timeout saying why, and the console's event log says why too.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomlkit

from tests.e2e.child import Child, node_args, start_node
from tests.e2e.runs import HeadlessConsole
from tests.factories import REPO, write_config
from transport.keys import read_keypair, write_keypair

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

STRANGER_JOIN_TIMEOUT = 30.0
PLAIN_JOIN_TIMEOUT = 5.0


def test_curve_run_finishes_and_unlisted_or_plain_nodes_are_refused_with_the_reason(
    tmp_path: Path,
) -> None:
    keygen = subprocess.run(
        [sys.executable, "-m", "console.cli", "keygen", str(tmp_path / "keys"), "--nodes", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert keygen.returncode == 0, keygen.stderr
    keys = tmp_path / "keys"
    _, stranger_secret = write_keypair(tmp_path / "elsewhere", "stranger")
    stranger_key, _ = read_keypair(stranger_secret)
    config = write_config(
        tmp_path,
        coordinator={
            "init_min_clients": 4,
            "min_clients": 2,
            "total_rounds": 2,
            "rounds_per_epoch": 2,
            "warmup_time": 60.0,
        },
        local={"spawn": 3},
        security={
            "curve": True,
            "server_key": "keys/console.key_secret",
            "authorized_keys": "keys/authorized",
        },
    )
    doc = tomlkit.parse(config.read_text())
    control = f"tcp://127.0.0.1:{doc['server']['control_port']}"
    run_id = str(doc["run_id"])
    console = HeadlessConsole(config, tmp_path / "run")
    nodes: list[Child] = []

    def node(name: str, *args: str) -> Child:
        started = start_node(
            name, node_args(control, run_id, name, *args), tmp_path / f"{name}.log"
        )
        nodes.append(started)
        return started

    try:
        console.wait_for_event(lambda e: "CURVE on" in e.get("text", ""), timeout=60)
        # The refused nodes go first: the run waits for its fourth member (site-a) meanwhile,
        # so the console is still serving when they knock, however fast the run is later.
        stranger = node(
            "stranger",
            "--curve-key",
            str(stranger_secret),
            "--server-key",
            str(keys / "console.key"),
            "--join-timeout",
            str(STRANGER_JOIN_TIMEOUT),
        )
        plain = node("plain", "--join-timeout", str(PLAIN_JOIN_TIMEOUT))

        code = stranger.wait(timeout=120)
        took = time.monotonic() - stranger.started
        assert code == 3, stranger.output()
        assert took < STRANGER_JOIN_TIMEOUT + 30  # refused at once, not timed out (startup aside)
        assert f"refused this node's CURVE key {stranger_key.decode()}" in stranger.output()
        refusal = console.wait_for_event(lambda e: e.get("code") == "not_authorized", timeout=30)
        assert refusal["level"] == "warning" and refusal["key"] == stranger_key.decode()
        assert f"key {stranger_key.decode()} is not authorized" in refusal["text"]
        assert refusal["address"] == "127.0.0.1"

        code = plain.wait(timeout=120)
        assert code == 4, plain.output()
        assert "the console probably uses CURVE" in plain.output()
        handshake = console.wait_for_event(
            lambda e: e.get("code") == "handshake" and "without CURVE" in e["text"], timeout=30
        )
        assert handshake["level"] == "warning"

        site = node(
            "site-a",
            "--curve-key",
            str(keys / "node-0.key_secret"),
            "--server-key",
            str(keys / "console.key"),
            "--join-timeout",
            "120",
        )

        assert console.wait(timeout=200) == 0, console.output()[-3000:]
        assert site.wait(timeout=30) == 0, site.output()
        summary = console.read_summary()
        assert summary["final_state"] == "Finished" and summary["accepted_rounds"] == 2
        clients = {c["id"]: c for c in summary["clients"]}
        assert {"node-0", "node-1", "node-2", "site-a"} <= set(clients)
        assert "stranger" not in clients and "plain" not in clients
        # Models went node to node over CURVE, to and from the hand-started node too.
        assert clients["site-a"]["bytes_received_p2p"] > 0
        assert summary["refused_connections"] >= 2
    finally:
        for started in nodes:
            started.reap()
        console.reap()
