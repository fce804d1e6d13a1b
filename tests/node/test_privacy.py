"""DP-SGD at a trainer: per-sample clipping, seeded noise, and epsilon from Opacus's accountant."""

from __future__ import annotations

import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from node.data import Dataset, Shard, load_dataset
from node.models import build_model
from node.privacy import (
    DPSGD,
    PrivacyBudget,
    PrivacyError,
    check_model,
    clip_and_sum,
    clip_factors,
    epsilon_spent,
    per_sample_gradients,
    per_sample_norms,
    sample_rate,
    steps_per_round,
)
from node.training import evaluate, train_local
from transport.spec import DataSpec, LearningSpec, ModelSpec, PrivacySpec

torch.set_num_threads(1)
SGD = LearningSpec(optimizer="sgd", learning_rate=0.1, batch_size=32, local_epochs=1)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataSpec(source="digits"), seed=0, base_dir=None)


def _mlp(seed: int = 0) -> torch.nn.Module:
    spec = ModelSpec(name="mlp", hidden=(64, 32))
    return build_model(spec, features=64, classes=10, image_shape=(8, 8), seed=seed)


def _dp(noise: float, clip: float, seed: int = 7) -> DPSGD:
    spec = PrivacySpec(dp=True, noise_multiplier=noise, max_grad_norm=clip)
    return DPSGD.for_round(spec, seed=seed, node_id="n1", round=1, device=torch.device("cpu"))


def test_per_sample_gradients_equal_one_backward_per_sample(digits: Dataset) -> None:
    model = _mlp()
    x, y = digits.x_train[:5], digits.y_train[:5]
    names, grads, losses = per_sample_gradients(model, x, y)
    for i in range(5):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        loss.backward()
        assert torch.isclose(losses[i], loss.detach(), atol=1e-6)
        for name, p in model.named_parameters():
            assert torch.allclose(grads[name][i], p.grad, atol=1e-6), name
    assert names == [n for n, _ in model.named_parameters()]


@pytest.mark.parametrize("clip", [0.01, 0.1, 1.0])
def test_clipped_per_sample_gradient_norms_are_at_most_max_grad_norm(
    digits: Dataset, clip: float
) -> None:
    model = _mlp()
    x, y = digits.x_train[:64] * 5.0, digits.y_train[:64]  # large inputs: large gradients
    _, grads, _ = per_sample_gradients(model, x, y)
    norms = per_sample_norms(grads)
    assert (norms > clip).any()  # the clipping has something to do
    factors = clip_factors(grads, clip)
    clipped = {k: g * factors.view(-1, *([1] * (g.dim() - 1))) for k, g in grads.items()}
    clipped_norms = per_sample_norms(clipped)
    assert (clipped_norms <= clip * (1 + 1e-5)).all()
    small = norms < clip
    assert torch.equal(factors[small], torch.ones_like(factors[small]))  # small ones untouched
    summed = clip_and_sum(grads, clip)
    for k in grads:
        assert torch.allclose(summed[k], clipped[k].sum(dim=0), atol=1e-6)


def test_dp_gradient_is_clipped_sum_plus_seeded_noise_over_the_batch(digits: Dataset) -> None:
    model = _mlp()
    x, y = digits.x_train[:32], digits.y_train[:32]
    noise, clip = 0.8, 0.5
    _dp(noise, clip).backward(model, x, y)
    _, grads, _ = per_sample_gradients(model, x, y)
    summed = clip_and_sum(grads, clip)
    gen = torch.Generator().manual_seed(_dp(noise, clip).generator.initial_seed())
    for name, p in model.named_parameters():
        expected = torch.normal(0.0, noise * clip, size=p.shape, generator=gen)
        assert torch.allclose(p.grad * 32 - summed[name], expected, atol=1e-5), name
    # the noise has the documented scale: std noise_multiplier * max_grad_norm per coordinate
    w = model[1].weight  # Linear(64, 64): 4096 noise draws
    residual = w.grad * 32 - summed["1.weight"]
    assert 0.9 * noise * clip < float(residual.std()) < 1.1 * noise * clip


def test_noise_differs_between_nodes_and_rounds() -> None:
    spec = PrivacySpec(dp=True)
    cpu = torch.device("cpu")
    seeds = {
        DPSGD.for_round(spec, seed=1, node_id=n, round=r, device=cpu).generator.initial_seed()
        for n in ("a", "b")
        for r in (1, 2)
    }
    assert len(seeds) == 4


