"""The run's configuration as typed, frozen dataclasses.

``console/config.py`` turns ``data.toml`` into a :class:`Config`; nothing below it reads raw
TOML. Defaults live here and only here. The model, data and learning sections are the
:mod:`transport.spec` dataclasses, because nodes receive them in the join reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transport.spec import DataSpec, LearningSpec, ModelSpec, RunSpec


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    state_port: int = 5555
    control_port: int = 5556
    data_port: int = 5557  # data server (only bound with [data] serve = true)

    def endpoint(self, port: int) -> str:
        return f"tcp://{self.host}:{port}"


@dataclass(frozen=True)
class CoordinatorConfig:
    init_min_clients: int = 4
    min_clients: int = 2
    witness_nodes: int = 2
    waiting_for_members_extra_time: float = 0.5
    warmup_time: float = 30.0
    max_round_train_time: float = 60.0
    round_witness_time: float = 5.0
    cooldown_time: float = 1.0
    rounds_per_epoch: int = 5
    total_rounds: int = 20
    heartbeat_interval: float = 0.5
    health_timeout: float = 3.0


@dataclass(frozen=True)
class LocalConfig:
    spawn: int = 4  # local fl-node processes the console starts


@dataclass(frozen=True)
class CheckpointConfig:
    dir: Path = Path("checkpoints")


@dataclass(frozen=True)
class SecurityConfig:
    """``[security]``: ZeroMQ CURVE on every socket and a ZAP allowlist of node keys (off)."""

    curve: bool = False
    server_key: Path | None = None  # the console's secret key file (fl-console keygen DIR)
    authorized_keys: Path | None = None  # a directory of node public key files (*.key)
    allowed: tuple[str, ...] = ()  # more node public keys, as Z85 text


@dataclass(frozen=True)
class Config:
    run_id: str = "digits-demo"
    seed: int = 42
    server: ServerConfig = field(default_factory=ServerConfig)
    coordinator: CoordinatorConfig = field(default_factory=CoordinatorConfig)
    learning: LearningSpec = field(default_factory=LearningSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    local: LocalConfig = field(default_factory=LocalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    source: Path | None = None  # the file it was read from; relative paths resolve against it

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
