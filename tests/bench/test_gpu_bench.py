"""bench/gpu_bench.py runs on a CPU-only machine: it says there is no GPU and gives CPU figures."""

from __future__ import annotations

import torch

from bench import gpu_bench


def test_without_a_gpu_it_says_so_and_times_the_cpu() -> None:
    result = gpu_bench.run(jobs=("default",), rounds=1)
    rows = result["jobs"]["default"]
    assert "cpu" in rows and rows["cpu"]["local_s"] > 0
    text = gpu_bench.table(result)
    assert "default" in text and "cpu" in text
    if not torch.cuda.is_available():
        assert list(rows) == ["cpu"]
        assert text.startswith("no GPU available")


def test_the_cnn_jobs_images_are_seeded_28x28_in_10_classes() -> None:
    x, y = gpu_bench.images(seed=1)
    again, _ = gpu_bench.images(seed=1)
    assert x.shape == (gpu_bench.CNN_IMAGES, 28, 28) and torch.equal(x, again)
    assert set(y.tolist()) == set(range(10))
