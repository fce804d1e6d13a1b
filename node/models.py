"""Build the run's model from its :class:`~transport.spec.ModelSpec`, identically on every node.

Built-ins:

- ``mlp``: ``features -> hidden[0] -> ... -> hidden[-1] -> classes`` with ReLU between layers.
- ``cnn``: for image-shaped data (``image_shape=(H, W)``, one channel, rows stored flat):
  one ``Conv3x3 -> ReLU -> MaxPool2`` block per entry of ``channels`` (the pool is skipped once
  the map is smaller than 2x2), then ``Flatten -> Linear(classes)``.

A user model is named ``"package.module:factory"``; the factory is imported with
:mod:`importlib` and called as ``factory(features=..., classes=...)``; it must return a
``torch.nn.Module`` whose state_dict holds only dtypes the wire carries.

Weights are initialised under ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng``: every
node building the same spec with the same seed gets bit-identical initial weights, and the
caller's global RNG state is left untouched.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable

import torch
from torch import nn

from transport.spec import BUILTIN_MODELS, ModelSpec
from transport.tensors import DTYPE_SIZES

logger = logging.getLogger(__name__)

_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


class ModelError(ValueError):
    """The model spec cannot be turned into a usable model (bad sizes, bad user factory)."""


def build_model(
    spec: ModelSpec,
    *,
    features: int,
    classes: int,
    image_shape: tuple[int, int] | None,
    seed: int,
) -> nn.Module:
    """Build the model named by ``spec`` with weights drawn from ``seed`` (same bits everywhere)."""
    if not isinstance(features, int) or features < 1:
        raise ModelError(f"features must be a positive integer, got {features!r}")
    if not isinstance(classes, int) or classes < 2:
        raise ModelError(f"classes must be an integer >= 2, got {classes!r}")
    builder = _builder(spec, features=features, classes=classes, image_shape=image_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builder()
    _check_state_dtypes(model, spec.name)
    logger.debug(
        "built model %s: %d parameters",
        spec.name,
        sum(p.numel() for p in model.parameters()),
    )
    return model


def _builder(
    spec: ModelSpec, *, features: int, classes: int, image_shape: tuple[int, int] | None
) -> Callable[[], nn.Module]:
    if spec.name == "mlp":
        return lambda: _mlp(features, spec.hidden, classes)
    if spec.name == "cnn":
        if image_shape is None:
            raise ModelError(
                "model 'cnn' needs image-shaped data (a data source with an image shape, such as "
                "'digits' or a loader returning (N, H, W) arrays); this data is flat vectors of "
                f"{features} features: use model 'mlp' or a user factory"
            )
        height, width = image_shape
        if height * width != features:
            raise ModelError(
                f"model 'cnn': image shape {height}x{width} does not match {features} features"
            )
        return lambda: _cnn(image_shape, spec.channels, classes)
    if ":" in spec.name:
        factory = _import_factory(spec.name)
        return lambda: _call_factory(factory, spec.name, features=features, classes=classes)
    raise ModelError(
        f"unknown model {spec.name!r}: use one of {list(BUILTIN_MODELS)} or an import path "
        "'package.module:factory'"
    )


def _mlp(features: int, hidden: tuple[int, ...], classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = features
    for size in hidden:
        if size < 1:
            raise ModelError(f"model 'mlp': hidden sizes must be positive, got {list(hidden)}")
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def _cnn(image_shape: tuple[int, int], channels: tuple[int, ...], classes: int) -> nn.Module:
    if not channels:
        raise ModelError("model 'cnn': channels must name at least one conv layer")
    height, width = image_shape
    layers: list[nn.Module] = [nn.Unflatten(1, (1, height, width))]
    in_channels = 1
    for out_channels in channels:
        if out_channels < 1:
            raise ModelError(f"model 'cnn': channels must be positive, got {list(channels)}")
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
        if height >= 2 and width >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        in_channels = out_channels
    layers += [nn.Flatten(), nn.Linear(in_channels * height * width, classes)]
    return nn.Sequential(*layers)


def _import_factory(path: str) -> Callable[..., object]:
    if not _IMPORT_PATH.match(path):
        raise ModelError(
            f"model {path!r}: an import path must look like 'package.module:factory' "
            "(dotted module, one colon, a function name)"
        )
    module_name, attr = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # user code: anything can go wrong on import
        raise ModelError(
            f"model {path!r}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise ModelError(f"model {path!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(factory):
        raise ModelError(f"model {path!r}: {attr!r} is a {type(factory).__name__}, not callable")
    return factory


def _call_factory(
    factory: Callable[..., object], path: str, *, features: int, classes: int
) -> nn.Module:
    try:
        model = factory(features=features, classes=classes)
    except Exception as exc:  # user code
        raise ModelError(
            f"model {path!r}: factory(features={features}, classes={classes}) raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model {path!r}: factory must return a torch.nn.Module, got {type(model).__name__}"
        )
    return model


def _check_state_dtypes(model: nn.Module, name: str) -> None:
    state = model.state_dict()
    if not state:
        raise ModelError(f"model {name!r} has no parameters or buffers to train and share")
    for key, tensor in state.items():
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in DTYPE_SIZES:
            raise ModelError(
                f"model {name!r}: state_dict entry {key!r} has dtype {dtype}, which the wire "
                f"does not carry; allowed: {sorted(DTYPE_SIZES)}"
            )
