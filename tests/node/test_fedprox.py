"""FedProx: mu/2 * ||w - w_global||^2 added to the local loss, checked by hand."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from node.data import Shard
from node.training import proximal_term, train_local
from transport.spec import LearningSpec


def _linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def test_the_proximal_term_and_its_gradient_are_the_formulas() -> None:
    model = _linear()
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.weight.add_(torch.tensor([[0.5, -1.0, 0.25], [0.0, 2.0, -0.5]]))
        model.bias.add_(torch.tensor([1.0, -3.0]))
    mu = 0.2
    term = proximal_term(model, anchor, mu)
    # by hand: ||diff||^2 = 0.25 + 1 + 0.0625 + 0 + 4 + 0.25 + 1 + 9 = 15.5625
    assert torch.isclose(term, torch.tensor(mu / 2 * 15.5625))
    term.backward()
    assert torch.allclose(model.weight.grad, mu * (model.weight - anchor["weight"]))
    assert torch.allclose(model.bias.grad, torch.tensor([0.2, -0.6]))


def test_train_local_adds_mu_times_the_distance_to_the_global_model_to_each_step() -> None:
    """Full-batch SGD, two epochs: the first step starts at the global model (no pull), the
    second adds mu * (w1 - w_global) to the cross-entropy's gradient."""
    gen = torch.Generator().manual_seed(1)
    shard = Shard(torch.randn(8, 3, generator=gen), torch.randint(0, 2, (8,), generator=gen))
    lr, mu = 0.5, 0.3
    spec = LearningSpec(
        optimizer="sgd", learning_rate=lr, batch_size=8, local_epochs=2, proximal_mu=mu
    )
    model = _linear()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_local(model, shard, spec, seed=0, round=1)

    def ce_grad(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        w = {n: t.clone().requires_grad_(True) for n, t in params.items()}
        loss = F.cross_entropy(F.linear(shard.x, w["weight"], w["bias"]), shard.y)
        grads = torch.autograd.grad(loss, [w["weight"], w["bias"]])
        return dict(zip(["weight", "bias"], grads, strict=True))

    g0 = ce_grad(w0)
    w1 = {n: w0[n] - lr * g0[n] for n in w0}
    g1 = ce_grad(w1)
    w2 = {n: w1[n] - lr * (g1[n] + mu * (w1[n] - w0[n])) for n in w0}
    for name, p in model.named_parameters():
        assert torch.allclose(p.detach(), w2[name], atol=1e-6), name
    # and it differs from plain training by exactly that pull
    plain = _linear()
    train_local(
        plain, shard, LearningSpec(**{**_fields(spec), "proximal_mu": 0.0}), seed=0, round=1
    )
    assert not torch.allclose(plain.weight, model.weight)


def _fields(spec: LearningSpec) -> dict:  # type: ignore[type-arg]
    import msgspec

    return msgspec.structs.asdict(spec)


def test_train_local_trains_at_the_rate_it_is_given() -> None:
    gen = torch.Generator().manual_seed(2)
    shard = Shard(torch.randn(4, 3, generator=gen), torch.randint(0, 2, (4,), generator=gen))
    spec = LearningSpec(optimizer="sgd", learning_rate=0.5, batch_size=4, local_epochs=1)
    a, b = _linear(), _linear()
    w0 = a.weight.detach().clone()
    train_local(a, shard, spec, seed=0, round=1)
    train_local(b, shard, spec, seed=0, round=1, learning_rate=0.25)
    # one full-batch SGD step: the displacement scales with the rate
    assert torch.allclose(b.weight - w0, (a.weight - w0) / 2, atol=1e-7)
