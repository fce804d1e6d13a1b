"""Sample-level DP-SGD at a trainer, and the privacy it has spent (``[privacy]``).

:class:`DPSGD` replaces ``loss.backward()`` in :func:`node.training.train_local` when the run
has ``dp = true``: it computes every sample's gradient (``torch.func``: ``functional_call`` +
``vmap`` + ``grad``), clips each one to ``max_grad_norm`` in L2 over all trainable parameters,
sums them, adds Gaussian noise of standard deviation ``noise_multiplier * max_grad_norm`` drawn
from the node's own seeded generator, and sets each parameter's ``.grad`` to that sum divided
by the batch size. The optimiser then steps as usual.

The privacy spent is never computed here: :func:`epsilon_spent` asks Opacus's RDP accountant
for the epsilon of ``steps`` steps of the subsampled Gaussian mechanism with sampling rate
``q = batch_size / shard size`` (the approximation Opacus itself makes for shuffled, fixed-size
batches). :class:`PrivacyBudget` counts a node's steps over every round it trained and says
whether one more round keeps it within ``target_epsilon``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F

from transport.spec import LearningSpec, PrivacySpec

# Added to a sample's gradient norm before dividing by it (as Opacus does), so a zero gradient
# is left as it is instead of producing NaN.
NORM_EPS = 1e-6


class PrivacyError(RuntimeError):
    """DP-SGD cannot run as asked (a model whose gradients are not per sample, a bad spec)."""


def check_model(model: nn.Module) -> None:
    """Refuse models whose per-sample gradients would leak across the batch (BatchNorm)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise PrivacyError(
                f"[privacy] dp = true cannot train {type(module).__name__} ({name or 'the model'}):"
                " batch statistics mix the samples of a batch, so per-sample clipping would not "
                "bound any one sample's influence; use GroupNorm or LayerNorm, or dp = false"
            )


