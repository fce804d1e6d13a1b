"""Local training and evaluation on one node (plain PyTorch; training on the run's device).

``train_local`` runs ``local_epochs`` over seeded shuffled mini-batches of the node's shard with
a fresh optimiser, under ``torch.random.fork_rng`` seeded from ``(seed, round)``: a round is
reproducible (dropout included) and the caller's global RNG is untouched. The round's
learning rate is the caller's (``LearningSpec.round_learning_rate``: the schedule over rounds);
with ``proximal_mu > 0`` the loss is FedProx's (:func:`proximal_term`). Setting
``torch.set_num_threads(spec.torch_threads)`` is the caller's job, once per process.

With a ``device`` (node/device.py) the model trains there and comes back to the CPU in float32
afterwards, so everything after training (aggregation, hashing, checkpoints) is CPU fp32 on every
node. With ``dp`` (node/privacy.py) each step's gradient is DP-SGD's instead of the batch's.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from node.data import Shard
from node.privacy import DPSGD
from transport.spec import OPTIMIZERS, LearningSpec

logger = logging.getLogger(__name__)

EVAL_BATCH = 1024


class TrainingError(RuntimeError):
    """Local training or evaluation cannot proceed (bad spec, empty data, diverged loss)."""


@dataclass(frozen=True)
class TrainResult:
    samples: int  # rows in the shard (the FedAvg weight)
    train_loss: float  # mean cross-entropy over the last local epoch
    train_time: float  # seconds of wall time spent in train_local


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean cross-entropy
    accuracy: float  # fraction in [0, 1]
    samples: int


def make_optimizer(
    model: nn.Module, spec: LearningSpec, learning_rate: float | None = None
) -> torch.optim.Optimizer:
    """A fresh optimiser over the model's parameters (``sgd`` or ``adam``), at
    ``learning_rate`` (the round's scheduled rate) or else ``spec.learning_rate``."""
    lr = spec.learning_rate if learning_rate is None else learning_rate
    if not lr > 0:
        raise TrainingError(f"learning.learning_rate must be > 0 (this round: {lr})")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("the model has no trainable parameters")
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise TrainingError(f"unknown optimizer {spec.optimizer!r}; allowed: {list(OPTIMIZERS)}")


def proximal_term(model: nn.Module, anchor: dict[str, torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's ``mu/2 * ||w - w_global||^2`` over the trainable parameters in ``anchor``
    (their values at the start of the round: the global model); its gradient is
    ``mu * (w - w_global)``."""
    total = torch.zeros((), dtype=torch.float32)
    for name, p in model.named_parameters():
        if name in anchor:
            total = total + (p - anchor[name]).pow(2).sum()
    return total * (mu / 2.0)


@torch.no_grad()
def add_proximal_gradient(model: nn.Module, anchor: dict[str, torch.Tensor], mu: float) -> None:
    """Add FedProx's gradient ``mu * (w - w_global)`` to each ``.grad`` already set (the DP-SGD
    path, whose per-sample gradients are of the cross-entropy alone)."""
    for name, p in model.named_parameters():
        if name in anchor and p.grad is not None:
            p.grad.add_(torch.sub(p, anchor[name]), alpha=mu)


def train_local(
    model: nn.Module,
    shard: Shard,
    spec: LearningSpec,
    *,
    seed: int,
    round: int,
    learning_rate: float | None = None,
    device: torch.device | None = None,
    dp: DPSGD | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``shard`` for one round; returns samples, loss and time.

    ``learning_rate``: the round's rate (default ``spec.learning_rate``). ``train_loss`` is
    the cross-entropy alone, without FedProx's term. ``device``: where to train (default the
    CPU); the model is back on the CPU when it returns. ``dp``: DP-SGD's clipped, noised
    per-sample gradients instead of the batch gradient (FedProx's gradient, which depends on
    no sample, is added after them).
    """
    if spec.local_epochs < 1 or spec.batch_size < 1:
        raise TrainingError(
            "learning.local_epochs and learning.batch_size must be >= 1, got "
            f"{spec.local_epochs} and {spec.batch_size}"
        )
    n = shard.samples
    if n == 0:
        raise TrainingError("this node's shard is empty: nothing to train on")
    started = time.perf_counter()
    device = device or torch.device("cpu")
    on_device = device.type != "cpu"
    if on_device:
        model.to(device)
    optimizer = make_optimizer(model, spec, learning_rate)
    anchor = (  # FedProx: the global model the round starts from (on the training device)
        {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        if spec.proximal_mu > 0
        else {}
    )
    was_training = model.training
    model.train()
    epoch_loss = math.nan
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(_round_seed(seed, round))
            sx, sy = (shard.x.to(device), shard.y.to(device)) if on_device else (shard.x, shard.y)
            for _ in range(spec.local_epochs):
                order = torch.randperm(n).to(device)
                x, y = sx[order], sy[order]
                total = 0.0
                for start in range(0, n, spec.batch_size):
                    xb = x[start : start + spec.batch_size]
                    yb = y[start : start + spec.batch_size]
                    optimizer.zero_grad(set_to_none=True)
                    if dp is None:
                        loss = F.cross_entropy(model(xb), yb)
                        objective = loss
                        if spec.proximal_mu > 0:
                            objective = loss + proximal_term(model, anchor, spec.proximal_mu)
                        objective.backward()
                    else:
                        loss = dp.backward(model, xb, yb)  # sets each .grad (node/privacy.py)
                        if spec.proximal_mu > 0:
                            add_proximal_gradient(model, anchor, spec.proximal_mu)
                    optimizer.step()
                    total += float(loss.detach()) * yb.shape[0]
                epoch_loss = total / n
                if not math.isfinite(epoch_loss):
                    raise TrainingError(
                        f"round {round}: training diverged (loss {epoch_loss}); "
                        "lower learning.learning_rate"
                    )
    finally:
        model.train(was_training)
        if on_device:
            model.to("cpu")  # hashing and aggregation: on the CPU, as on every node
    elapsed = time.perf_counter() - started
    logger.debug("round %d: trained on %d samples, loss %.4f, %.3fs", round, n, epoch_loss, elapsed)
    return TrainResult(samples=n, train_loss=epoch_loss, train_time=elapsed)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = EVAL_BATCH
) -> EvalResult:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``, in eval mode, no grad."""
    n = int(y.shape[0])
    if n == 0 or x.shape[0] != n:
        raise TrainingError(f"cannot evaluate on {x.shape[0]} inputs and {n} labels")
    was_training = model.training
    model.eval()
    loss_sum = 0.0
    correct = 0
    try:
        for start in range(0, n, batch_size):
            logits = model(x[start : start + batch_size])
            yb = y[start : start + batch_size]
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    return EvalResult(loss=loss_sum / n, accuracy=correct / n, samples=n)


def _round_seed(seed: int, round: int) -> int:
    digest = hashlib.sha256(f"{seed}:train:{round}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
