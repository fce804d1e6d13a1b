"""`fl-console CONFIG --check`: a summary and exit 0 for a good file, every error and exit 2 for a bad one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from console.cli import main
from tests.factories import REPO

FIXTURES = REPO / "tests" / "fixtures"


def test_check_on_the_default_config_prints_a_summary_and_returns_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main([str(REPO / "data.toml"), "--check"])

    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    assert "is valid" in out
    assert "digits-demo" in out
    assert "tcp://127.0.0.1:5555" in out and "tcp://127.0.0.1:5556" in out
    assert "loopback only" in out
    assert "starts with 4, continues while >= 2" in out
    assert "20 in epochs of up to 10" in out
    assert "mlp, hidden [64, 32]" in out
    assert "digits, dirichlet (alpha 0.5)" in out
    assert "aggregator fedavg" in out
    assert "spawns 4 local fl-node processes" in out


def test_check_says_what_witness_nodes_0_means(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "data.toml"
    text = (REPO / "data.toml").read_text()
    config.write_text(text.replace("witness_nodes = 2", "witness_nodes = 0", 1))

    assert main([str(config), "--check"]) == 0
    assert "every live client (up to 32) witnesses per round" in capsys.readouterr().out


def test_check_on_a_bad_file_names_every_error_and_returns_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = FIXTURES / "three_mistakes.toml"

    code = main([str(path), "--check"])

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert f"{path}:10: coordinator.min_clients = 5: must be <=" in err
    assert f'{path}:15: learning.learning_rate = "fast": must be a number' in err
    assert f"{path}:19: model.hiden = [64, 32]: unknown key" in err
    assert "3 errors" in err


def test_check_on_a_missing_file_says_so_and_returns_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([str(tmp_path / "missing.toml"), "--check"])

    err = capsys.readouterr().err
    assert code == 2
    assert "missing.toml: no such file" in err


def test_check_on_a_syntax_error_names_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main([str(FIXTURES / "syntax_error.toml"), "--check"])

    assert code == 2
    assert "syntax_error.toml:5: invalid TOML" in capsys.readouterr().err


def test_replay_of_a_missing_file_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--replay", str(REPO / "no-such-events.jsonl")])

    assert code == 2
    assert "no such file" in capsys.readouterr().err


def test_without_a_config_or_replay_says_what_to_give(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "give a config file" in capsys.readouterr().err


def test_negative_spawn_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(REPO / "data.toml"), "--headless", "--spawn", "-1"]) == 2
    assert "--spawn must be >= 0" in capsys.readouterr().err


def test_unknown_argument_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(REPO / "data.toml"), "--frobnicate"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_module_runs_as_a_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "console.cli", "data.toml", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert "digits-demo" in done.stdout
