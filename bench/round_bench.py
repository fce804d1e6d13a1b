"""Round overhead, gossip volume and time to accuracy: real processes and sockets against the same
training done in one process with no network, in the same run.

``python -m bench.round_bench [--jobs default4 default8 large8] [--repeats 3] [--json PATH]``

Each job runs ``fl-console CONFIG --headless --spawn N --summary --metrics-csv`` (a data.toml on
free ports, ``init_min_clients = train_set_size = N``) ``--repeats`` times; a run that does not
finish within the job's limit is killed and listed. Every figure is the median over the runs
(a run's figure is itself the median over its rounds):

- **default4 / default8**: the default job (digits, MLP 64-32, 20 rounds, FedAvg, Adam, every
  node training every round) at 4 and 8 nodes.
- **large8**: a ~1M-parameter model at 8 nodes: synthetic 60,000 x 784, 10 classes, MLP
  784-1024-256-10 (1.07M parameters, 4.3 MB), iid shards, 5 rounds, 1 local epoch, batch 64,
  Adam; generous phase limits and ``health_timeout = 10`` so that a loaded machine slows the run
  down instead of dropping nodes.
- **design4 / design8** (not run by default): DESIGN.md's job (MLP 784-256-128-10, otherwise as
  large8), for comparison with its Flower and P2PFL figures.

Figures:

- **round1 s**: from the command (the console's launch) to round 1's start; **job s**: from the
  command to the console's exit (the whole job, start-up and shutdown included).
- **round**: the summary's ``rounds[i].duration`` (RoundTrain entry to the round's outcome);
  **period**: from one ``round_started`` event to the next in the same epoch (the full cycle,
  with the vote for the next round); **rounds/s** = 1 / median period. The round is split, from
  the event log, into start -> last commit (the previous round's aggregation, then training),
  last commit -> end (gossip, witnesses) and end -> next start (the last vote).
- **overhead** = (round - the slowest trainer's ``train_time`` in the summary) / round, absolute
  (ms) and relative: what a round costs beyond its slowest trainer's local epochs.
- **baseline** (pure compute), in a fresh ``python -m bench.round_bench --baseline`` process,
  so it pays torch's imports and first calls once, as one node does: the same shards
  (node/data.py, the node's own shard assignment), the same model and seed, the same
  optimiser and epochs, N local models trained one after the other with torch on 1 thread, then
  FedAvg (node/aggregators.py). ``seq`` = the N trainers' ``train_local`` times plus one
  aggregation, per round. ``floor`` = what a round cannot go below on this machine: each node's
  work (train, evaluate its model, hash, aggregate, evaluate the aggregate) spread over
  min(cores, N) cores, and at least the slowest node's work. **x floor** = period / floor. The
  baseline replays the run bit for bit: its aggregate hashes are compared with the run's.
- **gossip**: peer-to-peer bytes a node sent per round (the metrics CSV's running
  ``bytes_sent`` at the last round each node reported, over that round; median over nodes)
  against the minimum for every node to hold every trainer's model: trainers x (N - 1) x model
  bytes per round, divided by N.
- **time to accuracy** (default jobs): from the console's start (the first line of
  ``events.jsonl``) until every node reported the first aggregate whose accuracy on the
  held-out digits is >= 0.90 (the summary's ``rounds[i].metrics.accuracy``, the
  ``aggregate_reported`` events' ``t``); split into join (processes up, torch imported, all
  joined: the epoch's start), Warmup and rounds. Baseline: the pure-compute process from its
  first import to the same aggregate evaluated.

The machine is shared: the table shows the load average before and after; compare ratios.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.report import save_result
from tests.e2e.child import descendants, kill_leftovers
from tests.e2e.helpers import read_events
from tests.e2e.runs import HeadlessConsole
from tests.factories import REPO, write_config

RESULTS = Path(__file__).with_name("results.json")
ACCURACY = 0.90
OVERHEAD_TARGET_MS = 20.0  # default job, absolute, per round
OVERHEAD_TARGET_FRACTION = 0.10  # ~1M-parameter model at 8 nodes
GOSSIP_TARGET = 1.2  # bytes sent / the minimum
ROUND1_TARGET_S = 2.5  # default4: from the command to round 1 starting
JOB_TARGET_S = 5.0  # default4: the whole 20-round job, from the command to the console's exit
CORES = os.cpu_count() or 1
DROP_EVENTS = ("client_dropped", "client_left", "client_kicked")
# DESIGN.md "Performance": steady seconds per round of MLP 784-256-128-10, 4 and 8 nodes.
PEERS = {
    "Flower 1.42 simulation": {4: 1.6, 8: 2.1},
    "Flower 1.42 deployment": {4: 14.5, 8: 27.4},
    "P2PFL 0.4.4": {4: 10.0, 8: 14.7},
}


@dataclass(frozen=True)
class Job:
    name: str
    nodes: int
    rounds: int
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    timeout: float = 120.0  # seconds for one whole run; killed past it
    baseline_rounds: int | None = None  # None: every round (the run is replayed bit for bit)
    time_to_accuracy: bool = False


def _default(nodes: int) -> Job:
    return Job(
        name=f"default{nodes}",
        nodes=nodes,
        rounds=20,
        sections={
            "coordinator": {"init_min_clients": nodes},
            "learning": {"train_set_size": nodes},
        },
        time_to_accuracy=True,
    )


def _synthetic(name: str, nodes: int, hidden: list[int]) -> Job:
    return Job(
        name=name,
        nodes=nodes,
        rounds=5,
        sections={
            "coordinator": {
                "init_min_clients": nodes,
                "total_rounds": 5,
                "warmup_time": 120.0,
                "max_round_train_time": 120.0,
                "round_witness_time": 10.0,
                "health_timeout": 10.0,
            },
            "learning": {"train_set_size": nodes, "batch_size": 64, "optimizer": "adam"},
            "model": {"hidden": hidden},
            "data": {"source": "synthetic", "partition": "iid"},
        },
        timeout=150.0,  # a run takes ~50 s here; a stuck one must not push `make bench` past 10 min
        baseline_rounds=1,
    )


JOBS: dict[str, Job] = {
    "default4": _default(4),
    "default8": _default(8),
    "large8": _synthetic("large8", 8, [1024, 256]),
    "design4": _synthetic("design4", 4, [256, 128]),
    "design8": _synthetic("design8", 8, [256, 128]),
}
DEFAULT_JOBS = ("default4", "default8", "large8")


# ----------------------------------------------------------------------------- the baseline


def pure_compute(config_path: Path, nodes: int, rounds: int) -> dict[str, Any]:
    """The run's training, N local models one after the other in this process, no network.

    Run in a fresh process (``--baseline``), so it pays torch's imports and first calls once,
    as one node does; ``imports`` (torch, torch._dynamo that torch.optim needs, our modules) and
    ``setup`` time them. ``imports`` is the floor of a node's start, hence of round 1.
    """
    started = time.perf_counter()
    import torch
    import torch._dynamo  # noqa: F401 - torch.optim's first step imports it: a node pays it too

    from console.config import load_config
    from node.aggregators import Update, aggregate
    from node.compression import (
        CodecSpec,
        UpdateEncoder,
        apply_update,
        decode_update,
        trainable_names,
    )
    from node.data import load_dataset, shard
    from node.models import build_model
    from node.stages import warm_up_torch
    from node.training import evaluate, train_local
    from node.weights import load_into, model_hash_of

    imports = time.perf_counter() - started
    torch.set_num_threads(1)
    config = load_config(config_path)
    spec = config.run_spec()
    started = time.perf_counter()
    base_dir = config.source.parent if config.source is not None else None
    ds = load_dataset(spec.data, seed=spec.seed, base_dir=base_dir)
    ids = sorted(f"node-{i}" for i in range(nodes))  # a node's shard index: sorted members
    shards = {nid: shard(ds, ids.index(nid), nodes, spec.data, spec.seed) for nid in ids}
    models = {
        nid: build_model(
            spec.model,
            features=ds.features,
            classes=ds.classes,
            image_shape=ds.image_shape,
            seed=spec.seed,
        )
        for nid in ids
    }
    warm_up_torch(models[ids[0]], ds, spec.learning)  # the nodes pay this in Warmup too
    setup = time.perf_counter() - started
    global_state = {k: v.detach().clone() for k, v in models[ids[0]].state_dict().items()}
    model_bytes = sum(t.numel() * t.element_size() for t in global_state.values())
    # Nodes send encoded updates and aggregate what they decode: the baseline does the same.
    codec = CodecSpec(spec.learning.compression, spec.learning.topk_fraction)
    trainable = trainable_names(models[ids[0]])
    encoders = {nid: UpdateEncoder(codec, global_state, trainable) for nid in ids}
    params = sum(p.numel() for p in models[ids[0]].parameters())
    learning = spec.learning
    out_rounds = []
    elapsed = imports + setup
    reached: dict[str, Any] | None = None
    for r in range(1, rounds + 1):
        train, local_eval, hashing = {}, {}, {}
        updates = []
        for nid in ids:
            model = models[nid]
            load_into(model, global_state)
            result = train_local(model, shards[nid], learning, seed=spec.seed, round=r)
            train[nid] = result.train_time
            trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
            t0 = time.perf_counter()
            evaluate(model, ds.x_test, ds.y_test)
            local_eval[nid] = time.perf_counter() - t0
            t0 = time.perf_counter()
            payloads = encoders[nid].encode(trained, global_state)
            delta = decode_update(payloads, codec, global_state, trainable)
            model_hash_of(trained)
            hashing[nid] = time.perf_counter() - t0
            updates.append(Update(nid, result.samples, delta))
        t0 = time.perf_counter()
        aggregated = aggregate(
            learning.aggregator,
            updates,
            trim_fraction=learning.trim_fraction,
            byzantine_f=learning.byzantine_f,
        )
        global_state = apply_update(global_state, aggregated)
        agg = time.perf_counter() - t0
        probe = models[ids[0]]
        load_into(probe, global_state)
        t0 = time.perf_counter()
        accuracy = evaluate(probe, ds.x_test, ds.y_test).accuracy
        global_eval = time.perf_counter() - t0
        digest = model_hash_of(probe)
        # One node's work in this round, as it would do it alone on a core.
        work = {
            nid: train[nid] + local_eval[nid] + 2 * hashing[nid] + agg + global_eval for nid in ids
        }
        elapsed += sum(train.values()) + sum(local_eval.values()) + agg + global_eval
        out_rounds.append(
            {
                "round": r,
                "seq": sum(train.values()) + agg,
                "max_train": max(train.values()),
                "aggregate": agg,
                "evaluate": global_eval,
                "hash": statistics.median(hashing.values()),
                "floor": max(max(work.values()), sum(work.values()) / min(CORES, nodes)),
                "accuracy": accuracy,
                "hash_hex": digest,
            }
        )
        if reached is None and accuracy >= ACCURACY:
            reached = {"round": r, "seconds": elapsed}
    med = statistics.median
    return {
        "nodes": nodes,
        "params": params,
        "model_bytes": model_bytes,
        "imports": imports,
        "setup": setup,
        "rounds": out_rounds,
        "seq": med(x["seq"] for x in out_rounds),
        "max_train": med(x["max_train"] for x in out_rounds),
        "aggregate": med(x["aggregate"] for x in out_rounds),
        "floor": med(x["floor"] for x in out_rounds),
        "to_accuracy": reached,
    }


def baseline(config_path: Path, nodes: int, rounds: int, timeout: float) -> dict[str, Any]:
    """:func:`pure_compute` in a fresh ``python -m bench.round_bench --baseline`` process."""
    cmd = [sys.executable, "-m", "bench.round_bench", "--baseline", str(config_path)]
    cmd += [str(nodes), str(rounds)]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # as the console gives its nodes
    done = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"baseline failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


# ----------------------------------------------------------------------------- one real run


def _reap(console: HeadlessConsole, pids: list[int]) -> None:
    """Stop the console if it still runs, then kill any node it leaves behind (they die with it)."""
    console.reap()
    kill_leftovers(pids)


def run_once(job: Job, work: Path) -> dict[str, Any]:
    """One ``fl-console --headless --spawn N`` run of ``job``: summary, events, metrics CSV."""
    config = write_config(work, local={"spawn": job.nodes}, **job.sections)
    run_dir = work / "run"
    metrics = work / "metrics.csv"
    launched = time.time()
    console = HeadlessConsole(
        config, run_dir, "--spawn", str(job.nodes), "--metrics-csv", str(metrics)
    )
    pids: list[int] = []
    out: dict[str, Any] = {"config": config, "launched": launched}
    try:
        deadline = time.monotonic() + job.timeout
        while console.process.poll() is None and time.monotonic() < deadline:
            pids = sorted(set(pids) | set(descendants(console.pid)))
            time.sleep(0.2)
        out["exited"] = time.time()
        error = console.failure(job.timeout, tail=500)
        if error is not None:
            out["error"] = error
        else:
            out["summary"] = console.read_summary()
            out["events"] = read_events(console.events)
            with metrics.open(newline="") as fh:
                out["metrics"] = list(csv.DictReader(fh))
    finally:
        _reap(console, pids)
    if "error" in out:  # keep what the failed run wrote (config, event log, node logs)
        kept = Path(tempfile.mkdtemp(prefix=f"round_bench-failed-{job.name}-"))
        shutil.copytree(work, kept, dirs_exist_ok=True)
        out["error"] += f"; its files: {kept}"
    return out


def _gossip_per_round(rows: list[dict[str, str]]) -> float | None:
    """Bytes a node sends per round: each node's running total at the last round it reported,
    over that round number (a node's last report may come after the CSV is written);
    the median over nodes."""
    last: dict[str, tuple[int, int]] = {}
    for row in rows:
        if row.get("bytes_sent"):
            r, sent = int(row["round"]), int(row["bytes_sent"])
            if r > last.get(row["client"], (0, 0))[0]:
                last[row["client"]] = (r, sent)
    per_node = [sent / r for r, sent in last.values() if r > 0]
    return statistics.median(per_node) if per_node else None


def analyse(run: dict[str, Any], base: dict[str, Any], job: Job) -> dict[str, Any]:
    """The figures of one run, against the baseline."""
    summary, events = run["summary"], run["events"]
    rounds = [r for r in summary["rounds"] if r["outcome"] == "accepted" and r["duration"]]
    durations = [r["duration"] for r in rounds]
    max_train = [max((c.get("train_time") or 0.0) for c in r["clients"].values()) for r in rounds]
    over = [d - t for d, t in zip(durations, max_train, strict=True)]
    fraction = [o / d for o, d in zip(over, durations, strict=True)]
    started = {e["round"]: e for e in events if e["kind"] == "round_started"}
    ended = {e["round"]: e for e in events if e["kind"] == "round_ended"}
    periods = [
        started[r + 1]["t"] - started[r]["t"]
        for r in sorted(started)
        if r + 1 in started and started[r + 1]["epoch"] == started[r]["epoch"]
    ]
    n = job.nodes
    trainers = statistics.median(len(r["train_set"]) for r in rounds)
    accepted = summary["accepted_rounds"]
    sent = _gossip_per_round(run["metrics"])
    minimum = trainers * (n - 1) * base["model_bytes"] / n
    period = statistics.median(periods) if periods else statistics.median(durations)
    first, last = min(started), max(ended)
    out: dict[str, Any] = {
        # from the command (the console's launch) to round 1's start, and to the console's exit
        "to_round1": started[first]["wall"] - run["launched"],
        "command_wall": run["exited"] - run["launched"],
        "final_state": summary["final_state"],
        "accepted_rounds": accepted,
        "drops": sum(1 for e in events if e["kind"] in DROP_EVENTS),
        "epochs": sum(1 for e in events if e["kind"] == "epoch_started"),
        "wall_time": summary["wall_time"],
        "round_mean": statistics.mean(durations),
        "round_median": statistics.median(durations),
        "period_median": period,
        "rounds_per_s": 1.0 / period,
        "rounds_per_s_overall": accepted / (ended[last]["t"] - started[first]["t"]),
        "max_train_median": statistics.median(max_train),
        "overhead_ms": 1e3 * statistics.median(over),
        "overhead_mean_ms": 1e3 * statistics.mean(over),
        "overhead_fraction": statistics.median(fraction),
        "x_floor": period / base["floor"],
        "floor_overhead_fraction": (period - base["floor"]) / period,
        **_phases(events),
        "bytes_per_round": sent,
        "gossip_minimum": minimum,
        "gossip_ratio": None if sent is None else sent / minimum,
    }
    # The baseline replays the run: the same aggregate every round (unless membership moved).
    run_hashes = {r["round"]: r["aggregate_hashes"] for r in rounds}
    checked = [b for b in base["rounds"] if b["round"] in run_hashes]
    out["same_aggregates"] = all([b["hash_hex"]] == run_hashes[b["round"]] for b in checked)
    if job.time_to_accuracy:
        out.update(_time_to_accuracy(summary, events, run["launched"]))
    return out


def _phases(events: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over rounds: round start -> last commit (the previous round's aggregation, then
    training), last commit -> round end (gossip, witnesses), round end -> next round's start
    (the last vote)."""
    by_round: dict[int, dict[str, float]] = {}
    for e in events:
        kind, r = e["kind"], e.get("round")
        if r is None:
            continue
        slot = by_round.setdefault(r, {})
        if kind == "round_started":
            slot["start"] = e["t"]
            slot["epoch"] = e["epoch"]
        elif kind == "result_committed":
            slot["commit"] = max(slot.get("commit", 0.0), e["t"])
        elif kind == "round_ended":
            slot["end"] = e["t"]
    train, witness, vote = [], [], []
    for r, slot in by_round.items():
        if {"start", "commit", "end"} <= slot.keys():
            train.append(slot["commit"] - slot["start"])
            witness.append(slot["end"] - slot["commit"])
            following = by_round.get(r + 1, {})
            if "start" in following and following.get("epoch") == slot.get("epoch"):
                vote.append(following["start"] - slot["end"])
    med = statistics.median
    return {
        "to_last_commit": med(train) if train else 0.0,
        "commit_to_end": med(witness) if witness else 0.0,
        "end_to_next": med(vote) if vote else 0.0,
    }


def _time_to_accuracy(
    summary: dict[str, Any], events: list[dict[str, Any]], launched: float
) -> dict[str, Any]:
    target = next(
        (
            r["round"]
            for r in summary["rounds"]
            if r["outcome"] == "accepted" and (r["metrics"].get("accuracy") or 0.0) >= ACCURACY
        ),
        None,
    )
    if target is None:
        return {"accuracy_round": None}
    t0 = events[0]["t"]
    reports = [e for e in events if e["kind"] == "aggregate_reported" and e["round"] == target]
    reached = max(reports, key=lambda e: e["t"])
    first_round = min(e["t"] for e in events if e["kind"] == "round_started")
    epoch = max(e["t"] for e in events if e["kind"] == "epoch_started" and e["t"] <= first_round)
    return {
        "accuracy_round": target,
        "to_accuracy": reached["t"] - t0,
        "to_accuracy_from_launch": reached["wall"] - launched,
        "startup_join": epoch - t0,  # processes started, torch imported, all joined
        "startup_warmup": first_round - epoch,  # data, model, torch's first calls, votes
        "rounds_to_accuracy": reached["t"] - first_round,
    }


def measure(job: Job, repeats: int, work: Path) -> dict[str, Any]:
    attempts = [run_once(job, work / f"{job.name}-{i}") for i in range(repeats)]
    good = [a for a in attempts if "error" not in a]
    row: dict[str, Any] = {
        "job": job.name,
        "nodes": job.nodes,
        "rounds": job.rounds,
        "runs": len(good),
        "errors": [a["error"] for a in attempts if "error" in a],
    }
    if not good:
        return row
    base = baseline(good[0]["config"], job.nodes, job.baseline_rounds or job.rounds, job.timeout)
    runs = [analyse(a, base, job) for a in good]
    row.update(
        {
            "params": base["params"],
            "model_bytes": base["model_bytes"],
            "finished": all(r["final_state"] == "Finished" for r in runs),
            "same_aggregates": all(r["same_aggregates"] for r in runs),
            "base_seq": base["seq"],
            "base_max_train": base["max_train"],
            "base_aggregate": base["aggregate"],
            "base_floor": base["floor"],
            "base_imports": base["imports"],
            "base_setup": base["setup"],
            "per_run": runs,
        }
    )
    for key in {k for r in runs for k, v in r.items() if _is_number(v)}:
        values = [r[key] for r in runs if _is_number(r.get(key))]
        row[key] = statistics.median(values) if values else None
    if job.time_to_accuracy and base["to_accuracy"] is not None:
        row["base_accuracy_round"] = base["to_accuracy"]["round"]
        row["base_to_accuracy"] = base["to_accuracy"]["seconds"]
        if row.get("to_accuracy"):
            row["to_accuracy_x"] = row["to_accuracy"] / base["to_accuracy"]["seconds"]
    return row


def _all_or_none(checks: Iterable[bool]) -> bool | None:
    values = list(checks)
    return all(values) if values else None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def run(jobs: tuple[str, ...] = DEFAULT_JOBS, repeats: int = 3) -> dict[str, Any]:
    """Measure every job; return the figures."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="round_bench-") as tmp:
        rows = [measure(JOBS[name], repeats, Path(tmp)) for name in jobs]
    measured = [r for r in rows if r["runs"]]
    default_rows = [r for r in measured if r["job"].startswith("default")]
    large_rows = [r for r in measured if r["job"] == "large8"]
    result = {
        "bench": "round",
        "cores": CORES,
        "load_average": (load_before, os.getloadavg()[0]),
        "repeats": repeats,
        "rows": rows,
        "targets": {
            "overhead_ms_default": OVERHEAD_TARGET_MS,
            "overhead_fraction_1M_8_nodes": OVERHEAD_TARGET_FRACTION,
            "gossip_ratio": GOSSIP_TARGET,
            "to_round1_s": ROUND1_TARGET_S,
            "command_wall_s": JOB_TARGET_S,
        },
        # None: the job that checks a target was not run
        "meets_overhead_ms": _all_or_none(
            r["overhead_ms"] < OVERHEAD_TARGET_MS for r in default_rows
        ),
        "meets_overhead_fraction": _all_or_none(
            r["overhead_fraction"] < OVERHEAD_TARGET_FRACTION for r in large_rows
        ),
        "meets_gossip": _all_or_none(
            r["gossip_ratio"] is not None and r["gossip_ratio"] <= GOSSIP_TARGET for r in measured
        ),
    }
    return result


# ----------------------------------------------------------------------------- output

COLUMNS = (  # (title, key, format)
    ("job", "job", "{:>8}"),
    ("N", "nodes", "{:>2}"),
    ("round1 s", "to_round1", "{:>8.2f}"),
    ("job s", "command_wall", "{:>6.2f}"),
    ("round ms", "round_median", "{:>8.1f}"),
    ("mean ms", "round_mean", "{:>7.1f}"),
    ("period ms", "period_median", "{:>9.1f}"),
    ("rounds/s", "rounds_per_s", "{:>8.2f}"),
    ("train ms", "max_train_median", "{:>8.1f}"),
    ("ovh ms", "overhead_ms", "{:>7.1f}"),
    ("ovh %", "overhead_fraction", "{:>6.1%}"),
    ("seq ms", "base_seq", "{:>8.1f}"),
    ("base train", "base_max_train", "{:>10.1f}"),
    ("floor ms", "base_floor", "{:>8.1f}"),
    ("x floor", "x_floor", "{:>7.2f}"),
    ("KB/rnd", "bytes_per_round", "{:>8.1f}"),
    ("x min", "gossip_ratio", "{:>6.3f}"),
)
SECONDS_AS_MS = {
    "round_median",
    "round_mean",
    "period_median",
    "max_train_median",
    "base_seq",
    "base_max_train",
    "base_floor",
}


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    width = max(len(fmt.format(0)), len(next(t for t, k, _ in COLUMNS if k == key)))
    value = row.get(key)
    if value is None:
        return f"{'-':>{width}}"
    if key in SECONDS_AS_MS:
        value *= 1e3
    if key == "bytes_per_round":
        value /= 1024
    return f"{fmt.format(value):>{width}}"


def table(result: dict[str, Any]) -> str:
    head = " ".join(f"{t:>{len(_cell({}, k, f))}}" for t, k, f in COLUMNS)
    load = result["load_average"]
    lines = [
        f"medians of {result['repeats']} runs per job ({result['cores']} cores, load average "
        f"{load[0]:.1f} -> {load[1]:.1f}); round = summary duration; period = round_started to "
        "round_started; train = the round's slowest train_time",
        head,
        "-" * len(head),
    ]
    for row in result["rows"]:
        lines.append(" ".join(_cell(row, key, fmt) for _, key, fmt in COLUMNS))
    lines.append(
        f"ovh = round - train (target < {OVERHEAD_TARGET_MS:.0f} ms default, "
        f"< {OVERHEAD_TARGET_FRACTION:.0%} large8); seq = pure compute in one process (N "
        "trainers one after the other + FedAvg); floor = each node's work (train, evaluate, "
        f"aggregate, evaluate) spread over min({result['cores']}, N) cores; x min = gossip "
        f"bytes / minimum (target <= {GOSSIP_TARGET})"
    )
    for row in result["rows"]:
        if not row["runs"]:
            lines.append(f"{row['job']}: no run finished: {row['errors']}")
            continue
        lines.append(
            f"{row['job']}: start -> last commit {1e3 * row['to_last_commit']:.1f} ms (previous "
            f"aggregate, training) + last commit -> end {1e3 * row['commit_to_end']:.1f} ms "
            f"(gossip, witnesses) | end -> next start {1e3 * row['end_to_next']:.1f} ms (votes)"
        )
        lines.append(
            f"  {row['params']:,} params ({row['model_bytes'] / 1024:.1f} KB); {row['runs']} runs"
            f" finished {row['finished']}, drops {row['drops']:.0f}, aggregates identical to the "
            f"baseline's {row['same_aggregates']}; wall {row['wall_time']:.1f}s; overall "
            f"{row['rounds_per_s_overall']:.2f} rounds/s (with epoch ends)"
            + (f"; errors {row['errors']}" if row["errors"] else "")
        )
    tta = [r for r in result["rows"] if r.get("accuracy_round")]
    if tta:
        lines.append("time to accuracy >= 0.90 on the held-out digits (medians of each part):")
        for row in tta:
            lines.append(
                f"  {row['job']}: {row['to_accuracy']:.2f}s from console start "
                f"({row['to_accuracy_from_launch']:.2f}s from launch), round "
                f"{row['accuracy_round']:.0f}: join {row['startup_join']:.2f}s, warmup "
                f"{row['startup_warmup']:.2f}s, rounds {row['rounds_to_accuracy']:.2f}s | "
                f"baseline {row.get('base_to_accuracy', float('nan')):.2f}s (round "
                f"{row.get('base_accuracy_round')}; imports {row['base_imports']:.2f}s, setup "
                f"{row['base_setup']:.2f}s) -> x{row.get('to_accuracy_x', float('nan')):.1f}"
            )
    for row in result["rows"]:
        if row["job"].startswith("design") and row["runs"]:
            peers = ", ".join(f"{k} {v[row['nodes']]:.1f}s" for k, v in PEERS.items())
            lines.append(
                f"{row['job']}: {row['period_median']:.2f}s per round here; DESIGN.md: {peers}"
            )
    lines.append(
        f"targets met: overhead ms {result['meets_overhead_ms']}, overhead % "
        f"{result['meets_overhead_fraction']}, gossip {result['meets_gossip']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", default=list(DEFAULT_JOBS), choices=list(JOBS))
    parser.add_argument("--repeats", type=int, default=3, help="runs per job")
    parser.add_argument("--json", type=Path, default=RESULTS, help="merge figures into this file")
    parser.add_argument(
        "--baseline",
        nargs=3,
        metavar=("CONFIG", "NODES", "ROUNDS"),
        help="internal: print the pure-compute baseline of CONFIG as JSON",
    )
    args = parser.parse_args(argv)
    if args.baseline:
        config, nodes, rounds = args.baseline
        figures = pure_compute(Path(config), int(nodes), int(rounds))
        print(json.dumps(figures))
        return figures
    result = run(tuple(args.jobs), args.repeats)
    print(table(result))
    save_result("round", result, args.json)
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
