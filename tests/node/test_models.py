"""Building the run's model: built-ins, user factories, and identical seeded weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from node.models import ModelError, build_model
from transport.spec import ModelSpec

torch.set_num_threads(1)


def _states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_mlp_has_the_spec_layer_sizes_and_predicts_every_class() -> None:
    model = build_model(
        ModelSpec(name="mlp", hidden=(64, 32)), features=64, classes=10, image_shape=None, seed=0
    )
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 64), (64, 32), (32, 10)]
    assert model(torch.zeros(5, 64)).shape == (5, 10)


def test_same_seed_builds_bit_identical_weights_and_other_seeds_differ() -> None:
    spec = ModelSpec(name="mlp", hidden=(16,))
    a = build_model(spec, features=8, classes=3, image_shape=None, seed=42)
    b = build_model(spec, features=8, classes=3, image_shape=None, seed=42)
    c = build_model(spec, features=8, classes=3, image_shape=None, seed=43)
    assert _states_equal(a, b)
    assert not _states_equal(a, c)


def test_build_leaves_the_global_rng_untouched() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    build_model(ModelSpec(), features=64, classes=10, image_shape=None, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_cnn_runs_on_8x8_digits_shaped_rows() -> None:
    model = build_model(
        ModelSpec(name="cnn", channels=(8, 16)), features=64, classes=10, image_shape=(8, 8), seed=0
    )
    assert any(isinstance(m, nn.Conv2d) for m in model.modules())
    assert model(torch.rand(3, 64)).shape == (3, 10)


def test_cnn_on_flat_data_says_it_needs_images() -> None:
    with pytest.raises(ModelError, match="cnn.*image-shaped"):
        build_model(ModelSpec(name="cnn"), features=20, classes=3, image_shape=None, seed=0)


def test_cnn_image_shape_must_match_features() -> None:
    with pytest.raises(ModelError, match="8x8 does not match 60"):
        build_model(ModelSpec(name="cnn"), features=60, classes=3, image_shape=(8, 8), seed=0)


def test_unknown_model_name_lists_the_choices() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'resnet'.*mlp.*cnn.*package.module"):
        build_model(ModelSpec(name="resnet"), features=4, classes=2, image_shape=None, seed=0)


def test_bad_sizes_are_rejected() -> None:
    with pytest.raises(ModelError, match="classes"):
        build_model(ModelSpec(), features=4, classes=1, image_shape=None, seed=0)
    with pytest.raises(ModelError, match="features"):
        build_model(ModelSpec(), features=0, classes=2, image_shape=None, seed=0)


def test_user_factory_is_called_with_features_and_classes_and_seeded(user_module) -> None:
    name = user_module(
        """
        from torch import nn

        def factory(*, features, classes):
            return nn.Sequential(nn.Linear(features, 7), nn.Tanh(), nn.Linear(7, classes))
        """
    )
    spec = ModelSpec(name=f"{name}:factory")
    a = build_model(spec, features=5, classes=4, image_shape=None, seed=9)
    b = build_model(spec, features=5, classes=4, image_shape=None, seed=9)
    assert a(torch.zeros(2, 5)).shape == (2, 4)
    assert _states_equal(a, b)


@pytest.mark.parametrize(
    ("source", "attr", "match"),
    [
        ("def factory(**kw):\n    return 3\n", "factory", "must return a torch.nn.Module, got int"),
        ("def factory(**kw):\n    raise KeyError('boom')\n", "factory", "raised KeyError"),
        ("x = 1\n", "factory", "has no attribute 'factory'"),
        ("factory = 1\n", "factory", "not callable"),
        ("import not_a_real_module_xyz\n", "factory", "cannot import module"),
        (
            "import torch\nfrom torch import nn\n"
            "class M(nn.Module):\n"
            "    def __init__(self):\n"
            "        super().__init__()\n"
            "        self.register_buffer('mask', torch.ones(2, dtype=torch.bool))\n"
            "def factory(**kw):\n    return M()\n",
            "factory",
            "dtype bool",
        ),
    ],
)
def test_bad_user_factory_names_the_path_and_the_problem(
    user_module, source: str, attr: str, match: str
) -> None:
    name = user_module(source)
    with pytest.raises(ModelError, match=match) as info:
        build_model(
            ModelSpec(name=f"{name}:{attr}"), features=3, classes=2, image_shape=None, seed=0
        )
    assert f"{name}:{attr}" in str(info.value)


def test_malformed_import_path_is_rejected() -> None:
    with pytest.raises(ModelError, match="package.module:factory"):
        build_model(ModelSpec(name="a.b:c:d"), features=3, classes=2, image_shape=None, seed=0)
