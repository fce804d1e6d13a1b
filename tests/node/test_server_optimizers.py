"""Server optimisers (node/server_optimizers.py) against a NumPy reference of Reddi et al.'s
formulas, over several rounds, on a model with BatchNorm buffers; every aggregator; state
round trips through the wire payloads (what a checkpoint carries)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from node import weights
from node.aggregators import Update, aggregate
from node.compression import trainable_names
from node.server_optimizers import (
    PREFIX,
    ServerOptimizer,
    global_hash,
    global_state,
    load_global,
    make_server_optimizer,
)
from transport.spec import AGGREGATORS, LearningSpec

ROUNDS = 6


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))


def _deltas(model: nn.Module, rounds: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Aggregates Δ as a round would produce them: floats for every float entry, an int for
    num_batches_tracked (the aggregate takes its value, as for any integer entry)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for r in range(rounds):
        delta = {}
        for k, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                delta[k] = torch.randn(t.shape, generator=gen) * 0.1
            else:
                delta[k] = torch.full_like(t, r + 3)
        out.append(delta)
    return out


def _reference(
    name: str, spec: LearningSpec, base: np.ndarray, deltas: list[np.ndarray]
) -> np.ndarray:
    """The issue's formulas in float32 NumPy, from m = 0, v = tau^2 (avgm: v = 0)."""
    f = np.float32
    eta, tau = f(spec.server_lr()), f(spec.server_tau)
    b1, b2 = f(spec.server_beta1), f(spec.server_beta2)
    x = base.astype(np.float32).copy()
    m = np.zeros_like(x)
    v = np.zeros_like(x) if name == "avgm" else np.full_like(x, f(spec.server_tau) ** 2)
    for d in deltas:
        d = d.astype(np.float32)
        if name == "avgm":
            v = f(spec.server_momentum) * v + d
            x = x + eta * v
            continue
        m = b1 * m + (f(1) - b1) * d
        if name == "adagrad":
            v = v + d * d
        elif name == "adam":
            v = b2 * v + (f(1) - b2) * d * d
        else:
            v = v - (f(1) - b2) * d * d * np.sign(v - d * d)
        x = x + eta * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("name", ["avgm", "adam", "yogi", "adagrad"])
def test_each_server_optimizer_matches_the_numpy_reference_over_several_rounds(name: str) -> None:
    spec = LearningSpec(server_optimizer=name, server_beta2=0.9)
    model = _model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = make_server_optimizer(spec, model)
    assert opt is not None
    deltas = _deltas(model, ROUNDS)
    state = start
    for d in deltas:
        state = opt.step(state, d)
    trainable = trainable_names(model)
    assert trainable == {"0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"}
    for key, t in state.items():
        if key in trainable:
            want = _reference(name, spec, start[key].numpy(), [d[key].numpy() for d in deltas])
            np.testing.assert_allclose(t.numpy(), want, rtol=2e-6, atol=1e-7)
            # the optimiser moved it: not a plain sum of the deltas
            plain = start[key] + sum(d[key] for d in deltas)
            assert not torch.allclose(t, plain)
        elif t.dtype.is_floating_point:  # BatchNorm running stats: averaged plainly
            plain = start[key].clone()
            for d in deltas:
                plain = plain + d[key]
            assert torch.equal(t, plain), key
        else:  # num_batches_tracked: the aggregate's value
            assert torch.equal(t, deltas[-1][key]), key


def test_server_learning_rate_zero_means_the_optimizers_default() -> None:
    assert LearningSpec(server_optimizer="avgm").server_lr() == 1.0
    for name in ("adam", "yogi", "adagrad"):
        assert LearningSpec(server_optimizer=name).server_lr() == 0.01
    assert LearningSpec(server_optimizer="adam", server_learning_rate=0.3).server_lr() == 0.3


def test_none_keeps_the_global_state_the_model_alone() -> None:
    model = _model()
    assert make_server_optimizer(LearningSpec(), model) is None
    assert global_hash(model, None) == weights.model_hash_of(model)


@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_the_optimizer_steps_with_whatever_each_aggregator_returns(aggregator: str) -> None:
    spec = LearningSpec(server_optimizer="adam", aggregator=aggregator)
    model = _model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    updates = [
        Update(f"n{i}", 10 + i, d) for i, d in enumerate(_deltas(model, 5, seed=7))
    ]  # five trainers' updates (krum needs n > 2f + 2)
    delta = aggregate(aggregator, updates, trim_fraction=0.2, byzantine_f=1)
    opt = make_server_optimizer(spec, model)
    assert opt is not None
    state = opt.step(base, delta)
    for key in trainable_names(model):
        want = _reference("adam", spec, base[key].numpy(), [delta[key].numpy()])
        np.testing.assert_allclose(state[key].numpy(), want, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["avgm", "adam", "yogi", "adagrad"])
def test_a_node_that_loads_the_checkpointed_state_continues_bit_for_bit(name: str) -> None:
    """Two nodes step together; a third joins after round 3 from the uploaded global state
    (model + m, v as payloads, as a checkpoint carries them) and ends on the same hash."""
    spec = LearningSpec(server_optimizer=name)
    deltas = _deltas(_model(), ROUNDS)
    nodes = []
    for _ in range(2):
        model = _model()
        nodes.append((model, make_server_optimizer(spec, model)))
    joiner = _model(seed=99)  # different weights: the checkpoint must replace them all
    joiner_opt = make_server_optimizer(spec, joiner)
    for r, d in enumerate(deltas, start=1):
        for model, opt in nodes:
            assert opt is not None
            weights.load_into(model, opt.step(model.state_dict(), d))
        if r == 3:
            model, opt = nodes[0]
            payloads = weights.to_payloads(
                {k: v.clone() for k, v in global_state(model.state_dict(), opt).items()}
            )
            assert any(p.name.startswith(PREFIX + "v.") for p in payloads)
            load_global(joiner, joiner_opt, payloads)
            assert global_hash(joiner, joiner_opt) == global_hash(model, opt)
        elif r > 3:
            assert joiner_opt is not None
            weights.load_into(joiner, joiner_opt.step(joiner.state_dict(), d))
    hashes = {global_hash(m, o) for m, o in [*nodes, (joiner, joiner_opt)]}
    assert len(hashes) == 1
    # the hash covers the optimiser's state, not only the weights
    model, opt = nodes[0]
    assert global_hash(model, opt) != weights.model_hash_of(model)


def test_a_state_of_another_optimizer_is_refused_with_what_is_missing() -> None:
    model = _model()
    adam = make_server_optimizer(LearningSpec(server_optimizer="adam"), model)
    avgm = make_server_optimizer(LearningSpec(server_optimizer="avgm"), _model())
    payloads = weights.to_payloads(global_state(model.state_dict(), adam))
    with pytest.raises(weights.WeightsError, match="unexpected"):
        load_global(_model(), avgm, payloads)
    with pytest.raises(weights.WeightsError, match="has no server optimizer state"):
        load_global(_model(), avgm, weights.to_payloads(model.state_dict()))
    with pytest.raises(weights.WeightsError, match="carries a server optimizer's state"):
        load_global(_model(), None, payloads)
    with pytest.raises(ValueError, match="unknown server optimizer"):
        ServerOptimizer(LearningSpec(server_optimizer="sgd"), model.state_dict(), ["0.weight"])