def test_dp_training_is_bit_identical_given_the_seed(digits: Dataset) -> None:
    shard = Shard(digits.x_train[:300], digits.y_train[:300])
    states = []
    for node in ("n1", "n1", "n2"):
        model = _mlp()
        dp = DPSGD.for_round(
            PrivacySpec(dp=True, noise_multiplier=1.0, max_grad_norm=1.0),
            seed=3,
            node_id=node,
            round=2,
            device=torch.device("cpu"),
        )
        train_local(model, shard, SGD, seed=3, round=2, dp=dp)
        states.append(model.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_dp_training_still_learns_with_moderate_noise(digits: Dataset) -> None:
    shard = Shard(digits.x_train, digits.y_train)
    model = _mlp()
    before = evaluate(model, digits.x_test, digits.y_test).accuracy
    spec = PrivacySpec(dp=True, noise_multiplier=0.5, max_grad_norm=1.0)
    adam = LearningSpec(optimizer="adam", learning_rate=0.01, batch_size=32, local_epochs=1)
    for r in range(1, 4):
        dp = DPSGD.for_round(spec, seed=0, node_id="n", round=r, device=torch.device("cpu"))
        train_local(model, shard, adam, seed=0, round=r, dp=dp)
    after = evaluate(model, digits.x_test, digits.y_test).accuracy
    assert after > max(0.5, before + 0.3)


def test_batch_norm_is_refused_with_what_to_use_instead() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(PrivacyError, match="BatchNorm1d.*GroupNorm or LayerNorm"):
        check_model(model)
    check_model(_mlp())  # no error


@pytest.mark.parametrize(
    ("q", "noise", "steps"), [(32 / 360, 1.0, 12), (0.1, 0.5, 100), (1.0, 2.0, 3)]
)
def test_epsilon_matches_opacus_rdp_for_q_sigma_steps(q: float, noise: float, steps: int) -> None:
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise, sample_rate=q)
    ours = epsilon_spent(noise, [(q, steps)], 1e-5)
    assert ours == accountant.get_epsilon(delta=1e-5)
    orders = accountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=q, noise_multiplier=noise, steps=steps, orders=orders)
    eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    assert ours == pytest.approx(eps, rel=1e-12)


def test_budget_counts_steps_across_rounds_and_stops_before_target() -> None:
    samples, batch, epochs = 360, 32, 1
    q, steps = sample_rate(batch, samples), steps_per_round(samples, batch, epochs)
    assert (q, steps) == (32 / 360, 12)
    three_rounds = epsilon_spent(1.0, [(q, 3 * steps)], 1e-5)
    four_rounds = epsilon_spent(1.0, [(q, 4 * steps)], 1e-5)
    budget = PrivacyBudget(PrivacySpec(dp=True, target_epsilon=(three_rounds + four_rounds) / 2))
    for _ in range(3):
        assert budget.allows(q, steps)
        budget.spend(q, steps)
    assert budget.steps == 36 and budget.epsilon == three_rounds
    assert not budget.allows(q, steps)  # a fourth round would pass the target
    assert "target_epsilon" in budget.refusal(q, steps)
    assert PrivacyBudget(PrivacySpec(dp=True, target_epsilon=0.0), [(q, 10**4)]).allows(q, steps)


def test_a_changed_shard_is_accounted_at_its_own_sampling_rate() -> None:
    budget = PrivacyBudget(PrivacySpec(dp=True))
    budget.spend(0.1, 10)
    budget.spend(0.1, 5)
    budget.spend(0.2, 4)
    assert budget.history == [(0.1, 15), (0.2, 4)]
    accountant = RDPAccountant()
    for q, n in ((0.1, 15), (0.2, 4)):
        for _ in range(n):
            accountant.step(noise_multiplier=1.0, sample_rate=q)
    assert budget.epsilon == accountant.get_epsilon(delta=1e-5)


def test_a_model_torch_func_cannot_vmap_is_a_privacy_error_at_warmup() -> None:
    from node.data import Dataset as _Dataset
    from node.stages.start import warm_up_torch

    class InPlaceIndex(torch.nn.Module):  # .item() on a batched tensor: vmap refuses it
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) * float(x.sum().item() > 0)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    ds = _Dataset(x, y, x[:8], y[:8], 4, 3, None)
    privacy = PrivacySpec(dp=True)
    with pytest.raises(PrivacyError, match="per-sample gradients"):
        warm_up_torch(InPlaceIndex(), ds, SGD, torch.device("cpu"), privacy)
    warm_up_torch(InPlaceIndex(), ds, SGD, torch.device("cpu"), PrivacySpec())  # DP off: fine


def test_without_clipping_or_noise_the_dp_gradient_is_the_batch_gradient(
    digits: Dataset,
) -> None:
    model = _mlp()
    x, y = digits.x_train[:32], digits.y_train[:32]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    _dp(noise=1e-20, clip=1e9).backward(model, x, y)  # noise std 1e-11
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], atol=1e-6), name
