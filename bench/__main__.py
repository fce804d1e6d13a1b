"""``python -m bench`` (``make bench``): run every benchmark, print its table, write results.json.

Each benchmark module exposes ``run() -> dict`` and prints its own table; every figure in it
is compared with a baseline measured in the same run, because this machine is shared and
noisy. A full run also writes the headline table (``bench/report.py``) to ``bench/RESULTS.md``
and into the README. ``python -m bench NAME ...`` runs only the named ones (and the long ones in ``EXTRA``,
which a full run leaves out).
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

from bench import report

BENCHMARKS = (
    "coordinator_bench",
    "latency_bench",
    "wire_bench",
    "round_bench",
    "scale_bench",
    "tui_bench",
    "wan_bench",
)
# Named only: too long for the full run (learning quality, ~15-25 min): strategies_bench.
EXTRA = ("strategies_bench",)
# Lighter than each benchmark's own defaults where that keeps the whole run under 10 minutes.
# wan_bench's full table (every codec x fanout, ~15 min) is `make bench-wan`; here its headline.
RUN_OPTIONS: dict[str, dict[str, object]] = {
    "tui_bench": {"reps": 7},
    "wan_bench": {"quick": True, "digits": False},
}


def machine() -> str:
    """CPU model, cores, memory, OS and Python: what the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    memory = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / 2**20:.0f} GB"
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def main(argv: list[str]) -> int:
    chosen = argv or list(BENCHMARKS)
    unknown = [n for n in chosen if n not in BENCHMARKS + EXTRA]
    if unknown:
        print(
            f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS + EXTRA)}",
            file=sys.stderr,
        )
        return 2
    results: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
    }
    for name in chosen:
        module = importlib.import_module(f"bench.{name}")
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        result = results[name] = module.run(**RUN_OPTIONS.get(name, {}))
        if hasattr(module, "print_table"):
            module.print_table(result)
        else:
            print(module.table(result))
        print(f"({name}: {time.perf_counter() - started:.1f}s)", flush=True)
    report.RESULTS.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults written to {report.RESULTS}")
    headline = report.markdown(results)
    print(f"\n{headline}")
    if chosen == list(BENCHMARKS):  # a partial run does not replace the published table
        report.MARKDOWN.write_text(headline)
        where = "and the README" if report.update_readme(headline) else "(README has no markers)"
        print(f"headline table written to {report.MARKDOWN} {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
