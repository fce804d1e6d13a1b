"""[learning] device: resolved on the node, a clear error for a device it lacks (this machine: CPU)."""

from __future__ import annotations

import pytest
import torch

from node.data import Shard
from node.device import DeviceError, resolve_device
from node.models import build_model
from node.training import train_local
from transport.spec import LearningSpec, ModelSpec

NO_GPU = not torch.cuda.is_available()


def test_cpu_and_auto_resolve_to_the_cpu_without_an_accelerator() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    if NO_GPU and not torch.backends.mps.is_available():
        assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(not NO_GPU, reason="this test is about a node without a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_clear_error_naming_what_the_node_has(name: str) -> None:
    with pytest.raises(DeviceError) as caught:
        resolve_device(name)
    text = str(caught.value)
    assert f'device "{name}" asked for' in text and "no CUDA GPU" in text
    assert "it has: cpu" in text and '"auto" or "cpu"' in text


def test_unknown_device_lists_the_allowed_ones() -> None:
    with pytest.raises(DeviceError, match=r'"auto" \| "cpu" \| "cuda" \| "cuda:N" \| "mps"'):
        resolve_device("tpu")


def test_training_on_a_device_leaves_the_model_on_the_cpu_in_fp32() -> None:
    model = build_model(ModelSpec(), features=64, classes=10, image_shape=(8, 8), seed=0)
    g = torch.Generator().manual_seed(0)
    shard = Shard(torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g))
    device = resolve_device("auto")
    train_local(model, shard, LearningSpec(), seed=0, round=1, device=device)
    for t in model.state_dict().values():
        assert t.device.type == "cpu" and t.dtype == torch.float32
