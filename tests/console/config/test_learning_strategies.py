"""The server optimiser, FedProx and schedule keys of [learning]: defaults, ranges, choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.config import ConfigError, load_config


def _load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "data.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def _issue(tmp_path: Path, text: str) -> tuple[int | None, str]:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    issues = caught.value.issues
    assert len(issues) == 1, issues
    return issues[0].line, issues[0].message


def test_the_keys_reach_the_run_spec_nodes_receive(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        '[learning]\nserver_optimizer = "yogi"\nserver_learning_rate = 0.05\n'
        'proximal_mu = 0.01\nlr_schedule = "step"\nlr_step_rounds = 3\nlr_gamma = 0.1\n',
    )
    learning = config.run_spec().learning
    assert (learning.server_optimizer, learning.server_lr()) == ("yogi", 0.05)
    assert learning.proximal_mu == 0.01
    assert (learning.lr_schedule, learning.lr_step_rounds, learning.lr_gamma) == ("step", 3, 0.1)


def test_defaults_leave_learning_as_it_was(tmp_path: Path) -> None:
    learning = _load(tmp_path, "").learning
    assert learning.server_optimizer == "none" and learning.proximal_mu == 0.0
    assert learning.lr_schedule == "constant"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('server_optimizer = "fedadam"', '"none" | "avgm" | "adam" | "yogi" | "adagrad"'),
        ("server_learning_rate = -1.0", "must be >= 0 (0: the optimiser's default"),
        ("server_momentum = 1.0", "must be >= 0 and < 1"),
        ("server_beta1 = 1.5", "must be >= 0 and < 1"),
        ("server_beta2 = -0.1", "must be >= 0 and < 1"),
        ("server_tau = 0", "must be > 0"),
        ("proximal_mu = -0.01", "must be >= 0 (0: FedProx off)"),
        ('lr_schedule = "linear"', '"constant" | "cosine" | "step"'),
        ("lr_step_rounds = 0", "must be >= 1"),
        ("lr_gamma = 0", "must be > 0 and <= 1"),
        ("lr_min = 0.5", "must be <= learning.learning_rate"),
    ],
)
def test_bad_values_say_what_is_allowed_on_their_line(
    tmp_path: Path, line: str, expected: str
) -> None:
    lineno, message = _issue(tmp_path, f"[learning]\nlearning_rate = 0.1\n{line}\n")
    assert lineno == 3
    assert expected in message
