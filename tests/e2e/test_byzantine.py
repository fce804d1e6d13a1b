"""Byzantine trainers: robust aggregators hold up, FedAvg's damage shows per client.

Five ``fl-node`` processes learn the digits (IID shards, every node trains every round); one
or two of them run with ``--attack`` (node/attacks.py) and send a scaled or sign-flipped update
instead of their own. With krum, fedmedian or trimmed_mean the final accuracy stays within 3
points of a clean FedAvg run of the same job; with FedAvg the attack wrecks the model, and the
console's per-client update norm (each node's distance to the round's aggregate) singles the
attacker out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.fault_runs import controlled_run, fault_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

NODES = [f"node-{i}" for i in range(5)]
ROUNDS = 20


def _run(directory: Path, aggregator: str, attacks: dict[str, str], **learning: Any) -> dict:
    config = fault_config(
        directory,
        coordinator={
            "init_min_clients": len(NODES),
            "witness_nodes": 2,
            "rounds_per_epoch": ROUNDS,
            "total_rounds": ROUNDS,
        },
        learning={
            "train_set_size": len(NODES),
            "local_epochs": 2,
            "aggregator": aggregator,
            "byzantine_f": 1,
            **learning,
        },
        data={"partition": "iid"},
    )
    with controlled_run(directory, config) as run:
        console = run.start_console()
        for name in NODES:
            extra = ("--attack", attacks[name]) if name in attacks else ()
            run.start_node(name, *extra)
        assert console.wait(150) == 0, console.output()[-3000:]
        summary = console.summary()
    assert summary["final_state"] == "Finished"
    assert summary["accepted_rounds"] == ROUNDS
    return summary


def _norms(summary: dict) -> dict[str, float]:
    return {c["id"]: c["update_norm"] for c in summary["clients"]}


@pytest.fixture(scope="module")
def clean_accuracy(tmp_path_factory: pytest.TempPathFactory) -> float:
    summary = _run(tmp_path_factory.mktemp("clean"), "fedavg", {})
    accuracy = summary["final_metrics"]["accuracy"]
    print(f"clean fedavg: accuracy {accuracy:.4f}")
    assert accuracy >= 0.9
    return accuracy


def test_fedavg_is_wrecked_by_a_scaled_update_and_the_console_shows_who_sent_it(
    tmp_path: Path, clean_accuracy: float
) -> None:
    summary = _run(tmp_path, "fedavg", {"node-4": "scale:1000"})
    accuracy = summary["final_metrics"]["accuracy"]
    norms = _norms(summary)
    print(f"fedavg, node-4 scale:1000: accuracy {accuracy:.4f}, update norms {norms}")
    assert accuracy < clean_accuracy - 0.3  # the damage
    honest = [norms[n] for n in NODES if n != "node-4"]
    assert norms["node-4"] > 3 * max(honest)  # and who did it, in the per-client view


@pytest.mark.parametrize(
    ("aggregator", "attacks", "options"),
    [
        ("krum", {"node-4": "scale:1000"}, {}),
        ("fedmedian", {"node-3": "scale:1000", "node-4": "signflip:10"}, {}),
        ("trimmed_mean", {"node-4": "scale:1000"}, {"trim_fraction": 0.2}),
    ],
    ids=["krum-one-scaled", "fedmedian-scaled-and-flipped", "trimmed_mean-one-scaled"],
)
def test_robust_aggregators_stay_within_3_points_of_a_clean_run_under_attack(
    tmp_path: Path,
    clean_accuracy: float,
    aggregator: str,
    attacks: dict[str, str],
    options: dict[str, Any],
) -> None:
    summary = _run(tmp_path, aggregator, attacks, **options)
    accuracy = summary["final_metrics"]["accuracy"]
    norms = _norms(summary)
    print(f"{aggregator}, {attacks}: accuracy {accuracy:.4f} (clean {clean_accuracy:.4f}), {norms}")
    assert accuracy >= clean_accuracy - 0.03
    honest = [norms[n] for n in NODES if n not in attacks]
    for attacker in attacks:  # the attackers still stand out in the console
        assert norms[attacker] > 3 * max(honest)
    for r in summary["rounds"]:  # and every node still holds the same model
        assert len(set(r["aggregates"].values())) == 1, r
