"""Checkpoints on disk: the accepted global model (safetensors) plus the coordinator state.

Written atomically (write to a temp file, fsync, rename, fsync the directory), so a console
killed in the middle of a write leaves the previous checkpoint intact. ``latest.json`` is the
pointer a ``--resume`` reads; it is replaced last. numpy and safetensors only: no torch in the
console, and nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from transport.tensors import TensorPayload, model_hash

log = logging.getLogger(__name__)

_NUMPY_DTYPES = {
    "float32": np.float32,
    "float64": np.float64,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "uint8": np.uint8,
    "int8": np.int8,
}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read back as it was written."""


@dataclass(frozen=True)
class StoredCheckpoint:
    epoch: int
    round: int
    hash: str
    weights_path: Path
    state: dict[str, Any]  # the coordinator's to_state()
    # the weights as load_latest verified them, so a later read cannot race a newer write
    loaded: tuple[TensorPayload, ...] | None = field(default=None, repr=False, compare=False)

    def payloads(self) -> tuple[TensorPayload, ...]:
        if self.loaded is not None:
            return self.loaded
        return read_weights(self.weights_path, expected_hash=self.hash)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, fsync the file, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, data: dict[str, Any]) -> None:
    # Compact: json's C encoder runs only without indent (5x faster on a checkpoint's state).
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    _atomic_write(path, lambda tmp: tmp.write_text(text))


def write_checkpoint(
    directory: Path,
    *,
    epoch: int,
    round: int,
    tensors: tuple[TensorPayload, ...],
    state: dict[str, Any],
) -> StoredCheckpoint:
    """Store the weights and the coordinator state of one accepted round
    (``epoch-NNNN-round-NNNNNN.*``).

    latest.json is left alone: :func:`record_state` points it at this checkpoint once the
    coordinator has counted it, so a console killed in between resumes from the previous
    checkpoint instead of from these weights paired with a state that does not name them.
    """
    digest = model_hash(tensors)
    arrays: dict[str, np.ndarray] = {}
    for t in tensors:
        if t.dtype not in _NUMPY_DTYPES:
            raise CheckpointError(f"tensor {t.name}: dtype {t.dtype} cannot be checkpointed")
        arrays[t.name] = np.frombuffer(t.data, dtype=_NUMPY_DTYPES[t.dtype]).reshape(t.shape)
    metadata = {
        "order": json.dumps([t.name for t in tensors]),
        "hash": digest,
        "epoch": str(epoch),
        "round": str(round),
    }
    stem = _stem(epoch, round)
    weights = directory / f"{stem}.safetensors"
    _atomic_write(weights, lambda tmp: save_file(arrays, str(tmp), metadata=metadata))
    record = {
        "epoch": epoch,
        "round": round,
        "hash": digest,
        "weights": weights.name,
        "state": state,
    }
    _write_json(directory / f"{stem}.json", record)
    log.debug("checkpoint for epoch %d (round %d) written to %s", epoch, round, weights)
    return StoredCheckpoint(epoch, round, digest, weights, state)


def _stem(epoch: int, round: int) -> str:
    return f"epoch-{epoch:04d}-round-{round:06d}"


def record_state(
    directory: Path, stored: StoredCheckpoint, state: dict[str, Any]
) -> StoredCheckpoint:
    """Record the coordinator state that counts ``stored`` and point latest.json at it.

    The checkpoint it replaces is deleted when it belongs to the same epoch, so the directory
    keeps each epoch's last checkpoint (and nothing a crash could leave half-referenced: the
    old files go only after latest.json names the new ones).
    """
    previous = _read_pointer(directory / "latest.json")
    record = {
        "epoch": stored.epoch,
        "round": stored.round,
        "hash": stored.hash,
        "weights": stored.weights_path.name,
        "state": state,
    }
    stem = _stem(stored.epoch, stored.round)
    _write_json(directory / f"{stem}.json", record)
    _write_json(directory / "latest.json", record)
    if previous is not None and previous.get("epoch") == stored.epoch:
        old = str(previous.get("weights", ""))
        if old.endswith(".safetensors") and old != stored.weights_path.name and "/" not in old:
            for name in (old, old.removesuffix(".safetensors") + ".json"):
                (directory / name).unlink(missing_ok=True)
    return StoredCheckpoint(stored.epoch, stored.round, stored.hash, stored.weights_path, state)


