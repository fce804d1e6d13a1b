"""The short chaos run: 40 rounds of six real ``fl-node`` processes under a seeded storm of
faults (SIGKILL, SIGSTOP/SIGCONT, restart, garbage floods on the control port) and two
console SIGKILLs with ``--resume``; the books must balance at the end (:mod:`bench.chaos`,
whose long version is ``make soak``). Every process it started is reaped even when it fails
(:meth:`tests.e2e.fault_runs.ControlledRun.close`, and the leftover check)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import chaos
from bench.chaos_checks import table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_short_chaos_run_finishes_with_every_round_accounted_for_and_nothing_leaking(
    tmp_path: Path,
) -> None:
    result = chaos.run(rounds=40, seed=5, directory=tmp_path, interval=(1.0, 2.5), time_limit=150.0)
    print(table(result))
    kinds = result["faults_by_kind"]
    # the storm happened: nodes killed or stopped, and the console killed twice
    assert kinds.get("console_sigkill") == 2, kinds
    assert result["consoles"] == 3
    assert sum(kinds.get(k, 0) for k in ("sigkill", "sigstop", "sigstop_long", "restart")) >= 3
    failed = {name: c["detail"] for name, c in result["checks"].items() if not c["ok"]}
    assert failed == {}, table(result)
