"""[privacy] and [learning] device: read, checked with line and what is allowed, sent to nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.config import ConfigError, load_config
from transport.spec import PrivacySpec, RunSpec


def _issues(tmp_path: Path, text: str) -> list:
    path = tmp_path / "data.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.issues


def test_privacy_section_reaches_nodes_in_the_run_spec(tmp_path: Path) -> None:
    path = tmp_path / "data.toml"
    path.write_text(
        "[privacy]\ndp = true\nnoise_multiplier = 0.7\nmax_grad_norm = 2\n"
        'target_epsilon = 3.5\n[learning]\ndevice = "cuda:1"\n',
        encoding="utf-8",
    )
    config = load_config(path)

    spec = RunSpec.from_dict(config.run_spec().to_dict())  # as the join reply carries it
    assert spec.privacy == PrivacySpec(
        dp=True, noise_multiplier=0.7, max_grad_norm=2.0, delta=1e-5, target_epsilon=3.5
    )
    assert spec.learning.device == "cuda:1"


def test_privacy_defaults_are_off_with_delta_1e_5_and_no_target() -> None:
    spec = PrivacySpec()
    assert (spec.dp, spec.delta, spec.target_epsilon) == (False, 1e-5, 0.0)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("noise_multiplier = 0", "must be > 0"),
        ("max_grad_norm = -1.0", "must be > 0"),
        ("delta = 1", "must be > 0 and < 1"),
        ("delta = 0", "must be > 0 and < 1"),
        ("target_epsilon = -2", "must be >= 0 (0: no limit)"),
    ],
)
def test_bad_privacy_value_says_line_and_what_is_allowed(
    tmp_path: Path, line: str, expected: str
) -> None:
    issues = _issues(tmp_path, f"[privacy]\n{line}\n")
    assert [(i.key, i.line) for i in issues] == [(f"privacy.{line.split(' = ')[0]}", 2)]
    assert expected in issues[0].message


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", "cuda:-1"])
def test_unknown_device_lists_the_allowed_ones(tmp_path: Path, device: str) -> None:
    issues = _issues(tmp_path, f'[learning]\ndevice = "{device}"\n')
    assert [(i.key, i.line) for i in issues] == [("learning.device", 2)]
    assert '"auto", "cpu", "cuda", "cuda:N", "mps"' in issues[0].message


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_every_documented_device_is_accepted(tmp_path: Path, device: str) -> None:
    path = tmp_path / "data.toml"
    path.write_text(f'[learning]\ndevice = "{device}"\n', encoding="utf-8")
    assert load_config(path).learning.device == device


def test_misspelt_privacy_key_suggests_the_right_one(tmp_path: Path) -> None:
    issues = _issues(tmp_path, "[privacy]\nnoise_multipler = 1.0\n")
    assert issues[0].line == 2
    assert "noise_multiplier" in issues[0].message


def test_check_says_which_device_and_privacy_a_file_asks_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from console.cli import main

    path = tmp_path / "data.toml"
    path.write_text(
        '[learning]\ndevice = "cuda:1"\n[privacy]\ndp = true\nnoise_multiplier = 0.5\n'
        "target_epsilon = 8\n",
        encoding="utf-8",
    )
    assert main([str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "device       cuda:1 (fl-node --device overrides it)" in out
    assert "privacy      DP-SGD: noise multiplier 0.5, max grad norm 1" in out
    assert "epsilon at delta 1e-05, target epsilon 8" in out
