"""Where a node trains (``[learning] device``, ``fl-node --device``), checked before it does.

Only local training runs on the device: aggregation, hashing and checkpoints stay on the CPU in
float32, so nodes on different hardware still agree bit for bit. A device the node lacks is a
:class:`DeviceError` at warmup, with what the node has instead.
"""

from __future__ import annotations

import torch

from transport.spec import DEVICES, is_device


class DeviceError(RuntimeError):
    """The device asked for does not exist on this node."""


def _has_mps() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available() -> str:
    """What this node has, for error messages: ``cpu``, plus ``cuda:0..N-1`` and ``mps``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _has_mps():
        found.append("mps")
    return ", ".join(found)


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name`` (``auto``: the first GPU, else MPS, else the CPU)."""
    if not is_device(name):
        allowed = " | ".join(f'"{d}"' for d in DEVICES)
        raise DeviceError(f"unknown device {name!r}: must be one of {allowed}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        return torch.device("mps") if _has_mps() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _has_mps():
            raise DeviceError(
                f'device "mps" asked for, but this node has no MPS (Apple GPU); it has: '
                f'{available()}. Use device = "auto" or "cpu" ([learning] device or fl-node --device)'
            )
        return torch.device("mps")
    index = int(name.split(":")[1]) if ":" in name else 0
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none: a CPU-only build"
        raise DeviceError(
            f'device "{name}" asked for, but this node has no CUDA GPU (torch {torch.__version__},'
            f' CUDA {build}); it has: {available()}. Use device = "auto" or "cpu" '
            "([learning] device or fl-node --device)"
        )
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f'device "{name}" asked for, but this node has {torch.cuda.device_count()} CUDA '
            f"GPU(s); it has: {available()}"
        )
    return torch.device("cuda", index)
