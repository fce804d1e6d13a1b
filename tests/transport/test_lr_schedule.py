"""LearningSpec.round_learning_rate: the schedule's rates are the formula's."""

from __future__ import annotations

import math

import pytest

from transport.spec import LearningSpec


def test_constant_is_the_learning_rate_every_round() -> None:
    spec = LearningSpec(learning_rate=0.05)
    assert {spec.round_learning_rate(r, 20) for r in range(1, 25)} == {0.05}


def test_cosine_starts_at_the_rate_and_decays_to_lr_min_over_total_rounds() -> None:
    spec = LearningSpec(learning_rate=0.1, lr_schedule="cosine", lr_min=0.01)
    total = 30
    for r in range(1, total + 1):
        want = 0.01 + (0.1 - 0.01) * (1 + math.cos(math.pi * (r - 1) / total)) / 2
        assert spec.round_learning_rate(r, total) == pytest.approx(want, rel=1e-12)
    assert spec.round_learning_rate(1, total) == 0.1
    assert spec.round_learning_rate(16, total) == pytest.approx(0.055)  # half way
    rates = [spec.round_learning_rate(r, total) for r in range(1, total + 1)]
    assert rates == sorted(rates, reverse=True) and rates[-1] > 0.01
    # rounds past total_rounds (rounds that were not accepted) stay at lr_min
    assert spec.round_learning_rate(total + 1, total) == pytest.approx(0.01)
    assert spec.round_learning_rate(total + 7, total) == pytest.approx(0.01)


def test_step_multiplies_by_gamma_every_lr_step_rounds() -> None:
    spec = LearningSpec(learning_rate=0.2, lr_schedule="step", lr_step_rounds=3, lr_gamma=0.5)
    got = [spec.round_learning_rate(r, 10) for r in range(1, 11)]
    assert got == [0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]
