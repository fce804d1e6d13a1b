"""Byzantine trainers, for robustness testing only: a node that corrupts its own update.

``fl-node --attack scale:1000`` or ``--attack signflip:4`` makes the node send, instead of its
trained weights ``w``, the global model ``g`` it trained from plus a corrupted update
``u = w - g``:

* ``scale:S``     sends ``g + S * u`` (an update blown up S times);
* ``signflip:S``  sends ``g - S * u`` (the update reversed and scaled; ``signflip`` is S = 1).

Only floating-point entries change; the commit, the pushes and the node's own metrics all carry
the corrupted weights, exactly as a malicious node would send them. An honest node never sets
this; it exists so tests (and operators evaluating an aggregator) can check that ``krum``,
``fedmedian`` and ``trimmed_mean`` hold up and that ``fedavg``'s damage shows per client.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

ATTACK_KINDS = ("scale", "signflip")


@dataclass(frozen=True)
class Attack:
    kind: str  # one of ATTACK_KINDS
    factor: float

    def apply(
        self, trained: Mapping[str, torch.Tensor], start: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The weights this node sends instead of ``trained`` (``start``: the global model)."""
        sign = 1.0 if self.kind == "scale" else -1.0
        out: dict[str, torch.Tensor] = {}
        for key, value in trained.items():
            if not value.dtype.is_floating_point:
                out[key] = value.clone()
                continue
            base = start[key].to(value.dtype)
            out[key] = base + (value - base) * (sign * self.factor)
        return out

    def __str__(self) -> str:
        return f"{self.kind}:{self.factor:g}"


def parse_attack(text: str) -> Attack:
    """``scale:S`` or ``signflip[:S]`` (S a finite number > 0); ValueError says what is allowed."""
    kind, _, raw = text.partition(":")
    if kind not in ATTACK_KINDS:
        raise ValueError(f"attack {text!r}: use scale:S or signflip[:S] (S > 0)")
    if not raw:
        if kind == "scale":
            raise ValueError(f"attack {text!r}: scale needs a factor, e.g. scale:1000")
        raw = "1"
    try:
        factor = float(raw)
    except ValueError:
        raise ValueError(f"attack {text!r}: factor {raw!r} is not a number") from None
    if not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"attack {text!r}: the factor must be a finite number > 0")
    return Attack(kind, factor)
