"""``python -m bench`` (``make bench``): run every benchmark, print its table, write results.json.

Each benchmark module exposes ``run() -> dict`` and prints its own table; every figure in it
is compared with a baseline measured in the same run, because this machine is shared and
noisy. ``python -m bench NAME ...`` runs only the named ones.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from pathlib import Path

BENCHMARKS = (
    "coordinator_bench",
    "latency_bench",
    "wire_bench",
    "round_bench",
    "scale_bench",
    "tui_bench",
)


def main(argv: list[str]) -> int:
    chosen = argv or list(BENCHMARKS)
    unknown = [n for n in chosen if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}", file=sys.stderr)
        return 2
    results: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{__import__('os').cpu_count()} cores, Python {platform.python_version()}",
    }
    for name in chosen:
        module = importlib.import_module(f"bench.{name}")
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        results[name] = module.run()
        print(f"({name}: {time.perf_counter() - started:.1f}s)", flush=True)
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
