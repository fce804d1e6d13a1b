"""Local training, evaluation, and a 4-node FedAvg run on digits in one process."""

from __future__ import annotations

import logging
import time

import pytest
import torch

from node.aggregators import Update, aggregate
from node.data import Dataset, Shard, load_dataset, shard
from node.models import build_model
from node.training import TrainingError, evaluate, make_optimizer, train_local
from node.weights import load_into, model_hash_of
from transport.spec import DataSpec, LearningSpec, ModelSpec

torch.set_num_threads(1)
logger = logging.getLogger(__name__)

SEED = 0
ADAM = LearningSpec(optimizer="adam", learning_rate=0.01, batch_size=32, local_epochs=1)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataSpec(source="digits"), seed=SEED, base_dir=None)


def _mlp(seed: int = SEED) -> torch.nn.Module:
    spec = ModelSpec(name="mlp", hidden=(64, 32))
    return build_model(spec, features=64, classes=10, image_shape=(8, 8), seed=seed)


def test_make_optimizer_builds_sgd_or_adam_with_the_learning_rate() -> None:
    model = _mlp()
    sgd = make_optimizer(model, LearningSpec(optimizer="sgd", learning_rate=0.05))
    adam = make_optimizer(model, LearningSpec(optimizer="adam", learning_rate=0.01))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["lr"] == 0.05
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["lr"] == 0.01
    with pytest.raises(TrainingError, match=r"unknown optimizer 'lbfgs'.*sgd.*adam"):
        make_optimizer(model, LearningSpec(optimizer="lbfgs"))
    with pytest.raises(TrainingError, match="learning_rate must be > 0"):
        make_optimizer(model, LearningSpec(learning_rate=0.0))


def test_local_training_lowers_the_loss_and_reports_the_shard_size(digits: Dataset) -> None:
    model = _mlp()
    local = Shard(digits.x_train[:400], digits.y_train[:400])
    before = evaluate(model, local.x, local.y).loss
    result = train_local(model, local, ADAM, seed=SEED, round=0)
    assert result.samples == 400
    assert result.train_time > 0
    assert evaluate(model, local.x, local.y).loss < 0.8 * before
    assert result.train_loss < before


def test_a_round_is_reproducible_and_leaves_the_global_rng_alone(digits: Dataset) -> None:
    local = Shard(digits.x_train[:200], digits.y_train[:200])
    a, b, c = _mlp(), _mlp(), _mlp()
    torch.manual_seed(99)
    rng = torch.random.get_rng_state()
    train_local(a, local, ADAM, seed=SEED, round=3)
    assert torch.equal(torch.random.get_rng_state(), rng)
    train_local(b, local, ADAM, seed=SEED, round=3)
    train_local(c, local, ADAM, seed=SEED, round=4)
    assert model_hash_of(a) == model_hash_of(b)
    assert model_hash_of(a) != model_hash_of(c)


def test_empty_shard_and_bad_spec_are_explained(digits: Dataset) -> None:
    empty = Shard(digits.x_train[:0], digits.y_train[:0])
    with pytest.raises(TrainingError, match="shard is empty"):
        train_local(_mlp(), empty, ADAM, seed=0, round=0)
    local = Shard(digits.x_train[:10], digits.y_train[:10])
    with pytest.raises(TrainingError, match="batch_size must be >= 1"):
        train_local(_mlp(), local, LearningSpec(batch_size=0), seed=0, round=0)


def test_diverging_training_is_reported(digits: Dataset) -> None:
    local = Shard(digits.x_train[:64] * 1e30, digits.y_train[:64])
    with pytest.raises(TrainingError, match="diverged"):
        train_local(_mlp(), local, LearningSpec(learning_rate=1e10), seed=0, round=2)


def test_evaluate_matches_a_direct_computation_and_keeps_the_mode(digits: Dataset) -> None:
    model = _mlp()
    model.train()
    result = evaluate(model, digits.x_test, digits.y_test, batch_size=100)
    assert model.training
    with torch.no_grad():
        logits = model(digits.x_test)
    expected_acc = float((logits.argmax(1) == digits.y_test).double().mean())
    expected_loss = float(torch.nn.functional.cross_entropy(logits, digits.y_test))
    assert result.samples == len(digits.y_test)
    assert result.accuracy == pytest.approx(expected_acc)
    assert result.loss == pytest.approx(expected_loss, rel=1e-5)


def test_four_node_fedavg_on_non_iid_digits_reaches_90_percent(digits: Dataset) -> None:
    """4 nodes, Dirichlet(0.5), MLP 64-64-32-10, Adam lr 0.01, 1 local epoch, batch 32.

    Every node starts from the same seeded build and aggregates the same four updates, as the
    real workflow does; accuracy is on the held-out test split.
    """
    nodes = 4
    data_spec = DataSpec(source="digits", partition="dirichlet", alpha=0.5)
    shards = [shard(digits, k, nodes, data_spec, SEED) for k in range(nodes)]
    models = [_mlp() for _ in range(nodes)]
    assert len({model_hash_of(m) for m in models}) == 1
    global_state = {k: v.clone() for k, v in models[0].state_dict().items()}
    accuracies, train_times = [], []
    started = time.perf_counter()
    for rnd in range(20):
        updates = []
        for k, model in enumerate(models):
            load_into(model, global_state)
            result = train_local(model, shards[k], ADAM, seed=SEED, round=rnd)
            train_times.append(result.train_time)
            state = {name: t.clone() for name, t in model.state_dict().items()}
            updates.append(Update(f"node-{k}", result.samples, state))
        global_state = aggregate("fedavg", updates, trim_fraction=0.2, byzantine_f=1)
        load_into(models[0], global_state)
        accuracies.append(evaluate(models[0], digits.x_test, digits.y_test).accuracy)
    elapsed = time.perf_counter() - started
    logger.info(
        "fedavg digits: accuracy by round %s; %.3fs local training per node-round; %.2fs total",
        [round(a, 3) for a in accuracies],
        sum(train_times) / len(train_times),
        elapsed,
    )
    assert accuracies[-1] >= 0.90, accuracies
    assert accuracies[-1] > accuracies[0] + 0.3
