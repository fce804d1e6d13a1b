"""A console killed in the middle of writing a checkpoint leaves a checkpoint --resume can use.

A child process writes checkpoints exactly as the server does (``write_checkpoint`` with the
coordinator's state, then ``record_state`` with the state after the checkpoint counted) and
dies: once at every file-system step (``os._exit`` right before the k-th rename, as a SIGKILL
would leave the files), and at random moments by a real SIGKILL. After each death the latest
checkpoint must load (weights present, hash verified) and its recorded state must describe
those very weights: the state ``--resume`` restores names this checkpoint and the next epoch.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from console.server.checkpoint import StoredCheckpoint, load_latest
from tests.factories import REPO

WRITER = r"""
import os, sys
from pathlib import Path
import numpy as np
import console.server.checkpoint as cp
from transport.tensors import TensorPayload

directory, die_at, epochs, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
renames = 0
real_replace = os.replace

def replace(src, dst):  # a SIGKILL right before the die_at-th rename
    global renames
    if renames == die_at:
        os._exit(137)
    real_replace(src, dst)
    renames += 1

os.replace = replace
checkpoint = None
epoch = 0
while epochs < 0 or epoch < epochs:
    arrays = [np.full(shape, epoch, dtype=np.float32) for shape in ((size, 64), (64,))]
    tensors = tuple(
        TensorPayload(f"t{i}", "float32", a.shape, memoryview(a).cast("B"))
        for i, a in enumerate(arrays)
    )
    # the server: write with the coordinator's state, count it, record the state after it
    before = {"epoch": epoch, "checkpoint": checkpoint}
    stored = cp.write_checkpoint(directory, epoch=epoch, round=3 * (epoch + 1), tensors=tensors, state=before)
    checkpoint = {"epoch": epoch, "round": stored.round, "hash": stored.hash}
    cp.record_state(directory, stored, {"epoch": epoch + 1, "checkpoint": checkpoint})
    epoch += 1
"""


def _writer(directory: Path, *, die_at: int, epochs: int, size: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory), str(die_at), str(epochs), str(size)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _assert_resumable(stored: StoredCheckpoint | None) -> None:
    """What --resume needs: weights that verify, and a state that names exactly them."""
    if stored is None:
        return
    stored.payloads()  # raises CheckpointError if the weights are missing or altered
    assert stored.state["checkpoint"] == {
        "epoch": stored.epoch,
        "round": stored.round,
        "hash": stored.hash,
    }, f"latest.json points at epoch {stored.epoch}'s weights with the state {stored.state}"
    assert stored.state["epoch"] == stored.epoch + 1


def test_a_writer_killed_at_every_step_of_a_checkpoint_leaves_a_resumable_one(
    tmp_path: Path,
) -> None:
    steps = 0
    while True:  # one death per rename of two checkpoints, until a run writes both
        directory = tmp_path / f"step-{steps}"
        writer = _writer(directory, die_at=steps, epochs=2, size=16)
        _, err = writer.communicate(timeout=60)
        stored = load_latest(directory)
        _assert_resumable(stored)
        if writer.returncode == 0:
            assert stored is not None and stored.epoch == 1
            break
        assert writer.returncode == 137, err.decode()
        steps += 1
    assert steps >= 6  # at least the weights, the epoch record and latest.json, twice


@pytest.mark.slow
def test_a_writer_sigkilled_at_random_moments_leaves_a_resumable_checkpoint(
    tmp_path: Path,
) -> None:
    rng = random.Random(6)
    directory = tmp_path / "checkpoints"
    seen_epochs = set()
    for _ in range(10):
        writer = _writer(directory, die_at=-1, epochs=-1, size=1 << 14)  # 4 MiB per checkpoint
        time.sleep(0.4 + rng.uniform(0.0, 0.4))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
        stored = load_latest(directory)
        _assert_resumable(stored)
        if stored is not None:
            seen_epochs.add(stored.epoch)
        leftovers = [p for p in directory.glob(".*") if p.is_file()]
        for path in leftovers:  # temp files of an interrupted write: harmless, never loaded
            assert not path.name.startswith(".latest.json") or os.path.getsize(path) >= 0
    assert seen_epochs, "the writer never completed a checkpoint before it was killed"


def test_a_reader_never_sees_weights_vanish_while_the_console_writes(tmp_path: Path) -> None:
    """A second process (a test, a report) loads the latest checkpoint while the writer adds
    rounds to one epoch, which removes the weights each new round supersedes."""
    directory = tmp_path / "checkpoints"
    writer = subprocess.Popen(
        [sys.executable, "-c", SAME_EPOCH_WRITER, str(directory)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        rounds = set()
        deadline = time.monotonic() + 60
        while writer.poll() is None and time.monotonic() < deadline:
            stored = load_latest(directory)
            if stored is not None:
                stored.payloads()
                rounds.add(stored.round)
        _, err = writer.communicate(timeout=30)
        assert writer.returncode == 0, err.decode()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert len(rounds) > 5, f"the reader saw too few checkpoints to race the writer: {rounds}"


SAME_EPOCH_WRITER = r"""
import sys
from pathlib import Path
import numpy as np
import console.server.checkpoint as cp
from transport.tensors import TensorPayload

directory = Path(sys.argv[1])
for round in range(1, 401):
    array = np.full((64, 64), round, dtype=np.float32)
    tensors = (TensorPayload("w", "float32", array.shape, memoryview(array).cast("B")),)
    stored = cp.write_checkpoint(directory, epoch=0, round=round, tensors=tensors, state={})
    cp.record_state(directory, stored, {"epoch": 0})
"""
