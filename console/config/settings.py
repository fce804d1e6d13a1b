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

from console.config.rules import (
    COUNT,
    PORT,
    SECONDS,
    Rule,
    above,
    at_least,
    at_most,
    between,
    cnn_has_channels,
    curve_has_server_key,
    curve_public_keys,
    curve_without_served_data,
    data_source,
    differs_from,
    every_entry,
    exceeds,
    krum_needs_enough_updates,
    model_name,
    not_empty,
    one_of,
    valid_run_id,
)
from transport.spec import (
    AGGREGATORS,
    COMPRESSIONS,
    OPTIMIZERS,
    PARTITIONS,
    DataSpec,
    LearningSpec,
    ModelSpec,
    RunSpec,
)

RULES = "rules"  # the metadata entry of a field's rules
IN_FILE = "in_file"  # metadata False: the loader fills the field in; the file cannot set it


def key(default: Any, *rules: Rule) -> Any:
    """A key ``data.toml`` may set: its default and the rules its value follows."""
    return field(default=default, metadata={RULES: rules})


@dataclass(frozen=True)
class ServerConfig:
    host: str = key("127.0.0.1", not_empty)
    state_port: int = key(5555, PORT)
    control_port: int = key(5556, PORT, differs_from("server.state_port"))
    # the data server, only bound with [data] serve = true
    data_port: int = key(5557, PORT, differs_from("server.state_port", "server.control_port"))

    def endpoint(self, port: int) -> str:
        return f"tcp://{self.host}:{port}"


# Phase lengths: the coordinator copes with 0 (the phase ends at the next tick), but a 0 would
# cost the run what the phase is for (see each one), so only the extra wait may be 0.
@dataclass(frozen=True)
class CoordinatorConfig:
    init_min_clients: int = key(4, COUNT)
    min_clients: int = key(2, COUNT, at_most("coordinator.init_min_clients"))
    witness_nodes: int = key(  # 0: every live client, up to coordinator.MAX_AUTO_WITNESSES
        2, at_least(0, " (0: every live client witnesses)"), at_most("coordinator.min_clients")
    )
    waiting_for_members_extra_time: float = key(0.5, at_least(0))  # 0: start at once
    warmup_time: float = key(30.0, SECONDS)  # 0: rounds start before any node warmed up
    max_round_train_time: float = key(60.0, SECONDS)  # 0: no trainer ever reports in time
    round_witness_time: float = key(5.0, SECONDS)  # 0: rounds end before the votes arrive
    cooldown_time: float = key(1.0, SECONDS)  # 0: an unsaved last checkpoint is dropped
    rounds_per_epoch: int = key(5, COUNT)
    total_rounds: int = key(20, COUNT)
    heartbeat_interval: float = key(0.5, SECONDS)
    health_timeout: float = key(
        3.0, SECONDS, exceeds("coordinator.heartbeat_interval", "or every node looks dead")
    )


@dataclass(frozen=True)
class LocalConfig:
    spawn: int = key(4, at_least(0))  # local fl-node processes the console starts


@dataclass(frozen=True)
class CheckpointConfig:
    dir: Path = key(Path("checkpoints"), not_empty)


@dataclass(frozen=True)
class SecurityConfig:
    """``[security]``: ZeroMQ CURVE on every socket and a ZAP allowlist of node keys (off)."""

    curve: bool = key(False, curve_has_server_key, curve_without_served_data)
    # the console's secret key file (fl-console keygen DIR)
    server_key: Path | None = key(None, not_empty)
    # a directory of node public key files (*.key)
    authorized_keys: Path | None = key(None, not_empty)
    allowed: tuple[str, ...] = key((), curve_public_keys)  # more node public keys, as Z85 text


SPEC_RULES: dict[type, dict[str, tuple[Rule, ...]]] = {
    LearningSpec: {
        "train_set_size": (COUNT,),
        "local_epochs": (COUNT,),
        "batch_size": (COUNT,),
        "optimizer": (one_of(*OPTIMIZERS),),
        "learning_rate": (above(0),),
        "aggregator": (one_of(*AGGREGATORS), krum_needs_enough_updates),
        "trim_fraction": (between(0, 0.5, open_high=True),),
        "byzantine_f": (at_least(0),),
        "torch_threads": (COUNT,),
        "compression": (one_of(*COMPRESSIONS),),
        "topk_fraction": (between(0, 1, open_low=True),),
        "gossip_fanout": (at_least(0),),
    },
    ModelSpec: {
        "name": (model_name,),
        "hidden": (every_entry(COUNT),),
        "channels": (every_entry(COUNT), cnn_has_channels),
    },
    DataSpec: {
        "source": (data_source,),
        "partition": (one_of(*PARTITIONS),),
        "alpha": (above(0),),
        "test_fraction": (between(0, 1, open_low=True, open_high=True),),
        "samples": (COUNT,),
        "features": (COUNT,),
        "classes": (at_least(2),),
    },
}


@dataclass(frozen=True)
class Config:
    run_id: str = key("digits-demo", valid_run_id)
    seed: int = key(42, at_least(0))
    server: ServerConfig = field(default_factory=ServerConfig)
    coordinator: CoordinatorConfig = field(default_factory=CoordinatorConfig)
    learning: LearningSpec = field(default_factory=LearningSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
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
            heartbeat_interval=self.coordinator.heartbeat_interval,
            health_timeout=self.coordinator.health_timeout,
            data_endpoint=self.server.endpoint(self.server.data_port) if self.data.serve else "",
        )
