"""The run's configuration as typed, frozen dataclasses, each key's rules declared beside it.

:func:`console.config.load_config` turns ``data.toml`` into a :class:`Config`; nothing below
it reads raw TOML. Defaults live here and only here, and so do the rules: ``key(default,
*rules)`` gives a field its default and what its value must satisfy (see
:mod:`console.config.rules`). The model, data and learning sections are the
:mod:`transport.spec` dataclasses, because nodes receive them in the join reply; their rules
are declared once in :data:`SPEC_RULES`, field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import console.config.rules as r
from transport.spec import (
    AGGREGATORS,
    COMPRESSIONS,
    LR_SCHEDULES,
    OPTIMIZERS,
    PARTITIONS,
    SERVER_OPTIMIZERS,
    DataSpec,
    LearningSpec,
    ModelSpec,
    PrivacySpec,
    RunSpec,
)

RULES = "rules"  # the metadata entry of a field's rules
IN_FILE = "in_file"  # metadata False: the loader fills the field in; the file cannot set it


def key(default: Any, *rules: r.Rule) -> Any:
    """A key ``data.toml`` may set: its default and the rules its value follows."""
    return field(default=default, metadata={RULES: rules})


@dataclass(frozen=True)
class ServerConfig:
    host: str = key("127.0.0.1", r.not_empty)
    state_port: int = key(5555, r.PORT)
    control_port: int = key(5556, r.PORT, r.differs_from("server.state_port"))
    # the data server, only bound with [data] serve = true
    data_port: int = key(5557, r.PORT, r.differs_from("server.state_port", "server.control_port"))
    # flood control on the control port (transport/flood.py): refusals a second from one peer
    # address before it is answered rate_limited and ignored (members never are); 0: never
    refusal_limit: int = key(200, r.at_least(0, " (0: never rate-limit)"))
    refusal_backoff: float = key(10.0, r.SECONDS)  # seconds a rate-limited peer is ignored

    def endpoint(self, port: int) -> str:
        return f"tcp://{self.host}:{port}"


# Phase lengths: the coordinator copes with 0 (the phase ends at the next tick), but a 0 would
# cost the run what the phase is for (see each one), so only the extra wait may be 0.
@dataclass(frozen=True)
class CoordinatorConfig:
    init_min_clients: int = key(4, r.COUNT)
    min_clients: int = key(2, r.COUNT, r.at_most("coordinator.init_min_clients"))
    witness_nodes: int = (
        key(  # 0: every live client, up to coordinator.coordinator.committee.MAX_AUTO_WITNESSES
            2,
            r.at_least(0, " (0: every live client witnesses)"),
            r.at_most("coordinator.min_clients"),
        )
    )
    waiting_for_members_extra_time: float = key(0.5, r.at_least(0))  # 0: start at once
    # seconds WaitingForMembers waits for earlier members before the console says who is
    # missing and how to continue (then again every as many seconds); 0: never
    stall_warning_after: float = key(30.0, r.at_least(0, " (0: never warn)"))
    warmup_time: float = key(30.0, r.SECONDS)  # 0: rounds start before any node warmed up
    max_round_train_time: float = key(60.0, r.SECONDS)  # 0: no trainer ever reports in time
    round_witness_time: float = key(5.0, r.SECONDS)  # 0: rounds end before the votes arrive
    cooldown_time: float = key(1.0, r.SECONDS)  # 0: an unsaved last checkpoint is dropped
    rounds_per_epoch: int = key(5, r.COUNT)
    total_rounds: int = key(20, r.COUNT)
    heartbeat_interval: float = key(0.5, r.SECONDS)
    health_timeout: float = key(
        3.0, r.SECONDS, r.exceeds("coordinator.heartbeat_interval", "or every node looks dead")
    )


@dataclass(frozen=True)
class LocalConfig:
    spawn: int = key(4, r.at_least(0))  # local fl-node processes the console starts


@dataclass(frozen=True)
class CheckpointConfig:
    dir: Path = key(Path("checkpoints"), r.not_empty)


@dataclass(frozen=True)
class SecurityConfig:
    """``[security]``: ZeroMQ CURVE on every socket and a ZAP allowlist of node keys (off)."""

    curve: bool = key(False, r.curve_has_server_key, r.curve_without_served_data)
    # the console's secret key file (fl-console keygen DIR)
    server_key: Path | None = key(None, r.not_empty)
    # a directory of node public key files (*.key)
    authorized_keys: Path | None = key(None, r.not_empty)
    allowed: tuple[str, ...] = key((), r.curve_public_keys)  # more node public keys, as Z85 text
    # operators' public keys, as Z85 text: who may act with fl-console ctl / attach under CURVE
    operators: tuple[str, ...] = key((), r.curve_public_keys)


SPEC_RULES: dict[type, dict[str, tuple[r.Rule, ...]]] = {
    LearningSpec: {
        "train_set_size": (r.COUNT,),
        "local_epochs": (r.COUNT,),
        "batch_size": (r.COUNT,),
        "optimizer": (r.one_of(*OPTIMIZERS),),
        "learning_rate": (r.above(0),),
        "aggregator": (r.one_of(*AGGREGATORS), r.krum_needs_enough_updates),
        "trim_fraction": (r.between(0, 0.5, open_high=True),),
        "byzantine_f": (r.at_least(0),),
        "torch_threads": (r.COUNT,),
        "compression": (r.one_of(*COMPRESSIONS),),
        "topk_fraction": (r.between(0, 1, open_low=True),),
        "gossip_fanout": (r.at_least(0),),
        "server_optimizer": (r.one_of(*SERVER_OPTIMIZERS),),
        "server_learning_rate": (
            r.at_least(0, " (0: the optimiser's default, 1.0 for avgm, 0.01 otherwise)"),
        ),
        "server_momentum": (r.between(0, 1, open_high=True),),
        "server_beta1": (r.between(0, 1, open_high=True),),
        "server_beta2": (r.between(0, 1, open_high=True),),
        "server_tau": (r.above(0),),
        "proximal_mu": (r.at_least(0, " (0: FedProx off)"),),
        "lr_schedule": (r.one_of(*LR_SCHEDULES),),
        "lr_min": (r.at_least(0), r.at_most("learning.learning_rate")),
        "lr_step_rounds": (r.COUNT,),
        "lr_gamma": (r.between(0, 1, open_low=True),),
        "device": (r.device_name,),
    },
    PrivacySpec: {
        "noise_multiplier": (r.above(0),),
        "max_grad_norm": (r.above(0),),
        "delta": (r.between(0, 1, open_low=True, open_high=True),),
        "target_epsilon": (r.at_least(0, " (0: no limit)"),),
    },
    ModelSpec: {
        "name": (r.model_name,),
        "hidden": (r.every_entry(r.COUNT),),
        "channels": (r.every_entry(r.COUNT), r.cnn_has_channels),
    },
    DataSpec: {
        "source": (r.data_source,),
        "partition": (r.one_of(*PARTITIONS),),
        "alpha": (r.above(0),),
        "test_fraction": (r.between(0, 1, open_low=True, open_high=True),),
        "samples": (r.COUNT,),
        "features": (r.COUNT,),
        "classes": (r.at_least(2),),
    },
}


@dataclass(frozen=True)
class Config:
    run_id: str = key("digits-demo", r.valid_run_id)
    seed: int = key(42, r.at_least(0))
    server: ServerConfig = field(default_factory=ServerConfig)
    coordinator: CoordinatorConfig = field(default_factory=CoordinatorConfig)
    learning: LearningSpec = field(default_factory=LearningSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    local: LocalConfig = field(default_factory=LocalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    # the file it was read from; relative paths resolve against it
    source: Path | None = field(default=None, metadata={IN_FILE: False})

    def run_spec(self) -> RunSpec:
        """What nodes are told in the join reply."""
        return RunSpec(
            run_id=self.run_id,
            seed=self.seed,
            model=self.model,
            data=self.data,
            learning=self.learning,
            privacy=self.privacy,
            heartbeat_interval=self.coordinator.heartbeat_interval,
            health_timeout=self.coordinator.health_timeout,
            data_endpoint=self.server.endpoint(self.server.data_port) if self.data.serve else "",
        )