def history_name(first: int, last: int) -> str:
    """The file of rounds ``first``..``last`` of the run's round history."""
    return f"rounds-{first:06d}-{last:06d}.json"


def write_round_history(directory: Path, rounds: list[dict[str, Any]]) -> str:
    """Store settled rounds (the coordinator's ``round_to_dict``) once, atomically; returns
    the file's name, which the states written after it list under ``history``."""
    name = history_name(rounds[0]["round"], rounds[-1]["round"])
    _write_json(directory / name, {"rounds": rounds})
    return name


def read_round_history(directory: Path, names: list[Any]) -> list[dict[str, Any]]:
    """The rounds stored in ``names``, oldest first; CheckpointError says which file is bad."""
    rounds: list[dict[str, Any]] = []
    for name in names:
        if not isinstance(name, str) or "/" in name or not name.startswith("rounds-"):
            raise CheckpointError(f"{directory}: bad round history file name {name!r:.80}")
        try:
            stored = json.loads((directory / name).read_text())["rounds"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{directory / name}: unreadable round history ({exc})") from exc
        if not isinstance(stored, list):
            raise CheckpointError(f"{directory / name}: round history is not a list")
        rounds.extend(stored)
    return rounds


def read_weights(path: Path, *, expected_hash: str | None = None) -> tuple[TensorPayload, ...]:
    """Read a checkpoint's tensors back in their original order, checking the hash."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata() or {}
    arrays = load_file(str(path))
    order = json.loads(meta.get("order", "[]")) or sorted(arrays)
    if set(order) != set(arrays):
        raise CheckpointError(f"{path}: tensor order in metadata does not match its tensors")
    payloads = []
    for name in order:
        arr = np.ascontiguousarray(arrays[name])
        dtype = arr.dtype.name
        if dtype not in _NUMPY_DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        payloads.append(TensorPayload(name, dtype, tuple(arr.shape), memoryview(arr).cast("B")))
    result = tuple(payloads)
    if expected_hash is not None and model_hash(result) != expected_hash:
        raise CheckpointError(f"{path}: weights do not match their recorded hash")
    return result


def _read_pointer(pointer: Path) -> dict[str, Any] | None:
    """latest.json as a dict, or None when it is missing or unreadable."""
    try:
        record = json.loads(pointer.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def load_latest(directory: Path) -> StoredCheckpoint | None:
    """The last complete checkpoint in ``directory``, or None when there is none.

    Another process may read while the console writes: a new checkpoint replaces
    latest.json and then removes the weights it superseded. When the weights named by the
    pointer vanish and the pointer has moved on meanwhile, the newer pointer is read
    (bounded); a pointer whose weights are missing or damaged for good is an error.
    """
    pointer = directory / "latest.json"
    for _ in range(5):
        if not pointer.exists():
            return None
        try:
            text = pointer.read_text()
            record = json.loads(text)
            stored = StoredCheckpoint(
                epoch=int(record["epoch"]),
                round=int(record["round"]),
                hash=str(record["hash"]),
                weights_path=directory / str(record["weights"]),
                state=dict(record["state"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{pointer}: unreadable checkpoint pointer ({exc})") from exc
        try:  # the weights must be there and intact before anyone relies on them
            weights = read_weights(stored.weights_path, expected_hash=stored.hash)
        except (OSError, CheckpointError):
            if _pointer_text(pointer) not in (None, text):
                continue  # superseded while we read it: read the newer one
            raise
        return dataclasses.replace(stored, loaded=weights)
    raise CheckpointError(f"{pointer}: kept changing while it was read")


def _pointer_text(pointer: Path) -> str | None:
    try:
        return pointer.read_text()
    except OSError:
        return None