def noise_seed(seed: int, node_id: str, round: int) -> int:
    """The seed of a trainer's noise in a round: its own, different on every node and round."""
    digest = hashlib.sha256(f"{seed}:dp-noise:{node_id}:{round}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class DPSGD:
    """Per-sample clipped, noised gradients for one round of a trainer's local training."""

    def __init__(self, spec: PrivacySpec, generator: torch.Generator) -> None:
        if not (spec.noise_multiplier > 0 and spec.max_grad_norm > 0):
            raise PrivacyError(
                "privacy.noise_multiplier and privacy.max_grad_norm must be > 0, got "
                f"{spec.noise_multiplier} and {spec.max_grad_norm}"
            )
        self.noise_multiplier = spec.noise_multiplier
        self.max_grad_norm = spec.max_grad_norm
        self.generator = generator

    @classmethod
    def for_round(
        cls, spec: PrivacySpec, *, seed: int, node_id: str, round: int, device: torch.device
    ) -> DPSGD:
        generator = torch.Generator(device=device)
        generator.manual_seed(noise_seed(seed, node_id, round))
        return cls(spec, generator)

    def backward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Set every trainable parameter's ``.grad`` to the DP-SGD gradient of ``(x, y)``.

        Returns the batch's mean loss (detached), for reporting only.
        """
        names, grads, losses = per_sample_gradients(model, x, y)
        clipped = clip_and_sum(grads, self.max_grad_norm)
        batch = x.shape[0]
        std = self.noise_multiplier * self.max_grad_norm
        params = dict(model.named_parameters())
        for name in names:  # a fixed order: the same noise on every run with this seed
            summed = clipped[name]
            noise = torch.normal(
                0.0,
                std,
                size=summed.shape,
                generator=self.generator,
                device=summed.device,
                dtype=summed.dtype,
            )
            params[name].grad = (summed + noise) / batch
        return losses.mean().detach()


def per_sample_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[list[str], dict[str, torch.Tensor], torch.Tensor]:
    """Each sample's cross-entropy gradient for every trainable parameter, shape ``(B, *p)``.

    Returns the parameter names (in the model's order), the gradients and the per-sample losses.
    """
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise PrivacyError("the model has no trainable parameters")
    frozen = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def loss_of(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, ({**p, **frozen}, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    grads, losses = vmap(grad_and_value(loss_of), in_dims=(None, 0, 0), randomness="different")(
        params, x, y
    )
    return list(params), grads, losses


def per_sample_norms(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each sample's gradient norm over all parameters together, shape ``(B,)``."""
    squares = [g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in grads.values()]
    return torch.stack(squares, dim=1).sum(dim=1).sqrt()


def clip_factors(grads: dict[str, torch.Tensor], max_grad_norm: float) -> torch.Tensor:
    """``min(1, C / (norm + eps))`` per sample: what scales its gradient to norm <= C."""
    return (max_grad_norm / (per_sample_norms(grads) + NORM_EPS)).clamp(max=1.0)


def clip_and_sum(grads: dict[str, torch.Tensor], max_grad_norm: float) -> dict[str, torch.Tensor]:
    """The sum over the batch of the per-sample gradients, each clipped to ``max_grad_norm``."""
    factors = clip_factors(grads, max_grad_norm)
    return {k: torch.einsum("b,b...->...", factors, g) for k, g in grads.items()}


# --- the accountant -----------------------------------------------------------------------


def sample_rate(batch_size: int, samples: int) -> float:
    """``q``: the chance a given sample is in a batch (one batch of ``batch_size`` per step)."""
    if samples < 1 or batch_size < 1:
        raise PrivacyError(f"no sampling rate for batch {batch_size} of {samples} samples")
    return min(1.0, batch_size / samples)


def steps_per_round(samples: int, batch_size: int, local_epochs: int) -> int:
    """Optimiser steps in one round of :func:`node.training.train_local`."""
    return local_epochs * math.ceil(samples / batch_size)


def round_cost(samples: int, learning: LearningSpec) -> tuple[float, int]:
    """``(q, steps)`` of one round of local training on a shard of ``samples``."""
    return (
        sample_rate(learning.batch_size, samples),
        steps_per_round(samples, learning.batch_size, learning.local_epochs),
    )


def epsilon_spent(noise_multiplier: float, history: list[tuple[float, int]], delta: float) -> float:
    """The epsilon at ``delta`` of DP-SGD steps, from Opacus's RDP accountant.

    ``history`` lists ``(q, steps)``: runs of steps at sampling rate ``q``, oldest first (a
    node's shard, hence ``q``, changes when the epoch's membership does).
    """
    if sum(steps for _, steps in history) <= 0:
        return 0.0
    from opacus.accountants import RDPAccountant  # imported when DP is on (it takes seconds)

    accountant = RDPAccountant()
    for q, steps in history:
        for _ in range(steps):  # Opacus merges consecutive equal steps into one entry
            accountant.step(noise_multiplier=noise_multiplier, sample_rate=q)
    return float(accountant.get_epsilon(delta=delta))


@dataclass
class PrivacyBudget:
    """What one node has spent: its DP-SGD steps over every round it trained, and their epsilon."""

    spec: PrivacySpec
    history: list[tuple[float, int]] = field(default_factory=list)  # (q, steps), oldest first
    epsilon: float = 0.0  # spent so far, at spec.delta

    @property
    def steps(self) -> int:
        return sum(steps for _, steps in self.history)

    def epsilon_with(self, q: float, steps: int) -> float:
        """The epsilon spent after ``steps`` more steps at sampling rate ``q``."""
        return epsilon_spent(
            self.spec.noise_multiplier, [*self.history, (q, steps)], self.spec.delta
        )

    def allows(self, q: float, steps: int) -> bool:
        """False when those steps would take it past ``target_epsilon`` (0: no limit)."""
        target = self.spec.target_epsilon
        return target <= 0 or self.epsilon_with(q, steps) <= target

    def spend(self, q: float, steps: int) -> float:
        """Count a round's steps; returns the epsilon spent so far."""
        if self.history and self.history[-1][0] == q:
            self.history[-1] = (q, self.history[-1][1] + steps)
        else:
            self.history.append((q, steps))
        self.epsilon = epsilon_spent(self.spec.noise_multiplier, self.history, self.spec.delta)
        return self.epsilon

    def refusal(self, q: float, steps: int) -> str:
        """Why this node stops training (for the operator)."""
        return (
            f"privacy budget: one more round would spend epsilon {self.epsilon_with(q, steps):.3f}"
            f" > target_epsilon {self.spec.target_epsilon:g} at delta {self.spec.delta:g}"
            f" (spent {self.epsilon:.3f} in {self.steps} steps)"
        )
