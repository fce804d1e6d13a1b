"""A sustained garbage flood on the console's control port during a real run: the flooder is
answered until the refusal limit, then ``rate_limited`` once, then ignored; the members are
never throttled and every round is accepted; the flood costs a few log lines, not one each.

Three ``fl-node`` processes learn the digits under a headless console while a DEALER on the
same host (loopback: the members' own address) sends 10,000 garbage messages a second to the
console, and another 5,000 a second to node-0's gossip ROUTER, from round 1 until the run is
over.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from bench.flood_bench import flood
from tests.e2e.fault_runs import controlled_run, fault_config
from transport import messages as m
from transport.codec import decode
from transport.flood import REFUSAL_LIMIT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NODES = [f"node-{i}" for i in range(3)]
TOTAL_ROUNDS = 30
LIMIT = 200  # data.toml's [server] refusal_limit


def gossip_endpoint(state: str, node: str) -> str:
    """``node``'s gossip endpoint, from the console's state broadcast."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(state)
    try:
        assert sub.poll(10_000), "no state broadcast"
        update = decode(sub.recv_multipart())
        assert isinstance(update, m.StateUpdate)
        client = update.snapshot.client(node)
        assert client is not None and client.gossip_endpoint, update.snapshot
        return client.gossip_endpoint
    finally:
        sub.close(linger=0)
        ctx.term()


def test_a_flooding_peer_is_rate_limited_and_the_run_finishes_every_round(
    tmp_path: Path,
) -> None:
    config = fault_config(
        tmp_path,
        coordinator={
            "init_min_clients": len(NODES),
            "min_clients": 2,
            "witness_nodes": 2,
            "rounds_per_epoch": 10,
            "total_rounds": TOTAL_ROUNDS,
            "heartbeat_interval": 0.3,
            "health_timeout": 3.0,
        },
        learning={"train_set_size": 3},
        server={"refusal_limit": LIMIT, "refusal_backoff": 4.0},
    )
    stop = threading.Event()
    sent: dict[str, Any] = {}
    gossip_sent: dict[str, Any] = {}
    with controlled_run(tmp_path, config) as run:
        console = run.start_console()
        for name in NODES:
            run.start_node(name)
        console.wait_for(lambda e: e.get("kind") == "round_started", 120, "the first round")

        gossip = gossip_endpoint(run.state, "node-0")

        def flooder() -> None:
            sent.update(flood(run.control, 10_000, 600, stop=stop))

        def gossip_flooder() -> None:
            gossip_sent.update(flood(gossip, 5_000, 600, stop=stop))

        threads = [
            threading.Thread(target=flooder, name="flooder"),
            threading.Thread(target=gossip_flooder, name="gossip-flooder"),
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            assert console.wait(240) == 0, console.output()[-3000:]
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        flooded = time.monotonic() - started
        summary = console.summary()
        console.log.poll()
        events = console.log.events
        exits = run.node_exits(30)
        node0 = run.nodes["node-0"].output()

    # the flooder: LIMIT refusals, then rate_limited once per back-off, then silence
    backoffs = [e for e in events if e.get("kind") == "rate_limited"]
    assert len(backoffs) >= 1 and all(e["peer"] == "127.0.0.1" for e in backoffs)
    assert sent["rate_limited"] == len(backoffs)
    assert sent["malformed"] == LIMIT * len(backoffs)
    assert sent["sent"] >= 5_000 * flooded * 0.5, sent  # a sustained flood, not a trickle
    print(f"flood: {sent['sent']:,} sent in {flooded:.1f}s ({sent['rate']:,.0f}/s); {sent}")

    # logged as a few aggregated lines, not one line per message
    rejects = [e for e in events if e.get("kind") == "reject"]
    aggregated = [e for e in rejects if e.get("code") == "flood"]
    assert len(rejects) <= 3 + flooded / 2 + len(backoffs), [e["text"] for e in rejects]
    counted = sum(e["count"] for e in aggregated)
    # what the console read (the rest was still queued in ZeroMQ when the run ended)
    assert counted >= sent["sent"] * 0.6, (counted, sent["sent"])
    print(f"log: {len(rejects)} reject lines for {counted:,} messages read of {sent['sent']:,}")

    # node-0's gossip ROUTER: the same (nodes' limit and back-off are constants)
    assert gossip_sent["rate_limited"] >= 1
    # at most the limit per back-off: node-0 counts per address, and the other nodes' own
    # refused pushes (a round moved on) come from the same loopback address and share the tally
    limit = REFUSAL_LIMIT * gossip_sent["rate_limited"]
    assert limit - 10 <= gossip_sent["malformed"] <= limit, gossip_sent
    assert node0.count("rate-limited: ") == gossip_sent["rate_limited"], node0[-2000:]
    assert node0.count("rejected gossip") < 20, node0[-2000:]
    print(f"gossip flood: {gossip_sent}")

    # the members: never throttled, never dropped, every round accepted
    assert not [e for e in events if e.get("kind") == "client_dropped"]
    assert summary["final_state"] == "Finished"
    assert summary["accepted_rounds"] == TOTAL_ROUNDS
    assert [r["outcome"] for r in summary["rounds"]] == ["accepted"] * TOTAL_ROUNDS
    for r in summary["rounds"]:
        assert len(set(r["aggregates"].values())) == 1, r
    assert all(exits[name] == 0 for name in NODES), exits
