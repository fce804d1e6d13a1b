"""Server optimisers (Reddi et al. 2021, "Adaptive Federated Optimization"), on every node.

After a round's aggregation every node holds the same aggregate ``Δ = aggregate − global``
(``node.aggregators``: FedAvg, median, trimmed mean or Krum of the accepted set). With a
server optimiser it does not add Δ as it is but steps the global model with it:

- ``m = β1·m + (1 − β1)·Δ``
- ``v``: adagrad ``v + Δ²``; adam ``β2·v + (1 − β2)·Δ²``; yogi ``v − (1 − β2)·Δ²·sign(v − Δ²)``
- ``global += η·m / (√v + τ)``
- avgm: ``v = β·v + Δ``; ``global += η·v``

starting from ``m = 0`` and ``v = τ²`` (the paper's ``v₋₁ ≥ τ²``; avgm from ``v = 0``).

Only float trainable parameters (``node.compression.trainable_names``) are stepped; buffers
(BatchNorm running statistics, ``num_batches_tracked``) take the aggregate as it is
(``node.compression.apply_update``). Every operation is a separate element-wise fp32 IEEE
operation (no fused multiply-add), tensors in state_dict order, so every node computes the
same bits and the aggregate hashes still agree.

The optimiser's state is part of the *global state*: the model's tensors followed by
``server_optimizer.m.<name>`` / ``server_optimizer.v.<name>``. The global hash, the
checkpoint a node uploads and the model a joining or resyncing node loads are all of the
global state, so the state is hashed, checkpointed and resumed with the weights it belongs to.
With ``server_optimizer = "none"`` the global state is the model alone, as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from node import weights
from node.compression import apply_update, trainable_names
from transport.spec import SERVER_OPTIMIZERS, LearningSpec
from transport.tensors import TensorPayload

StateDict = Mapping[str, torch.Tensor]

PREFIX = "server_optimizer."
ADAPTIVE = ("adam", "yogi", "adagrad")


class ServerOptimizerError(ValueError):
    """A server optimiser that cannot be built or a state that does not fit it."""


class ServerOptimizer:
    """One node's server optimiser over a model's float trainable parameters."""

    def __init__(self, learning: LearningSpec, reference: StateDict, trainable: Iterable[str]):
        name = learning.server_optimizer
        if name not in SERVER_OPTIMIZERS or name == "none":
            raise ServerOptimizerError(
                f"unknown server optimizer {name!r}; allowed: {list(SERVER_OPTIMIZERS[1:])}"
            )
        self.name = name
        self.eta = learning.server_lr()
        self.momentum = learning.server_momentum
        self.beta1, self.beta2, self.tau = (
            learning.server_beta1,
            learning.server_beta2,
            learning.server_tau,
        )
        wanted = set(trainable)
        self.keys = [k for k, t in reference.items() if k in wanted and t.dtype.is_floating_point]
        if not self.keys:
            raise ServerOptimizerError("the model has no float trainable parameters to step")
        shapes = {k: tuple(reference[k].shape) for k in self.keys}
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}
        for k in self.keys:
            if name == "avgm":
                self.v[k] = torch.zeros(shapes[k], dtype=torch.float32)
            else:
                self.m[k] = torch.zeros(shapes[k], dtype=torch.float32)
                self.v[k] = torch.full(shapes[k], self.tau * self.tau, dtype=torch.float32)

    def state(self) -> dict[str, torch.Tensor]:
        """The state as named tensors (``server_optimizer.m.<key>``, then ``.v.<key>``)."""
        out = {f"{PREFIX}m.{k}": t for k, t in self.m.items()}
        out.update({f"{PREFIX}v.{k}": t for k, t in self.v.items()})
        return out

    def load(self, state: StateDict) -> None:
        """Take ``state`` (as :meth:`state` names it; checked: names, shapes, fp32)."""
        mine = self.state()
        if set(state) != set(mine):
            missing = sorted(set(mine) - set(state))[:4]
            extra = sorted(set(state) - set(mine))[:4]
            raise ServerOptimizerError(
                f"server optimizer state does not fit {self.name!r}: missing {missing}, "
                f"unexpected {extra}"
            )
        for key, ref in mine.items():
            t = state[key]
            if t.dtype != torch.float32 or t.shape != ref.shape:
                raise ServerOptimizerError(
                    f"{key}: {t.dtype} {list(t.shape)}, expected float32 {list(ref.shape)}"
                )
        for k in self.m:
            self.m[k] = state[f"{PREFIX}m.{k}"].detach().clone()
        for k in self.v:
            self.v[k] = state[f"{PREFIX}v.{k}"].detach().clone()

    @torch.no_grad()
    def step(self, base: StateDict, delta: StateDict) -> dict[str, torch.Tensor]:
        """The new global model from ``base`` and the aggregate ``delta``; updates m and v
        (new tensors: a state taken before stays as it was)."""
        out = apply_update(base, delta)  # buffers and integer entries: the aggregate as it is
        for k in self.keys:
            d = delta[k].detach().to(torch.float32)
            b = base[k].detach().to(torch.float32)
            out[k] = torch.add(b, self._increment(k, d)).to(base[k].dtype)
        return out

    def _increment(self, k: str, d: torch.Tensor) -> torch.Tensor:
        if self.name == "avgm":
            self.v[k] = torch.add(torch.mul(self.v[k], self.momentum), d)
            return torch.mul(self.v[k], self.eta)
        self.m[k] = torch.add(torch.mul(self.m[k], self.beta1), torch.mul(d, 1.0 - self.beta1))
        d2 = torch.mul(d, d)
        v = self.v[k]
        if self.name == "adagrad":
            v = torch.add(v, d2)
        elif self.name == "adam":
            v = torch.add(torch.mul(v, self.beta2), torch.mul(d2, 1.0 - self.beta2))
        else:  # yogi
            v = torch.sub(v, torch.mul(torch.mul(d2, 1.0 - self.beta2), torch.sign(v - d2)))
        self.v[k] = v
        return torch.div(torch.mul(self.m[k], self.eta), torch.add(torch.sqrt(v), self.tau))


def make_server_optimizer(learning: LearningSpec, model: nn.Module) -> ServerOptimizer | None:
    """The run's server optimiser for ``model``, or None for ``server_optimizer = "none"``."""
    if learning.server_optimizer == "none":
        return None
    return ServerOptimizer(learning, model.state_dict(), trainable_names(model))


