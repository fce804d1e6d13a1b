"""The books of a chaos run (:mod:`bench.chaos`): what must hold after it, and its table.

Checks, each ``{"ok": bool, "detail": str}``:

- **finished**: the last console exited 0 with the run Finished and every round accepted.
- **history**: the latest checkpoint (weights verified against their hash) and the round
  history files it names hold every round the summary calls accepted exactly once, and no
  round number twice.
- **aggregates**: in every accepted round every node that reported an aggregate reported the
  same hash (the summary's rounds and the history files both), and the checkpoint's hash is
  its round's aggregate.
- **rss**: the console's resident memory grew less than 20 % from round 50 (``rounds // 6``
  in a short run) to the end, measured within the last console process's life (the pid
  changes with every restart): from the first samples at or after that round, and at least
  ``max(5, rounds // 30)`` rounds into the process's life so that start-up is not counted as
  growth, to its last samples before Finished. Samples taken within 1 s of a flood message's
  refusal are left out (the burst is being processed: its transient is not the run's size),
  and each end is the median of five samples (one every 0.25 s).
  The jump across the first flood each console took is reported per console: it was about
  60-100 MB, kept for good, before ``console.server.server.return_big_buffers``.
- **fds**: the console's open file descriptors, over the same stretch, never more than 16
  above the base sample (nodes come and go; a leak grows without bound).
- **disk**: the run directory grows linearly with rounds. Floods write one event-log line (and
  one terminal line) per refused message, a step per burst that has nothing to do with rounds,
  so linearity is judged on what rounds write: the checkpoint directory and the node logs
  (sampled), and the console event logs less the lines refusing flood messages (bucketed by
  round from the logs themselves). For each, the bytes per round of the second half of the run
  are at most twice those of the first half. The whole directory's bytes per round and the
  flood lines' bytes are reported beside.
- **processes**: no console or node process of the run is left.
"""

from __future__ import annotations

import bisect
import json
import statistics
from collections import Counter
from typing import Any

from console.server.checkpoint import CheckpointError, load_latest, read_round_history
from tests.e2e.child import node_pids_alive
from tests.e2e.fault_runs import ControlledRun

RSS_GROWTH_LIMIT = 0.20
FD_SLACK = 16


def _check(ok: bool, detail: str) -> dict[str, Any]:
    return {"ok": bool(ok), "detail": detail}


