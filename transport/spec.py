"""What a node needs to know about the run to take part in it.

The console reads ``data.toml`` (``console/config.py``) and hands nodes a :class:`RunSpec` in
the join reply, so a node started with nothing but an address and a run id builds the same
model, loads the same shard and trains the same way as every other node. The spec is plain
data: it is encoded as JSON on the wire and validated on the way in (``RunSpec.from_dict``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

OPTIMIZERS = ("sgd", "adam")
AGGREGATORS = ("fedavg", "fedmedian", "trimmed_mean", "krum")
BUILTIN_MODELS = ("mlp", "cnn")
BUILTIN_DATA = ("digits", "synthetic")
PARTITIONS = ("iid", "dirichlet")
COMPRESSIONS = ("none", "fp16", "int8", "topk")  # how a trainer's update is encoded for gossip


class SpecError(ValueError):
    """A spec received from the wire (or built by hand) that does not hold together."""


@dataclass(frozen=True)
class ModelSpec:
    name: str = "mlp"  # mlp | cnn | "package.module:factory"
    hidden: tuple[int, ...] = (64, 32)
    channels: tuple[int, ...] = (16, 32)  # cnn only


@dataclass(frozen=True)
class DataSpec:
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


@dataclass(frozen=True)
class LearningSpec:
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


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    seed: int
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    learning: LearningSpec = field(default_factory=LearningSpec)
    heartbeat_interval: float = 0.5
    health_timeout: float = 3.0
    data_endpoint: str = ""  # data.serve: the data server's ROUTER ("" when nodes load locally)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> RunSpec:
        """Rebuild a spec from decoded JSON, rejecting anything that is not exactly our shape."""
        if not isinstance(raw, dict):
            raise SpecError(f"run spec must be an object, got {type(raw).__name__}")
        try:
            model = _build(ModelSpec, raw.get("model", {}), "model")
            data = _build(DataSpec, raw.get("data", {}), "data")
            learning = _build(LearningSpec, raw.get("learning", {}), "learning")
            top = {k: v for k, v in raw.items() if k not in ("model", "data", "learning")}
            spec = cls(model=model, data=data, learning=learning, **_check_fields(cls, top, "run"))
        except TypeError as exc:
            raise SpecError(str(exc)) from exc
        return spec


_TUPLE_FIELDS = {"hidden", "channels"}
_SCALARS: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}


def _check_fields(kind: type, raw: dict[str, Any], where: str) -> dict[str, Any]:
    allowed = set(kind.__dataclass_fields__) - {"model", "data", "learning"}
    unknown = set(raw) - allowed
    if unknown:
        raise SpecError(f"{where}: unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name in _TUPLE_FIELDS:
            if not isinstance(value, list | tuple) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
            ):
                raise SpecError(
                    f"{where}.{name}: expected a list of positive integers, got {value!r}"
                )
            out[name] = tuple(value)
            continue
        expected = _SCALARS.get(str(kind.__dataclass_fields__[name].type))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is not None and type(value) is not expected:
            raise SpecError(
                f"{where}.{name}: expected {expected.__name__}, got {type(value).__name__}"
            )
        out[name] = value
    return out


def _build(kind: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected an object, got {type(raw).__name__}")
    return kind(**_check_fields(kind, raw, where))
