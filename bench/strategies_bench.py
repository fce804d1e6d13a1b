"""Learning strategies on strongly non-IID data: server optimisers, FedProx, a schedule.

``python -m bench strategies_bench`` (or ``python -m bench.strategies_bench [--only NAME ...]
[--rounds 30] [--timeout 900]``)

Each configuration is one real run: ``fl-console CONFIG --headless --spawn 8`` (a data.toml on
free ports), digits, the default MLP and local training (Adam, lr 0.01, batch 32, one local
epoch), 8 nodes that all train every round (``train_set_size = 8``), shards drawn with
Dirichlet(0.1) over the labels (each node sees one or two digits mostly), 30 rounds in one
epoch. The figure is the accuracy of the global model on the held-out split (the same on
every node: the summary's ``rounds[i].metrics.accuracy``) after rounds 10, 20 and the last,
and the run's wall time. A run that does not finish within ``--timeout`` is killed and listed
with the rounds it reached.

The baseline is FedAvg in the same run. :data:`CONFIGS` is the list of configurations; add a
row by appending a :class:`Strategy` (sections are merged into data.toml, e.g. a
``privacy`` section for DP-SGD rows).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.child import descendants, kill_leftovers
from tests.e2e.runs import HeadlessConsole
from tests.factories import write_config

NODES = 8
ROUNDS = 30
ALPHA = 0.1
CHECKPOINTS = (10, 20)  # rounds whose accuracy the table shows beside the final one


@dataclass(frozen=True)
class Strategy:
    name: str
    learning: dict[str, Any] = field(default_factory=dict)  # [learning] overrides
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)  # other tables


CONFIGS: list[Strategy] = [
    Strategy("FedAvg"),
    Strategy("FedProx mu=0.01", {"proximal_mu": 0.01}),
    Strategy("FedAvgM", {"server_optimizer": "avgm"}),
    Strategy("FedAdam", {"server_optimizer": "adam"}),
    Strategy("FedYogi", {"server_optimizer": "yogi"}),
    Strategy("FedAdagrad", {"server_optimizer": "adagrad"}),
    Strategy("FedAvg + cosine lr", {"lr_schedule": "cosine", "lr_min": 0.0}),
    # the adaptive optimisers with a larger server rate than their default 0.01 (Reddi et al.
    # tune eta per task; with client Adam at 0.01, a round moves a weight by a few 0.01s)
    Strategy("FedAdam eta=0.1", {"server_optimizer": "adam", "server_learning_rate": 0.1}),
    Strategy("FedYogi eta=0.1", {"server_optimizer": "yogi", "server_learning_rate": 0.1}),
    Strategy("FedAdagrad eta=0.1", {"server_optimizer": "adagrad", "server_learning_rate": 0.1}),
    # sample-level DP-SGD at every trainer (clip 1.0; epsilon at delta 1e-5 in its column)
    Strategy("DP-SGD noise 1.0", sections={"privacy": {"dp": True, "noise_multiplier": 1.0}}),
    Strategy("DP-SGD noise 0.5", sections={"privacy": {"dp": True, "noise_multiplier": 0.5}}),
]


def _sections(strategy: Strategy, rounds: int) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {
        "coordinator": {
            "init_min_clients": NODES,
            "total_rounds": rounds,
            "rounds_per_epoch": rounds,
            "warmup_time": 120.0,
            "max_round_train_time": 120.0,
            "round_witness_time": 10.0,
            "health_timeout": 10.0,
        },
        "learning": {"train_set_size": NODES, **strategy.learning},
        "data": {"partition": "dirichlet", "alpha": ALPHA},
        "local": {"spawn": NODES},
    }
    for table, values in strategy.sections.items():
        sections[table] = {**sections.get(table, {}), **values}
    return sections


def run_one(strategy: Strategy, rounds: int, timeout: float, work: Path) -> dict[str, Any]:
    """One run of ``strategy``: accuracies by round, wall time, or why it failed."""
    config = write_config(work, **_sections(strategy, rounds))
    console = HeadlessConsole(config, work / "run", "--spawn", str(NODES))
    started = time.monotonic()
    pids: list[int] = []
    summary: dict[str, Any] | None = None
    out: dict[str, Any] = {"name": strategy.name, "learning": strategy.learning}
    try:
        deadline = started + timeout
        while console.process.poll() is None and time.monotonic() < deadline:
            pids = sorted(set(pids) | set(descendants(console.pid)))
            time.sleep(0.5)
        out["seconds"] = time.monotonic() - started
        error = console.failure(timeout, tail=400)
        summary_path = work / "run" / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        if error is not None:
            out["error"] = error
    finally:
        console.reap()
        kill_leftovers(pids)
    if summary is None:
        summary = {"rounds": []}
    accepted = [r for r in summary["rounds"] if r["outcome"] == "accepted"]
    accuracy = [r["metrics"].get("accuracy") for r in accepted]
    out["accuracy_by_round"] = accuracy
    out["rounds_accepted"] = len(accepted)
    out["agree"] = all(len(set(r["aggregate_hashes"])) == 1 for r in accepted)
    for k in CHECKPOINTS:
        out[f"round{k}"] = accuracy[k - 1] if len(accuracy) >= k else None
    out["final"] = accuracy[-1] if len(accuracy) == rounds else None
    out["per_round_s"] = out["seconds"] / max(1, len(accepted))
    out["epsilon"] = (summary.get("privacy") or {}).get("epsilon")  # the worst node's, DP only
    return out


def run(only: tuple[str, ...] = (), rounds: int = ROUNDS, timeout: float = 900.0) -> dict[str, Any]:
    chosen = [s for s in CONFIGS if not only or s.name in only]
    results = []
    with tempfile.TemporaryDirectory(prefix="strategies_bench-") as tmp:
        for i, strategy in enumerate(chosen):
            print(f"[{strategy.name}] running ({rounds} rounds, {NODES} nodes) ...", flush=True)
            result = run_one(strategy, rounds, timeout, Path(tmp) / f"c{i}")
            print(f"[{strategy.name}] {_row(result, rounds)}", flush=True)
            results.append(result)
    return {"nodes": NODES, "rounds": rounds, "alpha": ALPHA, "configs": results}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _epsilon(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _row(r: dict[str, Any], rounds: int) -> str:
    cells = [_pct(r.get(f"round{k}")) for k in CHECKPOINTS]
    note = r.get("error", "")[:60] if "error" in r else ""
    if "error" in r:
        note = f"{r['rounds_accepted']}/{rounds} rounds; {note}"
    return (
        f"| {r['name']} | {' | '.join(cells)} | {_pct(r.get('final'))} | "
        f"{_epsilon(r.get('epsilon'))} | {r['seconds']:.0f} s | {'yes' if r['agree'] else 'NO'} "
        f"| {note} |"
    )


def table(result: dict[str, Any]) -> str:
    rounds = result["rounds"]
    heads = [f"round {k}" for k in CHECKPOINTS]
    lines = [
        f"Digits, {result['nodes']} nodes, Dirichlet({result['alpha']}), {rounds} rounds; "
        "held-out accuracy of the global model",
        "",
        f"| configuration | {' | '.join(heads)} | final | ε at δ 1e-5 | run time "
        "| hashes agree | note |",
        "|---|" + "---|" * (len(heads) + 5),
    ]
    lines.extend(_row(r, rounds) for r in result["configs"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.strategies_bench")
    parser.add_argument("--only", nargs="*", default=[], help="configuration names to run")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(tuple(args.only), args.rounds, args.timeout)
    print(table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
