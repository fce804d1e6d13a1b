"""The headline table of a ``python -m bench`` run, in Markdown, for the README.

``python -m bench.report [results.json]`` prints it; a full ``python -m bench`` run also writes
it to ``bench/RESULTS.md`` and into the README between the ``bench:begin``/``bench:end``
markers. One row per figure the benchmarks exist for: what we measured, the baseline measured
in the same run, their ratio, the target and whether it is met. The full tables are in each
benchmark's printout and in ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results.json")
MARKDOWN = Path(__file__).with_name("RESULTS.md")
README = Path(__file__).parent.parent / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

Row = tuple[str, str, str, str, str, str]  # figure, ours, baseline, ratio, target, met


def _met(ok: bool | None) -> str:
    return "–" if ok is None else ("yes" if ok else "**no**")


def _round_rows(r: dict[str, Any]) -> Iterator[Row]:
    targets = r["targets"]
    for row in r["rows"]:
        if not row.get("runs"):
            yield (f"round, {row['job']}", "failed", "", "", "", "**no**")
            continue
        job = f"{row['job']} ({row['nodes']} nodes, {row['params']:,} params)"
        if row["job"] == "large8":
            target = targets["overhead_fraction_1M_8_nodes"]
            ok = row["overhead_fraction"] < target
            goal = f"< {target:.0%} of a round"
        else:
            target = targets["overhead_ms_default"]
            ok = row["overhead_ms"] < target
            goal = f"< {target:.0f} ms"
        yield (
            f"round overhead, {job}",
            f"{1e3 * row['round_median']:.1f} ms/round ({row['rounds_per_s']:.2f} rounds/s), "
            f"overhead {row['overhead_ms']:.1f} ms",
            f"slowest trainer's compute {1e3 * row['max_train_median']:.1f} ms",
            f"{row['overhead_fraction']:.0%} overhead",
            goal,
            _met(ok),
        )
    for row in r["rows"]:
        if row.get("runs") and row.get("gossip_ratio") is not None:
            yield (
                f"gossip volume, {row['job']}",
                f"{row['bytes_per_round'] / 1024:,.1f} KB/round/node",
                f"minimum {row['gossip_minimum'] / 1024:,.1f} KB",
                f"{row['gossip_ratio']:.3f}x",
                f"<= {targets['gossip_ratio']}x",
                _met(row["gossip_ratio"] <= targets["gossip_ratio"]),
            )
    for row in r["rows"]:
        if row.get("runs") and row["job"] == "default4" and "to_round1_s" in targets:
            for what, key, target_key in (
                ("command to round 1", "to_round1", "to_round1_s"),
                ("command to exit, 20 rounds", "command_wall", "command_wall_s"),
            ):
                if row.get(key) is None:
                    continue
                yield (
                    f"{what}, default4",
                    f"{row[key]:.2f} s",
                    f"torch + its optimiser's imports {row['base_imports']:.2f} s",
                    f"{row[key] / row['base_imports']:.1f}x",
                    f"<= {targets[target_key]} s",
                    _met(row[key] <= targets[target_key]),
                )
    for row in r["rows"]:
        if row.get("to_accuracy") and row.get("base_to_accuracy"):
            yield (
                f"time to 0.90 accuracy, {row['job']}",
                f"{row['to_accuracy']:.2f} s (round {row['accuracy_round']:.0f})",
                f"one process, no network {row['base_to_accuracy']:.2f} s",
                f"{row['to_accuracy_x']:.1f}x",
                "",
                "–",
            )


def _wire_rows(w: dict[str, Any]) -> Iterator[Row]:
    for row in w["rows"]:
        yield (
            f"model push, {row['size_mb']} MB",
            f"{row['ours_gbps']:.2f} GB/s",
            f"bare pyzmq PAIR {row['bare_gbps']:.2f} GB/s",
            f"{row['ratio']:.2f}",
            f">= {w['target_ratio']}",
            _met(row["ratio"] >= w["target_ratio"]),
        )


def _scale_rows(s: dict[str, Any]) -> Iterator[Row]:
    for row in s["simulated"]:
        n = row["clients"]
        yield (
            f"{n:,} simulated clients: join",
            f"all in {row['join_all_s']:.2f} s",
            f"bare DEALER/ROUTER {row['bare_join_all_s']:.2f} s",
            f"{row['join_x_bare']:.1f}x",
            "",
            "–",
        )
        yield (
            f"{n:,} simulated clients: broadcast fan-out",
            f"{row['fanout_all_ms']:.1f} ms to the slowest",
            f"bare PUB/SUB {row['bare_fanout_all_ms']:.1f} ms",
            f"{row['fanout_x_bare']:.2f}x",
            "",
            "–",
        )
        yield (
            f"{n:,} simulated clients: tick, broadcast",
            f"tick {row['tick_us']:.1f} µs, broadcast {row['broadcast_ms']:.1f} ms",
            f"bare send {row['bare_broadcast_ms']:.2f} ms",
            f"{row['broadcast_x_bare']:.1f}x",
            "",
            "–",
        )
    nodes = [row for row in s["nodes"] if row.get("finished")]
    if nodes:
        most = max(nodes, key=lambda row: row["nodes"])
        yield (
            "fl-node processes in one run (default model)",
            f"{most['nodes']} finished, {most['rss_node_median_mb']:.0f} MB each",
            f"bare python+torch {s['bare_torch_rss_mb']:.0f} MB",
            f"{most['rss_x_bare_torch']:.2f}x memory",
            "",
            "–",
        )


def _latency_rows(lat: dict[str, Any]) -> Iterator[Row]:
    for row in lat["rows"]:
        yield (
            f"state change to every node, {row['members']} members",
            f"median {row['median_ms']:.2f} ms",
            f"bare PUB/SUB {row['bare_median_ms']:.2f} ms",
            f"{row['ratio']:.1f}x",
            f"< {lat['target_median_ms']} ms",
            _met(row["median_ms"] < lat["target_median_ms"]),
        )


def _coordinator_rows(c: dict[str, Any]) -> Iterator[Row]:
    last = c["rows"][-1]
    yield (
        f"coordinator, slowest call at {last['clients']:,} clients",
        f"{c['max_ms_at_largest']:.3f} ms",
        f"{c['baseline']} {c['baseline_us']:.2f} µs",
        f"{c['max_ms_at_largest'] * 1000 / c['baseline_us']:.0f}x",
        f"< {c['target_ms']} ms",
        _met(c["meets_target"]),
    )


def _tui_rows(t: dict[str, Any]) -> Iterator[Row]:
    for name in ("heartbeats", "10% cells"):
        row = t["scenarios"].get(name)
        if row is None:
            continue
        base = t["baseline_8_clients"][name]
        yield (
            f"console refresh, {t['clients']:,} clients, {name}",
            f"{row['frame_cpu_ms']:.1f} ms CPU per frame",
            f"8 clients {base['frame_cpu_ms']:.1f} ms",
            f"{row['ratio_cpu_vs_8_clients']:.2f}x",
            f"< {t['target_ms']:.0f} ms",
            _met(row["under_target"]),
        )


def _wan_rows(r: dict[str, Any]) -> Iterator[Row]:
    if "skipped" in r:
        yield ("rounds over 20 Mbit/s links", "skipped", r["skipped"], "", "", "–")
        return
    rows = {(x.get("compression"), x.get("fanout"), x.get("train_set")): x for x in r["rows"]}
    base = rows.get(("none", 0, 4))
    for row in r["rows"]:
        if "error" in row:
            yield (f"WAN round, {row['variant']}", "failed", "", "", "", "**no**")
            continue
        yield (
            f"WAN round ({r['nodes']} nodes, {r['rate_mbit']:g} Mbit/s), {row['variant']}",
            f"{row['seconds_per_round']:.2f} s/round, busiest uplink "
            f"{row['busiest_uplink'] / 1e6:.2f} MB",
            f"bound {row['bound']:.2f} s",
            f"{row['x_bound']:.2f}x bound",
            "<= 1.25x bound",
            _met(row["x_bound"] <= 1.25),
        )
    fast = rows.get(("int8", 2, 4))
    if base and fast and "seconds_per_round" in base and "seconds_per_round" in fast:
        speedup = base["seconds_per_round"] / fast["seconds_per_round"]
        yield (
            "WAN speed-up, int8 + fanout 2",
            f"{fast['seconds_per_round']:.2f} s/round",
            f"none + fanout 0: {base['seconds_per_round']:.2f} s/round",
            f"{speedup:.2f}x faster",
            ">= 3x",
            _met(speedup >= 3.0),
        )


def _flood_rows(r: dict[str, Any]) -> Iterator[Row]:
    if "period_ratio" in r:
        yield (
            "round period under a 10,000 msg/s garbage flood (default job, 4 nodes)",
            f"{r['period_flooded']:.3f} s",
            f"quiet {r['period_quiet']:.3f} s",
            f"{r['period_ratio']:.2f}x",
            "<= 1.2x",
            _met(r["period_target_met"]),
        )
    off, on = r.get("cost_off"), r.get("cost_on")
    if off and on:
        yield (
            "console CPU per garbage message (flood control on)",
            f"{on['us_per_message']:.1f} µs",
            f"limit off {off['us_per_message']:.1f} µs",
            f"{on['us_per_message'] / off['us_per_message']:.2f}x",
            "",
            "–",
        )


SECTIONS: dict[str, Callable[[dict[str, Any]], Iterator[Row]]] = {
    "round_bench": _round_rows,
    "wire_bench": _wire_rows,
    "latency_bench": _latency_rows,
    "scale_bench": _scale_rows,
    "coordinator_bench": _coordinator_rows,
    "tui_bench": _tui_rows,
    "wan_bench": _wan_rows,
    "flood_bench": _flood_rows,
}


def markdown(results: dict[str, Any]) -> str:
    """The headline table, with the date and the machine it was measured on."""
    lines = [
        f"Measured {results['date']} on {results['machine']} with `make bench` "
        "(every baseline in the same run; full tables in `bench/results.json`).",
        "",
        "| figure | ours | baseline (same run) | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in SECTIONS.items():
        if name in results:
            lines.extend("| " + " | ".join(row) + " |" for row in rows(results[name]))
    return "\n".join(lines) + "\n"


def update_readme(table: str, readme: Path = README) -> bool:
    """Replace what lies between the markers; False when the README has no markers."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")
    return True


