"""What a node needs to know about the run to take part in it.

The console reads ``data.toml`` (``console/config.py``) and hands nodes a :class:`RunSpec` in
the join reply, so a node started with nothing but an address and a run id builds the same
model, loads the same shard and trains the same way as every other node. The spec is plain
data, declared once: msgspec checks it when the join reply is decoded.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

OPTIMIZERS = ("sgd", "adam")
AGGREGATORS = ("fedavg", "fedmedian", "trimmed_mean", "krum")
BUILTIN_MODELS = ("mlp", "cnn")
BUILTIN_DATA = ("digits", "synthetic")
PARTITIONS = ("iid", "dirichlet")
COMPRESSIONS = ("none", "fp16", "int8", "topk")  # how a trainer's update is encoded for gossip
SERVER_OPTIMIZERS = ("none", "avgm", "adam", "yogi", "adagrad")  # applied to the aggregate
# server_learning_rate = 0 means this default (Reddi et al. 2021's usual choices)
SERVER_LR_DEFAULTS = {"none": 1.0, "avgm": 1.0, "adam": 0.01, "yogi": 0.01, "adagrad": 0.01}
LR_SCHEDULES = ("constant", "cosine", "step")  # the trainers' learning rate over rounds
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")  # where a node trains; "cuda:N" is a pattern
_CUDA_INDEX = re.compile(r"^cuda:\d+$")


def is_device(value: str) -> bool:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``: a device a node may train on."""
    return value in ("auto", "cpu", "cuda", "mps") or bool(_CUDA_INDEX.match(value))


class SpecError(ValueError):
    """A spec received from the wire (or built by hand) that does not hold together."""


class _Section(Struct, frozen=True, forbid_unknown_fields=True):
    """Base of the spec's parts: frozen, no unknown fields, each field's type checked on decode."""


Positives = tuple[Annotated[int, Meta(gt=0)], ...]


class ModelSpec(_Section):
    name: str = "mlp"  # mlp | cnn | "package.module:factory"
    hidden: Positives = (64, 32)
    channels: Positives = (16, 32)  # cnn only


class DataSpec(_Section):
    source: str = (
        "digits"  # digits | synthetic | "package.module:loader" | path to a .safetensors file
    )
    partition: str = "dirichlet"  # iid | dirichlet
    alpha: float = 0.5
    test_fraction: float = 0.2
    samples: int = 60000  # synthetic only
    features: int = 784  # synthetic only
    classes: int = 10  # synthetic only
    serve: bool = False  # the console serves shards over ROUTER/DEALER


class LearningSpec(_Section):
    train_set_size: int = 4
    local_epochs: int = 1
    batch_size: int = 32
    optimizer: str = "sgd"
    learning_rate: float = 0.05
    aggregator: str = "fedavg"
    trim_fraction: float = 0.2  # trimmed_mean: fraction cut at each end
    byzantine_f: int = 1  # krum: assumed number of bad updates
    torch_threads: int = 1
    compression: str = "none"  # none | fp16 | int8 | topk: how trainers encode their update
    topk_fraction: float = 0.1  # topk: share of each tensor's entries sent per round
    gossip_fanout: int = 0  # 0: a trainer pushes to every peer; K: to K peers, who relay
    # server optimiser (node/server_optimizers.py), applied by every node to the aggregate
    server_optimizer: str = "none"  # none | avgm | adam | yogi | adagrad
    server_learning_rate: float = 0.0  # 0: the optimiser's default (SERVER_LR_DEFAULTS)
    server_momentum: float = 0.9  # avgm
    server_beta1: float = 0.9  # adam, yogi, adagrad
    server_beta2: float = 0.99  # adam, yogi
    server_tau: float = 1e-3  # adam, yogi, adagrad
    proximal_mu: float = 0.0  # FedProx: mu/2 * ||w - w_global||^2 added to the local loss
    lr_schedule: str = "constant"  # constant | cosine | step (see round_learning_rate)
    lr_min: float = 0.0  # cosine: the rate it decays to
    lr_step_rounds: int = 10  # step: rounds between decays
    lr_gamma: float = 0.5  # step: factor of each decay
    # where training runs (auto: the accelerator when there is one); aggregation, hashing and
    # checkpoints stay on the CPU in fp32, so nodes on different hardware agree bit for bit
    device: str = "auto"

    def server_lr(self) -> float:
        """The server learning rate eta in use: ``server_learning_rate``, or with 0 the
        optimiser's default (1.0 for avgm, 0.01 for adam, yogi and adagrad)."""
        if self.server_learning_rate > 0:
            return self.server_learning_rate
        return SERVER_LR_DEFAULTS.get(self.server_optimizer, 1.0)

    def round_learning_rate(self, round: int, total_rounds: int) -> float:
        """The trainers' learning rate in round ``round`` (1-based) of a ``total_rounds`` run.

        - constant: ``learning_rate``;
        - cosine: ``lr_min + (learning_rate - lr_min) * (1 + cos(pi * t / T)) / 2`` with
          ``t = min(round - 1, T)`` and ``T = total_rounds``: round 1 trains at
          ``learning_rate``, the rate falls along half a cosine and would reach ``lr_min``
          after the last round (PyTorch's CosineAnnealingLR over rounds); later rounds (a
          run with rounds that were not accepted) stay at ``lr_min``;
        - step: ``learning_rate * lr_gamma ** floor((round - 1) / lr_step_rounds)``.
        """
        r = max(1, round)
        if self.lr_schedule == "cosine":
            total = max(1, total_rounds)
            t = min(r - 1, total)
            cosine = (1.0 + math.cos(math.pi * t / total)) / 2.0
            return self.lr_min + (self.learning_rate - self.lr_min) * cosine
        if self.lr_schedule == "step":
            return self.learning_rate * self.lr_gamma ** ((r - 1) // max(1, self.lr_step_rounds))
        return self.learning_rate


class PrivacySpec(_Section):
    """Sample-level DP-SGD at every trainer (node/privacy.py), with an RDP accountant."""

    dp: bool = False
    noise_multiplier: float = 1.0  # sigma: noise std is noise_multiplier * max_grad_norm
    max_grad_norm: float = 1.0  # C: each sample's gradient is clipped to this L2 norm
    delta: float = 1e-5  # the delta epsilon is reported at
    target_epsilon: float = 0.0  # 0: no limit; else a node stops training before exceeding it


class RunSpec(_Section):
    run_id: str
    seed: int
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    learning: LearningSpec = LearningSpec()
    privacy: PrivacySpec = PrivacySpec()
    heartbeat_interval: float = 0.5
    health_timeout: float = 3.0
    data_endpoint: str = ""  # data.serve: the data server's ROUTER ("" when nodes load locally)

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)

    @classmethod
    def from_dict(cls, raw: Any) -> RunSpec:
        """Rebuild a spec from decoded JSON, rejecting anything that is not exactly our shape."""
        try:
            return msgspec.convert(raw, cls)
        except msgspec.ValidationError as exc:
            raise SpecError(f"run spec: {exc}") from None
