"""The declared keys hold together: defaults obey their own rules, rules name real keys, and
what the config accepts is what the coordinator runs with."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.config import ConfigError, load_config
from console.config.load import BY_KEY, TABLES
from console.config.rules import Relation
from console.config.settings import SPEC_RULES
from console.coordinator import Coordinator
from transport.state import RunState


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_default_obeys_its_own_rules() -> None:
    defaults = {key: k.default for key, k in BY_KEY.items()}

    broken = {
        key: problem
        for key, k in BY_KEY.items()
        for rule in k.rules
        if k.default is not None  # an unset path is never checked
        and (
            problem := rule.check(k.default, defaults)
            if isinstance(rule, Relation)
            else rule(k.default)
        )
    }

    assert broken == {}


def test_every_rule_names_keys_that_exist() -> None:
    read = {o for k in BY_KEY.values() for r in k.rules if isinstance(r, Relation) for o in r.reads}
    spec_keys = {
        f"{section}.{name}" for section, kind in TABLES.items() for name in SPEC_RULES.get(kind, {})
    }

    assert read <= set(BY_KEY)
    assert set(SPEC_RULES) <= set(TABLES.values())
    assert spec_keys <= set(BY_KEY)


def test_witness_nodes_0_is_accepted_and_elects_every_live_client(tmp_path: Path) -> None:
    text = "[coordinator]\ninit_min_clients = 5\nwitness_nodes = 0\nwaiting_for_members_extra_time = 0\n"
    config = load_config(write(tmp_path, text))
    coordinator = Coordinator(
        config.coordinator,
        run_id=config.run_id,
        seed=config.seed,
        train_set_size=config.learning.train_set_size,
        now=0.0,
    )
    ids = [f"node-{i}" for i in range(5)]
    for cid in ids:
        assert coordinator.join(cid, config.run_id, 0.0, gossip_endpoint=f"tcp://{cid}").ok
    assert coordinator.tick(0.1).ok
    for cid in ids:
        assert coordinator.warmed_up(cid, 0.2, model_hash="init").ok

    current = coordinator.snapshot(0.2).current
    assert coordinator.state is RunState.ROUND_TRAIN and current is not None
    assert sorted(current.witnesses) == ids


def test_negative_witness_nodes_says_0_means_every_client(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "[coordinator]\nwitness_nodes = -1\n"))

    (issue,) = caught.value.issues
    assert (issue.key, issue.line, issue.value) == ("coordinator.witness_nodes", 2, "-1")
    assert "must be >= 0 (0: every live client witnesses)" in issue.message


def test_only_the_extra_member_wait_may_be_0_among_phase_times(tmp_path: Path) -> None:
    phases = ("warmup_time", "max_round_train_time", "round_witness_time", "cooldown_time")
    text = "[coordinator]\nwaiting_for_members_extra_time = 0\n" + "".join(
        f"{name} = 0\n" for name in phases
    )

    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))

    refused = {issue.key: issue.message for issue in caught.value.issues}
    assert refused == {f"coordinator.{name}": "must be > 0" for name in phases}
