"""Training on a GPU against the CPU: the per-round time of the default job and a larger CNN job.

``python -m bench.gpu_bench [--jobs default cnn] [--rounds 5] [--runs] [--json PATH]``

For each job and each device this machine has (always ``cpu``; ``cuda`` when torch sees a GPU):

- **local s/round**: one node's round of local training (``node.training.train_local`` on node
  0's shard of the job's data, the job's model, optimiser and batch size), the median of
  ``--rounds`` rounds after one warm-up round, in this process. It includes moving the shard to
  the device and the model back to the CPU (what a node pays each round).
- **run s/round** (with ``--runs``): the job as a real run, ``fl-console --headless`` with its
  spawned fl-node processes and ``[learning] device`` set to the device; the median of the
  summary's round durations. On one GPU, every node of the run shares it.
- **x cpu**: the CPU's time over the device's (above 1: the device is faster).

Jobs:

- **default**: the repository's ``data.toml`` (digits 8x8, MLP 64-32, Adam, batch 32, 4 nodes).
- **cnn**: 20,000 synthetic 28x28 images in 10 classes (:func:`images`, seeded), the built-in
  ``cnn`` with channels 32-64-128, batch 64, 4 nodes, iid shards.

Without a GPU it says so and prints the CPU figures. Nothing here changes what the product does.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

CNN_IMAGES = 20_000
CNN_SIDE = 28


@dataclass(frozen=True)
class Job:
    name: str
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)  # data.toml overrides


JOBS = {
    "default": Job("default"),
    "cnn": Job(
        "cnn",
        {
            "data": {"source": "bench.gpu_bench:images", "partition": "iid"},
            "model": {"name": "cnn", "channels": [32, 64, 128]},
            "learning": {"batch_size": 64},
        },
    ),
}


def images(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The CNN job's data: seeded 28x28 images, each class a smooth pattern plus noise."""
    gen = torch.Generator().manual_seed(seed)
    classes = 10
    side = CNN_SIDE
    coords = torch.linspace(-1.0, 1.0, side)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    patterns = torch.stack(
        [
            torch.sin((k + 1) * 1.5 * xx + k * 0.7) * torch.cos((k % 3 + 1) * 1.5 * yy)
            for k in range(classes)
        ]
    )
    y = torch.arange(CNN_IMAGES, dtype=torch.int64).remainder_(classes)
    x = patterns[y] + 0.8 * torch.randn(CNN_IMAGES, side, side, generator=gen)
    return x, y


def devices() -> list[str]:
    """``cpu``, and ``cuda`` when torch sees a GPU."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def gpu_line() -> str:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"
    return (
        f"no GPU available (torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}): "
        "CPU figures only"
    )


def _config(job: Job, directory: Path, device: str, rounds: int) -> Path:
    from tests.factories import write_config

    sections = {k: dict(v) for k, v in job.sections.items()}
    sections.setdefault("learning", {})["device"] = device
    sections["coordinator"] = {
        "total_rounds": rounds,
        "rounds_per_epoch": rounds,
        "max_round_train_time": 300.0,
        "warmup_time": 300.0,
        "health_timeout": 10.0,
    }
    return write_config(directory, **sections)


def local_round_times(job: Job, device: str, rounds: int) -> list[float]:
    """Seconds per round of node 0's local training on ``device`` (after one warm-up round)."""
    from console.config import load_config
    from node.data import Shard, load_node_data
    from node.device import resolve_device
    from node.models import build_model
    from node.training import train_local

    with _scratch() as tmp:
        spec = load_config(_config(job, tmp, device, rounds)).run_spec()
    data = load_node_data(spec.data, seed=spec.seed, base_dir=None, node_index=0, num_nodes=4)
    shard = Shard(data.x_train, data.y_train)
    model = build_model(
        spec.model,
        features=data.features,
        classes=data.classes,
        image_shape=data.image_shape,
        seed=spec.seed,
    )
    where = resolve_device(device)
    times = []
    for r in range(rounds + 1):
        started = time.perf_counter()
        train_local(model, shard, spec.learning, seed=spec.seed, round=r, device=where)
        if r > 0:  # round 0 pays the device's first-call costs (as a node's warmup does)
            times.append(time.perf_counter() - started)
    return times


