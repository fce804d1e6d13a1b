"""Shared test data: free ports, a data.toml on them, and fixed fake run states.

Build a :class:`RunSnapshot` with :func:`run_snapshot` (a :class:`RoundView` with
:func:`round_view`) and name only the fields the test is about; the rest are small, fixed
defaults. Fields go by keyword only, so the factories survive a change of the class behind them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tomlkit

from transport.state import RoundView, RunSnapshot, RunState
from transport.tensors import TensorPayload

REPO = Path(__file__).resolve().parents[1]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (bound to 0 together, released)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_config(directory: Path, **sections: dict[str, Any]) -> Path:
    """The repository's data.toml on free ports, checkpoints under ``directory``, overridden per
    section (``coordinator={"total_rounds": 2}``; ``top={"run_id": ...}`` for top-level keys)."""
    doc = tomlkit.parse((REPO / "data.toml").read_text())
    state, control, data = free_ports(3)
    doc["server"].update({"state_port": state, "control_port": control, "data_port": data})
    doc["checkpoint"]["dir"] = str(directory / "checkpoints")
    for section, values in sections.items():
        (doc if section == "top" else doc[section]).update(values)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "data.toml"
    path.write_text(tomlkit.dumps(doc))
    return path


def run_snapshot(**fields: Any) -> RunSnapshot:
    """A broadcast state: run ``r`` in RoundTrain of a 2-round run, no clients, time 0."""
    base = dict(run_id="r", state=RunState.ROUND_TRAIN, now=0.0, phase_started=0.0, deadline=None,
                epoch=0, round=0, epoch_rounds=0, accepted_rounds=0, total_rounds=2,
                rounds_per_epoch=2, init_min_clients=2, min_clients=2, pending_pause=False,
                clients=())  # fmt: skip
    return RunSnapshot(**{**base, **fields})


def round_view(**fields: Any) -> RoundView:
    """Round 1 of epoch 0, started at time 0, with nobody in it and a quorum of 1."""
    base = dict(round=1, epoch=0, seed=1, train_set=(), witnesses=(), quorum=1, started=0.0)
    return RoundView(**{**base, **fields})


def payloads_with(
    payloads: Iterable[TensorPayload], target: str, /, **changes: Any
) -> list[TensorPayload]:
    """``payloads`` with the one named ``target`` rebuilt with ``changes`` (``dtype="bf16"``,
    ``name="other"``, ``data=b""``, ...): a hostile or broken tensor among good ones."""
    out = []
    for p in payloads:
        if p.name == target:
            fields = {"name": p.name, "dtype": p.dtype, "shape": p.shape, "data": p.data}
            p = TensorPayload(**(fields | changes))
        out.append(p)
    return out