def _slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x; None with fewer than two distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def history_rounds(run: ControlledRun) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every round the latest checkpoint knows (history files first, then its own), and facts
    about the checkpoint: its round and hash, the history files it names and those it does not."""
    stored = load_latest(run.checkpoint_dir)
    if stored is None:
        return [], {"round": None}
    names = list(stored.state.get("history", []))
    rounds = [*read_round_history(run.checkpoint_dir, names), *stored.state.get("rounds", [])]
    on_disk = sorted(p.name for p in run.checkpoint_dir.glob("rounds-*.json"))
    facts = {
        "round": stored.round,
        "hash": stored.hash,
        "history_files": len(names),
        "unnamed_history_files": sorted(set(on_disk) - set(names)),
    }
    return rounds, facts


def lost_to_console_kills(run: ControlledRun) -> list[dict[str, Any]]:
    """Rounds a killed console accepted after its last saved checkpoint: the next console
    resumed from that checkpoint and ran the round again under the same number, or (when the
    checkpoint's state held the round open) recorded it ``abandoned``."""
    lost = []
    checkpointed = 0
    for inc in run.incarnations[:-1]:
        saved = [e["round"] for e in inc.log.of("checkpoint_saved")]
        checkpointed = max([checkpointed, *saved])
        for e in inc.log.of("round_ended", outcome="accepted"):
            if e["round"] > checkpointed:
                lost.append({"round": e["round"], "console": inc.number})
    return lost


def _history_check(
    summary: dict[str, Any], rounds: list[dict[str, Any]], facts: dict[str, Any]
) -> dict[str, Any]:
    accepted = [r["round"] for r in summary.get("rounds", []) if r["outcome"] == "accepted"]
    numbers = Counter(r.get("round") for r in rounds)
    twice = sorted(n for n, c in numbers.items() if c > 1)
    kept = {r.get("round") for r in rounds if r.get("outcome") == "accepted"}
    missing = sorted(set(accepted) - kept)
    extra = sorted(kept - set(accepted))
    ok = facts.get("round") is not None and not twice and not missing and not extra
    return _check(
        ok,
        f"{len(accepted)} accepted rounds in the summary; the checkpoint of round "
        f"{facts.get('round')} and its {facts.get('history_files', 0)} history files hold "
        f"{len(rounds)} rounds ({len(kept)} accepted); missing {missing[:10]}, not in the "
        f"summary {extra[:10]}, twice {twice[:10]}; unnamed history files "
        f"{facts.get('unnamed_history_files', [])}",
    )


def _aggregates_check(
    summary: dict[str, Any], rounds: list[dict[str, Any]], facts: dict[str, Any]
) -> tuple[dict[str, Any], int]:
    disagree = []
    silent = 0
    by_round: dict[int, set[str]] = {}
    for source in (summary.get("rounds", []), rounds):
        for r in source:
            if r.get("outcome") != "accepted":
                continue
            hashes = set((r.get("aggregates") or {}).values())
            by_round.setdefault(r["round"], set()).update(hashes)
    for number, hashes in sorted(by_round.items()):
        if len(hashes) > 1:
            disagree.append(number)
        elif not hashes:
            silent += 1
    checkpoint_ok = True
    if facts.get("round") is not None:
        held = by_round.get(facts["round"], set())
        checkpoint_ok = not held or facts["hash"] in held
    reporters = [
        len(r.get("aggregates") or {})
        for r in summary.get("rounds", [])
        if r["outcome"] == "accepted"
    ]
    mean = sum(reporters) / len(reporters) if reporters else 0.0
    return (
        _check(
            not disagree and checkpoint_ok,
            f"{len(by_round)} accepted rounds, {len(disagree)} with differing aggregate hashes "
            f"{disagree[:10]}, {silent} with none reported, {mean:.1f} nodes reported per round; "
            f"checkpoint hash is its round's aggregate: {checkpoint_ok}",
        ),
        silent,
    )


def flood_times(run: ControlledRun) -> list[float]:
    """When the consoles refused a flood message (their clock is ours), sorted."""
    times = []
    for inc in run.incarnations:
        inc.log.poll()
        for e in inc.log.events:
            if e.get("kind") == "reject" and "chaos-flood-" in e.get("text", ""):
                times.append(float(e["t"]))
    return sorted(times)


def _near(times: list[float], t: float, within: float) -> bool:
    i = bisect.bisect_left(times, t - within)
    return i < len(times) and times[i] <= t + within


def _first_flood(faults: list[dict[str, Any]], console: int) -> float | None:
    times = [f["t"] for f in faults if f["kind"] == "flood" and f.get("console") == console]
    return min(times) if times else None


def _memory_checks(
    samples: list[dict[str, Any]], rounds: int, run: ControlledRun, faults: list[dict[str, Any]]
) -> dict:
    last = run.incarnations[-1].number if run.incarnations else 0
    life = [s for s in samples if s["incarnation"] == last]
    figures: dict[str, Any] = {"per_console": []}
    for inc in run.incarnations:
        own = [s for s in samples if s["incarnation"] == inc.number]
        flooded = _first_flood(faults, inc.number)
        before = [s for s in own if flooded is not None and s["t"] < flooded]
        after = [s for s in own if flooded is not None and s["t"] > flooded + 0.5]
        if own:
            figures["per_console"].append(
                {
                    "console": inc.number,
                    "rounds": f"{own[0]['round']}-{own[-1]['round']}",
                    "rss_mb_first": own[0]["rss_kb"] / 1024,
                    "rss_mb_last": own[-1]["rss_kb"] / 1024,
                    "rss_mb_max": max(s["rss_kb"] for s in own) / 1024,
                    "fds_min": min(s["fds"] for s in own),
                    "fds_max": max(s["fds"] for s in own),
                    "first_flood_jump_mb": (after[0]["rss_kb"] - before[-1]["rss_kb"]) / 1024
                    if before and after
                    else None,
                }
            )
    if not life:
        figures["rss"] = _check(False, "no sample of the last console")
        figures["fds"] = _check(False, "no sample of the last console")
        return figures
    base_round = max(min(50, rounds // 6), life[0]["round"] + max(5, rounds // 30))
    busy = flood_times(run)
    after = [s for s in life if s["round"] >= base_round and not _near(busy, s["t"], 1.0)]
    if len(after) < 2:
        figures["rss"] = _check(False, f"the last console never reached round {base_round}")
        figures["fds"] = figures["rss"]
        return figures
    base, end = after[0], after[-1]
    base_kb = statistics.median(s["rss_kb"] for s in after[:5])
    end_kb = statistics.median(s["rss_kb"] for s in after[-5:])
    growth = end_kb / base_kb - 1
    figures["rss_growth"] = growth
    figures["rss"] = _check(
        growth < RSS_GROWTH_LIMIT,
        f"console {last} (pid {base['pid']}): {base_kb / 1024:.1f} MB at round "
        f"{base['round']} -> {end_kb / 1024:.1f} MB at round {end['round']} "
        f"({growth:+.1%}; max {max(s['rss_kb'] for s in after) / 1024:.1f} MB; "
        f"limit {RSS_GROWTH_LIMIT:+.0%})",
    )
    top = max(s["fds"] for s in after)
    figures["fds"] = _check(
        top - base["fds"] <= FD_SLACK,
        f"console {last}: {base['fds']} open at round {base['round']}, {end['fds']} at round "
        f"{end['round']}, at most {top} (slack {FD_SLACK})",
    )
    return figures


def event_log_bytes(run: ControlledRun) -> tuple[dict[int, int], int, int]:
    """Bytes the consoles' event logs wrote per round (the round last started when the line was
    written), less the lines refusing flood messages; and those lines' bytes and count."""
    per_round: dict[int, int] = {}
    flood_bytes = flood_lines = 0
    current = 0
    for inc in run.incarnations:
        path = inc.run_dir / "events.jsonl"
        if not path.exists():
            continue
        with open(path, "rb") as fh:
            for line in fh:
                if b'"kind": "reject"' in line and b"chaos-flood-" in line:
                    flood_bytes += len(line)
                    flood_lines += 1
                    continue
                if b'"kind": "round_started"' in line:
                    try:
                        current = int(json.loads(line)["round"])
                    except (ValueError, KeyError):
                        pass
                per_round[current] = per_round.get(current, 0) + len(line)
    return per_round, flood_bytes, flood_lines


def _halves(points: list[tuple[float, float]], rounds: int) -> tuple[float | None, float | None]:
    half = rounds / 2
    return (
        _slope([p for p in points if p[0] <= half]),
        _slope([p for p in points if p[0] > half]),
    )


def _disk_check(samples: list[dict[str, Any]], rounds: int, run: ControlledRun) -> dict:
    disk = [s for s in samples if "disk_bytes" in s and s["round"]]
    if len(disk) < 4:
        return {"disk": _check(False, "too few disk samples")}
    whole = [(s["round"], s["disk_bytes"]) for s in disk]
    written = [(s["round"], s["checkpoint_bytes"] + s["node_log_bytes"]) for s in disk]
    per_round, flood_bytes, flood_lines = event_log_bytes(run)
    cumulative, total = [], 0
    for number in sorted(per_round):
        total += per_round[number]
        if number:
            cumulative.append((number, total))
    ratios = {}
    for name, points in (("checkpoints+node logs", written), ("event logs", cumulative)):
        first, second = _halves(points, rounds)
        ratios[name] = (first, second, second / first if first and second else None)
    ok = all(r is not None and r <= 2.0 for _, _, r in ratios.values())
    overall = _slope(whole) or 0.0
    ckpt = _slope([(s["round"], s["checkpoint_bytes"]) for s in disk]) or 0.0
    parts = "; ".join(
        f"{name} {a or 0:,.0f} -> {b or 0:,.0f} B/round (x{r if r is None else round(r, 2)})"
        for name, (a, b, r) in ratios.items()
    )
    return {
        "bytes_per_round": overall,
        "checkpoint_bytes_per_round": ckpt,
        "event_log_bytes_per_round": total / max(1, max(per_round, default=1)),
        "flood_log_bytes": flood_bytes,
        "flood_log_lines": flood_lines,
        "final_bytes": whole[-1][1],
        "disk": _check(
            ok,
            f"{overall:,.0f} bytes/round for the whole directory ({ckpt:,.0f} checkpoints), "
            f"{whole[-1][1] / 1e6:.1f} MB at round {whole[-1][0]}; first half -> second half: "
            f"{parts} (limit x2); flood refusals wrote {flood_lines:,} event-log lines, "
            f"{flood_bytes / 1e6:.1f} MB",
        ),
    }


def check_run(
    run: ControlledRun,
    *,
    rounds: int,
    samples: list[dict[str, Any]],
    faults: list[dict[str, Any]],
    floods: list[dict[str, int]],
    failure: str | None,
    node_exits: dict[str, int | None],
    leftover: list[str],
) -> dict[str, Any]:
    """Every check and figure of a finished (or failed) chaos run."""
    summary: dict[str, Any] = {}
    last = run.incarnations[-1] if run.incarnations else None
    if last is not None and last.summary_path.exists():
        summary = last.summary()
    checks: dict[str, dict[str, Any]] = {}
    outcomes = Counter(r["outcome"] for r in summary.get("rounds", []))
    checks["finished"] = _check(
        failure is None
        and summary.get("final_state") == "Finished"
        and summary.get("accepted_rounds") == rounds,
        f"{failure or 'console exited 0'}; state {summary.get('final_state')}, "
        f"{summary.get('accepted_rounds')}/{rounds} accepted; outcomes {dict(outcomes)}",
    )
    try:
        hist, facts = history_rounds(run)
    except CheckpointError as exc:
        hist, facts = [], {"round": None, "error": str(exc)}
    checks["history"] = _history_check(summary, hist, facts)
    checks["aggregates"], silent = _aggregates_check(summary, hist, facts)
    memory = _memory_checks(samples, rounds, run, faults)
    checks["rss"], checks["fds"] = memory.pop("rss"), memory.pop("fds")
    disk = _disk_check(samples, rounds, run)
    checks["disk"] = disk.pop("disk")
    pids = [c.pid for c in run.incarnations] + [n.pid for n in [*run.nodes.values(), *run._retired]]
    alive = node_pids_alive(pids)
    checks["processes"] = _check(
        not alive and not leftover,
        f"{len(pids)} processes started ({len(run.incarnations)} consoles), alive after the "
        f"run: {alive} {' '.join(leftover)}",
    )
    lost_kills = lost_to_console_kills(run)
    return {
        "ok": all(c["ok"] for c in checks.values()),
        "rounds": rounds,
        "rounds_started": len(summary.get("rounds", [])),
        "outcomes": dict(outcomes),
        "lost_to_console_kills": lost_kills,
        "rounds_without_aggregates": silent,
        "checkpoint_round": facts.get("round"),
        "checks": checks,
        "memory": memory,
        "disk": disk,
        "floods": {
            "bursts": len(floods),
            "sent": sum(f["sent"] for f in floods),
            "answered": sum(f["answered"] for f in floods),
        },
        "rejected_messages": summary.get("rejected_messages"),
        "node_exits": dict(Counter(str(c) for c in node_exits.values())),
        "consoles": len(run.incarnations),
        "faults": faults,
    }


def table(result: dict[str, Any]) -> str:
    """The run's figures and checks as text."""
    lines = [
        f"chaos run: {result['rounds']} rounds, seed {result.get('seed')}, "
        f"wall {result.get('wall_s', 0):.0f} s, {result['consoles']} console processes",
        f"rounds: {result['rounds_started']} started in the final history, outcomes "
        f"{result['outcomes']}; accepted by a killed console before its checkpoint "
        f"was saved (lost: run again or abandoned by the resumed console): {[x['round'] for x in result['lost_to_console_kills']]}",
        "faults: "
        + ", ".join(f"{k} {v}" for k, v in sorted(result.get("faults_by_kind", {}).items())),
        f"floods: {result['floods']['bursts']} bursts, {result['floods']['sent']} messages "
        f"sent, {result['floods']['answered']} answered within 2 s; console counted "
        f"{result['rejected_messages']} rejected messages (last console)",
        f"node exit codes at the end: {result['node_exits']}",
    ]
    for n in result.get("lingering_nodes", []):
        lines.append(
            f"  {n['node']} still running 10 s after the end, started "
            f"{n['started_s_before_end']:.1f} s before it; its log ends: {' | '.join(n['log'])}"
        )
    for c in result["memory"].get("per_console", []):
        lines.append(
            f"console {c['console']}: rounds {c['rounds']}, RSS {c['rss_mb_first']:.1f} -> "
            f"{c['rss_mb_last']:.1f} MB (max {c['rss_mb_max']:.1f}; first flood "
            + ("-" if c["first_flood_jump_mb"] is None else f"{c['first_flood_jump_mb']:+.1f} MB")
            + f"), fds {c['fds_min']}-{c['fds_max']}"
        )
    lines.append(f"{'check':<11} {'ok':<4} detail")
    for name, c in result["checks"].items():
        lines.append(f"{name:<11} {'yes' if c['ok'] else 'NO':<4} {c['detail']}")
    return "\n".join(lines)
