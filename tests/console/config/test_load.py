"""data.toml -> Config: the default run, and every kind of mistake reported with key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.config import (
    CheckpointConfig,
    Config,
    ConfigError,
    ConfigIssue,
    CoordinatorConfig,
    LocalConfig,
    SecurityConfig,
    ServerConfig,
    format_issues,
    load_config,
)
from console.config.lines import key_lines
from console.config.load import KEYS
from tests.factories import REPO
from transport.spec import DataSpec, LearningSpec, ModelSpec

FIXTURES = REPO / "tests" / "fixtures"


def write(tmp_path: Path, text: str, name: str = "data.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def issues_of(path: Path) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.issues


def only_issue(tmp_path: Path, text: str) -> ConfigIssue:
    issues = issues_of(write(tmp_path, text))
    assert len(issues) == 1, format_issues(issues)
    return issues[0]


# --- the default run ----------------------------------------------------------------------


def test_repo_data_toml_loads_as_the_documented_demo_run() -> None:
    config = load_config(REPO / "data.toml")

    assert config == Config(
        run_id="digits-demo",
        seed=42,
        server=ServerConfig(host="127.0.0.1", state_port=5555, control_port=5556, data_port=5557),
        coordinator=CoordinatorConfig(
            init_min_clients=4,
            min_clients=2,
            witness_nodes=2,
            waiting_for_members_extra_time=0.2,
            warmup_time=30.0,
            max_round_train_time=20.0,
            round_witness_time=2.0,
            cooldown_time=2.0,
            rounds_per_epoch=10,
            total_rounds=20,
            heartbeat_interval=0.5,
            health_timeout=3.0,
        ),
        learning=LearningSpec(
            train_set_size=4,
            local_epochs=1,
            batch_size=32,
            optimizer="adam",
            learning_rate=0.01,
            aggregator="fedavg",
            trim_fraction=0.2,
            byzantine_f=1,
            torch_threads=1,
        ),
        model=ModelSpec(name="mlp", hidden=(64, 32), channels=(16, 32)),
        data=DataSpec(
            source="digits",
            partition="dirichlet",
            alpha=0.5,
            test_fraction=0.2,
            samples=60000,
            features=784,
            classes=10,
            serve=False,
        ),
        local=LocalConfig(spawn=4),
        checkpoint=CheckpointConfig(dir=REPO / "checkpoints"),
        security=SecurityConfig(
            curve=False,
            server_key=REPO / "keys" / "console.key_secret",
            authorized_keys=REPO / "keys" / "authorized",
            allowed=(),
        ),
        source=REPO / "data.toml",
    )


def test_repo_data_toml_sets_every_key_with_a_comment_above_it() -> None:
    text = (REPO / "data.toml").read_text(encoding="utf-8")
    lines = text.splitlines()
    every_key = {f.key for fields in KEYS.values() for f in fields.values()}
    found = key_lines(text)
    assert every_key <= set(found)

    uncommented = [key for key in every_key if not lines[found[key] - 2].startswith("#")]

    assert uncommented == []


def test_repo_data_toml_says_it_binds_loopback_only() -> None:
    assert "loopback only" in (REPO / "data.toml").read_text(encoding="utf-8")


def test_empty_file_takes_every_default_from_settings(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))

    assert config == Config(
        checkpoint=CheckpointConfig(dir=tmp_path.resolve() / "checkpoints"),
        source=(tmp_path / "data.toml").resolve(),
    )


def test_contract_file_with_every_key_loads(tmp_path: Path) -> None:
    text = (REPO / "data.toml").read_text(encoding="utf-8")

    config = load_config(write(tmp_path, text.replace('"adam"', '"sgd"')))

    assert config.learning.optimizer == "sgd"
    assert config.model.hidden == (64, 32)


# --- several mistakes at once ------------------------------------------------------------


def test_three_mistakes_are_all_reported_on_their_own_lines() -> None:
    issues = issues_of(FIXTURES / "three_mistakes.toml")

    assert [(i.key, i.line, i.value) for i in issues] == [
        ("coordinator.min_clients", 10, "5"),
        ("learning.learning_rate", 15, '"fast"'),
        ("model.hiden", 19, "[64, 32]"),
    ]
    assert "must be <= coordinator.init_min_clients (4)" in issues[0].message
    assert "must be a number, got a string" in issues[1].message
    assert "valid keys in [model]: name, hidden, channels" in issues[2].message
    assert "did you mean hidden?" in issues[2].message


def test_format_issues_writes_file_line_key_value_and_what_is_allowed() -> None:
    issue = ConfigIssue(
        "coordinator.min_clients", 14, "5", "must be <= coordinator.init_min_clients (4)"
    )

    text = format_issues([issue], "data.toml")

    assert (
        text
        == "data.toml:14: coordinator.min_clients = 5: must be <= coordinator.init_min_clients (4)"
    )


def test_config_error_message_is_the_formatted_issues() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(FIXTURES / "three_mistakes.toml")

    assert (
        str(caught.value)
        .splitlines()[0]
        .endswith(
            "three_mistakes.toml:10: coordinator.min_clients = 5: "
            "must be <= coordinator.init_min_clients (4)"
        )
    )


# --- the file itself ------------------------------------------------------------------------


def test_syntax_error_is_reported_with_its_line() -> None:
    issues = issues_of(FIXTURES / "syntax_error.toml")

    assert len(issues) == 1
    assert issues[0].line == 5
    assert issues[0].message.startswith("invalid TOML")


def test_missing_file_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    issues = issues_of(tmp_path / "nope.toml")

    assert len(issues) == 1
    assert "no such file" in issues[0].message
    assert str(tmp_path / "nope.toml") in issues[0].message


def test_duplicate_key_is_a_syntax_error_with_its_line(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, "[server]\nstate_port = 1\nstate_port = 2\n")

    assert issue.line == 3
    assert "already exists" in issue.message


# --- unknown keys and tables ------------------------------------------------------------------


def test_unknown_key_in_table_lists_the_valid_keys(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, '[server]\nhost = "127.0.0.1"\nhots = "x"\n')

    assert (issue.key, issue.line, issue.value) == ("server.hots", 3, '"x"')
    assert "host, state_port, control_port, data_port" in issue.message


def test_unknown_table_lists_the_valid_tables(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, 'run_id = "a"\n\n[coordinater]\nmin_clients = 2\n')

    assert (issue.key, issue.line) == ("coordinater", 3)
    assert "unknown table [coordinater]" in issue.message
    assert "[coordinator]" in issue.message


def test_unknown_top_level_key_lists_the_valid_keys(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, "seed = 1\nrounds = 3\n")

    assert (issue.key, issue.line) == ("rounds", 2)
    assert "run_id, seed" in issue.message


def test_table_given_as_a_value_is_an_error(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, "server = 5\n")

    assert (issue.key, issue.line) == ("server", 1)
    assert "must be a table [server]" in issue.message


# --- types -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "line", "expected"),
    [
        ("[server]", 'state_port = "5555"', "must be an integer, got a string"),
        ("[coordinator]", "min_clients = true", "must be an integer, got a boolean"),
        ("[coordinator]", "total_rounds = 2.5", "must be an integer, got a float"),
        ("[coordinator]", 'warmup_time = "30s"', "must be a number, got a string"),
        ("[coordinator]", "warmup_time = inf", "must be a finite number"),
        ("[data]", 'serve = "yes"', "must be true or false, got a string"),
        ("[data]", "source = 3", "must be a string, got an integer"),
        ("[model]", 'hidden = [64, "32"]', "must be an array of integers"),
        ("[model]", "hidden = 64", "must be an array of integers, got an integer"),
        ("[checkpoint]", "dir = false", "must be a string, got a boolean"),
    ],
)
def test_wrong_type_is_reported_with_what_is_expected(
    tmp_path: Path, table: str, line: str, expected: str
) -> None:
    issue = only_issue(tmp_path, f"seed = 1\n{table}\n{line}\n")

    assert issue.line == 3
    assert issue.key == f"{table.strip('[]')}.{line.split(' =')[0]}"
    assert expected in issue.message


def test_integer_is_accepted_where_a_float_is_expected(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[coordinator]\nwarmup_time = 30\n"))

    assert config.coordinator.warmup_time == 30.0
    assert isinstance(config.coordinator.warmup_time, float)


# --- ranges and choices ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "line", "expected"),
    [
        ("[server]", "state_port = 0", "must be between 1 and 65535"),
        ("[server]", "control_port = 65536", "must be between 1 and 65535"),
        ("[coordinator]", "init_min_clients = 0", "must be >= 1"),
        ("[coordinator]", "witness_nodes = -1", "must be >= 0"),
        ("[coordinator]", "rounds_per_epoch = 0", "must be >= 1"),
        ("[coordinator]", "total_rounds = 0", "must be >= 1"),
        ("[coordinator]", "warmup_time = 0", "must be > 0"),
        ("[coordinator]", "max_round_train_time = -1.0", "must be > 0"),
        ("[coordinator]", "round_witness_time = 0", "must be > 0"),
        ("[coordinator]", "cooldown_time = 0.0", "must be > 0"),
        ("[coordinator]", "waiting_for_members_extra_time = -0.5", "must be >= 0"),
        ("[learning]", "learning_rate = 0.0", "must be > 0"),
        ("[learning]", "local_epochs = 0", "must be >= 1"),
        ("[learning]", "batch_size = 0", "must be >= 1"),
        ("[learning]", "train_set_size = 0", "must be >= 1"),
        ("[learning]", "trim_fraction = 0.5", "must be >= 0 and < 0.5"),
        ("[learning]", 'optimizer = "adagrad"', 'must be one of "sgd" | "adam"'),
        ("[learning]", 'aggregator = "mean"', '"fedavg" | "fedmedian" | "trimmed_mean" | "krum"'),
        ("[model]", 'name = "resnet"', 'must be "mlp", "cnn" or an import path'),
        ("[model]", "hidden = [64, 0]", "every entry must be >= 1"),
        ("[data]", 'partition = "shards"', 'must be one of "iid" | "dirichlet"'),
        ("[data]", "alpha = 0", "must be > 0"),
        ("[data]", "test_fraction = 0", "must be > 0 and < 1"),
        ("[data]", "test_fraction = 1", "must be > 0 and < 1"),
        ("[data]", 'source = "mnist"', '"digits", "synthetic", an import path'),
        ("[local]", "spawn = -1", "must be >= 0"),
    ],
)
def test_out_of_range_value_says_what_is_allowed(
    tmp_path: Path, table: str, line: str, expected: str
) -> None:
    issue = only_issue(tmp_path, f"{table}\n{line}\n")

    assert issue.line == 2
    assert issue.value == line.split(" = ")[1]
    assert expected in issue.message


def test_import_paths_are_accepted_for_model_and_data(tmp_path: Path) -> None:
    text = '[model]\nname = "mypkg.nets:build"\n[data]\nsource = "mypkg.data:load"\n'

    config = load_config(write(tmp_path, text))

    assert (config.model.name, config.data.source) == ("mypkg.nets:build", "mypkg.data:load")


# --- values that contradict each other -----------------------------------------------------------


def test_witnesses_cannot_outnumber_min_clients(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, "[coordinator]\nmin_clients = 2\nwitness_nodes = 3\n")

    assert (issue.key, issue.line, issue.value) == ("coordinator.witness_nodes", 3, "3")
    assert "must be <= coordinator.min_clients (2)" in issue.message


def test_default_that_breaks_a_rule_points_at_the_key_that_was_set(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, "[coordinator]\nmin_clients = 1\n")

    assert (issue.key, issue.line, issue.value) == ("coordinator.witness_nodes", 2, "2")
    assert "is not set; 2 is its default" in issue.message


def test_health_timeout_must_exceed_heartbeat_interval(tmp_path: Path) -> None:
    text = "[coordinator]\nheartbeat_interval = 1.0\nhealth_timeout = 1.0\n"

    issue = only_issue(tmp_path, text)

    assert (issue.key, issue.line) == ("coordinator.health_timeout", 3)
    assert "must be > coordinator.heartbeat_interval (1)" in issue.message


def test_port_used_twice_is_reported_on_the_second_one(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, "[server]\nstate_port = 6000\ndata_port = 6000\n")

    assert (issue.key, issue.line) == ("server.data_port", 3)
    assert "must differ from server.state_port (6000)" in issue.message


def test_krum_without_enough_trainers_is_an_error_on_the_aggregator(tmp_path: Path) -> None:
    text = '[learning]\naggregator = "krum"\ntrain_set_size = 4\nbyzantine_f = 1\n'

    issue = only_issue(tmp_path, text)

    assert (issue.key, issue.line, issue.value) == ("learning.aggregator", 2, '"krum"')
    assert "at least 5" in issue.message


def test_krum_with_enough_trainers_loads(tmp_path: Path) -> None:
    text = '[learning]\naggregator = "krum"\ntrain_set_size = 5\nbyzantine_f = 1\n'

    assert load_config(write(tmp_path, text)).learning.aggregator == "krum"


def test_spawning_nodes_with_a_public_host_is_accepted(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[server]\nhost = "0.0.0.0"\n[local]\nspawn = 2\n'))

    assert (config.server.host, config.local.spawn) == ("0.0.0.0", 2)


# --- paths -------------------------------------------------------------------------------------


def test_relative_checkpoint_dir_resolves_against_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[checkpoint]\ndir = "runs/ckpt"\n')
    monkeypatch.chdir(REPO)

    config = load_config(path)

    assert config.checkpoint.dir == tmp_path.resolve() / "runs" / "ckpt"
    assert config.source == path.resolve()


def test_absolute_checkpoint_dir_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"

    config = load_config(write(tmp_path, f'[checkpoint]\ndir = "{target}"\n'))

    assert config.checkpoint.dir == target


def test_data_file_resolves_against_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "train.safetensors").write_bytes(b"")
    path = write(tmp_path, '[data]\nsource = "shards/train.safetensors"\n')
    monkeypatch.chdir(REPO)

    config = load_config(path)

    assert config.data.source == str(tmp_path.resolve() / "shards" / "train.safetensors")


def test_missing_data_file_is_an_error(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, '[data]\nsource = "shards/none.safetensors"\n')

    assert (issue.key, issue.line) == ("data.source", 2)
    assert "no such file" in issue.message


# --- finding lines --------------------------------------------------------------------------------


def test_key_lines_follow_tables_dotted_keys_and_multiline_values() -> None:
    text = "\n".join(
        [
            'run_id = "x"',  # 1
            "[model]",  # 2
            "hidden = [",  # 3
            "  64, # name = 1",  # 4
            "]",  # 5
            'desc = """',  # 6
            "name = inside a string",  # 7
            '"""',  # 8
            'name = "mlp"',  # 9
            "[ data ]",  # 10
            'learning.optimizer = "sgd"',  # 11
            '"quoted" = 1',  # 12
        ]
    )

    lines = key_lines(text)

    assert lines["run_id"] == 1
    assert lines["model"] == 2
    assert lines["model.hidden"] == 3
    assert lines["model.name"] == 9
    assert lines["data"] == 10
    assert lines["data.learning.optimizer"] == 11
    assert lines["data.quoted"] == 12


def test_key_in_an_inline_table_is_reported_on_its_line(tmp_path: Path) -> None:
    issue = only_issue(tmp_path, 'seed = 1\nmodel = { name = "mlp", hidden = [0] }\n')

    assert (issue.key, issue.line) == ("model.hidden", 2)