def global_state(
    model_state: StateDict, optimizer: ServerOptimizer | None
) -> dict[str, torch.Tensor]:
    """The global state: the model's tensors, then the server optimiser's (if any)."""
    out = dict(model_state)
    if optimizer is not None:
        out.update(optimizer.state())
    return out


def global_hash(model: nn.Module, optimizer: ServerOptimizer | None) -> str:
    """The wire hash of the global state (what nodes report as their aggregate)."""
    return weights.model_hash_of(global_state(model.state_dict(), optimizer))


def load_global(
    model: nn.Module, optimizer: ServerOptimizer | None, payloads: Iterable[TensorPayload]
) -> None:
    """Load a received global state (a checkpoint) into the model and the optimiser, checked
    against both (``weights.WeightsError`` names the first problem)."""
    payloads = tuple(payloads)
    carried = any(p.name.startswith(PREFIX) for p in payloads)
    if carried != (optimizer is not None):
        raise weights.WeightsError(
            "the global model "
            + ("carries a server optimizer's state" if carried else "has no server optimizer state")
            + f" but this run's learning.server_optimizer is "
            f"{optimizer.name if optimizer is not None else 'none'!r}: a checkpoint resumes "
            "only with the server_optimizer it was written with"
        )
    reference = global_state(model.state_dict(), optimizer)
    state = weights.from_payloads(payloads, reference)
    weights.load_into(model, {k: v for k, v in state.items() if not k.startswith(PREFIX)})
    if optimizer is not None:
        optimizer.load({k: v for k, v in state.items() if k.startswith(PREFIX)})