def run_round_times(job: Job, device: str, rounds: int) -> tuple[list[float], str | None]:
    """Round durations of a real headless run on ``device``; (times, why it failed)."""
    from tests.e2e.runs import HeadlessConsole

    with _scratch() as tmp:
        console = HeadlessConsole(_config(job, tmp, device, rounds), tmp / "run")
        try:
            limit = 120 + 120 * rounds
            code = console.wait(limit)
            if code != 0:
                return [], f"exit {code}: {console.output()[-400:]}"
            summary = console.read_summary()
        except Exception as exc:  # a run that does not end: record it, go on with the rest
            return [], f"{type(exc).__name__}: {exc}"
        finally:
            console.reap()
    times = [r["duration"] for r in summary["rounds"] if r.get("duration") is not None]
    return times, None


class _scratch:
    """A temporary directory as a context manager (tests.factories writes the config in it)."""

    def __enter__(self) -> Path:
        import tempfile

        self._dir = tempfile.TemporaryDirectory(prefix="gpu-bench-")
        return Path(self._dir.name)

    def __exit__(self, *exc: object) -> None:
        self._dir.cleanup()


def run(
    jobs: tuple[str, ...] = ("default", "cnn"), rounds: int = 5, runs: bool = False
) -> dict[str, Any]:
    torch.set_num_threads(1)  # as a node does (data.toml torch_threads = 1)
    result: dict[str, Any] = {"gpu": gpu_line(), "devices": devices(), "jobs": {}}
    for name in jobs:
        job = JOBS[name]
        rows: dict[str, Any] = {}
        for device in devices():
            local = local_round_times(job, device, rounds)
            row: dict[str, Any] = {"local_s": statistics.median(local)}
            if runs:
                times, failed = run_round_times(job, device, rounds)
                row["run_s"] = statistics.median(times) if times else None
                row["run_failed"] = failed
            rows[device] = row
        cpu = rows["cpu"]
        for row in rows.values():
            for key in ("local_s", "run_s"):
                base, mine = cpu.get(key), row.get(key)
                if base and mine:
                    row[f"{key}_x_cpu"] = base / mine
        result["jobs"][name] = rows
    return result


def _fmt(value: float | None, unit: str = "s") -> str:
    if value is None or not math.isfinite(value):
        return "·"
    return f"{value:.3f}{unit}" if unit == "s" else f"{value:.1f}{unit}"


def table(result: dict[str, Any]) -> str:
    lines = [result["gpu"], ""]
    header = f"{'job':<8} {'device':<6} {'local s/round':>13} {'x cpu':>6} {'run s/round':>12} {'x cpu':>6}"
    lines += [header, "-" * len(header)]
    for name, rows in result["jobs"].items():
        for device, row in rows.items():
            lines.append(
                f"{name:<8} {device:<6} {_fmt(row['local_s']):>13} "
                f"{_fmt(row.get('local_s_x_cpu'), '×'):>6} {_fmt(row.get('run_s')):>12} "
                f"{_fmt(row.get('run_s_x_cpu'), '×'):>6}"
            )
            if row.get("run_failed"):
                lines.append(f"  run on {device} failed: {row['run_failed']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu_bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--jobs", nargs="+", choices=sorted(JOBS), default=["default", "cnn"])
    p.add_argument("--rounds", type=int, default=5, help="rounds measured per job and device")
    p.add_argument("--runs", action="store_true", help="also time real runs (fl-console + nodes)")
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    result = run(tuple(args.jobs), args.rounds, args.runs)
    print(table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
