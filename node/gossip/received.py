"""A trainer's update as a node holds it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transport.tensors import TensorPayload


@dataclass(frozen=True)
class ReceivedModel:
    """A trainer's update for one round: the payloads as sent (what is forwarded and what the
    hash covers) and their decoded fp32 form (what is aggregated)."""

    trainer: str
    hash: str
    samples: int
    state: dict[str, torch.Tensor]  # the decoded update (node/compression.py decode_update)
    payloads: tuple[TensorPayload, ...] = ()
    route: tuple[str, ...] = ()  # the relay order its trainer chose (empty: no relaying)