def save_result(key: str, result: dict[str, Any], path: Path) -> None:
    """Merge ``result`` under ``key`` into the JSON file at ``path``, so other benchmarks'
    figures in it survive; written to a temporary file first, then moved into place."""
    try:
        existing = json.loads(path.read_text())
        if not isinstance(existing, dict):
            existing = {}
    except (OSError, ValueError):
        existing = {}
    existing[key] = result
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(existing, indent=2, default=str) + "\n")
    tmp.replace(path)


def column_table(
    columns: Sequence[tuple[str, str, str]], rows: Iterable[dict[str, Any]]
) -> list[str]:
    """A benchmark's printed table: a header, a rule, a line per row. ``columns``: (title,
    key, format) each; a title is right-aligned to the width its format gives a 0."""
    head = " ".join(f"{title:>{len(fmt.format(0))}}" for title, _, fmt in columns)
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(" ".join(fmt.format(row[key]) for _, key, fmt in columns))
    return lines


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line: described by the first line of ``doc``, with ``--json PATH``
    (the file its figures are merged into; ``bench/results.json`` by default)."""
    parser = argparse.ArgumentParser(description=(doc or "").partition("\n")[0])
    parser.add_argument("--json", type=Path, default=RESULTS, help="merge figures into this file")
    return parser


def publish(key: str, result: dict[str, Any], table: str, path: Path) -> None:
    """What a benchmark's ``main`` ends with: print its table, merge its figures into ``path``."""
    print(table)
    save_result(key, result, path)
    print(f"wrote {path}")


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else RESULTS
    print(markdown(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
