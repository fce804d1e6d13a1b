"""The round committee: the quorum table, round seeds, the witness election, the train-set
tally and the decision on each trainer's result. Pure functions, no coordinator."""

from __future__ import annotations

import pytest

from console.coordinator.committee import (
    VoteTally,
    decide_results,
    elect_witnesses,
    quorum,
    round_seed,
    seeded_prefix,
    tally_votes,
)


@pytest.mark.parametrize(
    ("n", "q"), [(0, 0), (1, 1), (2, 2), (3, 2), (4, 2), (5, 3), (6, 4), (7, 4), (9, 6), (32, 21)]
)
def test_quorum_table(n: int, q: int) -> None:
    assert quorum(n) == q


def test_round_seed_is_deterministic_and_differs_per_round() -> None:
    assert round_seed(42, 1) == round_seed(42, 1)
    seeds = {round_seed(42, r) for r in range(1, 50)}
    assert len(seeds) == 49
    assert round_seed(42, 1) != round_seed(43, 1)
    assert all(0 <= s < 2**64 for s in seeds)


def test_witness_election_is_a_seeded_shuffle_of_sorted_ids() -> None:
    ids = [f"n{i:02d}" for i in range(20)]
    first = elect_witnesses(ids, 5, 4)
    assert first == elect_witnesses(list(reversed(ids)), 5, 4)  # input order is irrelevant
    assert len(first) == 4 and len(set(first)) == 4 and set(first) <= set(ids)
    assert elect_witnesses(ids, 5, 30) == seeded_prefix(ids, 5, 20, "witness")
    assert len(elect_witnesses(ids, 5, 30)) == 20
    assert elect_witnesses(ids, 5, 0) == ()
    assert len({elect_witnesses(ids, s, 4) for s in range(20)}) > 10  # the seed matters
    assert elect_witnesses(ids, 5, 4) == elect_witnesses(ids, 5, 6)[:4]  # a prefix


def test_tally_sums_weights_highest_first_ties_by_id() -> None:
    votes = {"a": [("x", 2), ("y", 1)], "b": [("y", 1), ("z", 2)], "c": [("w", 0)]}
    eligible = {"w", "x", "y", "z"}
    assert tally_votes(votes, eligible, 4, 1) == ("x", "y", "z", "w")
    assert tally_votes(votes, eligible, 2, 1) == ("x", "y")  # x=2, y=2, z=2: ties by id


def test_tally_ignores_ineligible_candidates() -> None:
    votes = {"a": [("gone", 100), ("x", 1)]}
    assert tally_votes(votes, ["x", "y"], 2, 1) == ("x",)


def test_tally_without_usable_votes_is_a_seeded_sample_of_eligible() -> None:
    eligible = [f"n{i}" for i in range(10)]
    sample = tally_votes({}, eligible, 3, 99)
    assert len(sample) == 3 and set(sample) <= set(eligible)
    assert sample == tally_votes({"a": [("gone", 5)]}, eligible, 3, 99)
    assert sample == tally_votes({}, list(reversed(eligible)), 3, 99)
    assert tally_votes({}, eligible, 0, 99) == ()
    assert set(tally_votes({}, eligible[:2], 5, 99)) == set(eligible[:2])


def test_decide_accepts_a_quorum_of_live_witnesses_matching_the_commit() -> None:
    att = {"w1": {"t1": "A", "t2": "B"}, "w2": {"t1": "A", "t2": "X"}, "w3": {"t1": "A"}}
    d = decide_results(["t1", "t2"], ["w1", "w2", "w3"], att, {"t1": "A"}, {"t1", "t2"})
    assert d.accepted == {"t1": "A"}
    assert "no quorum" in d.rejected["t2"]


def test_decide_rejects_quorum_hash_that_differs_from_the_commit() -> None:
    att = {"w1": {"t": "A"}, "w2": {"t": "A"}}
    d = decide_results(["t"], ["w1", "w2"], att, {"t": "B"}, {"t"})
    assert d.accepted == {} and "commit" in d.rejected["t"]


def test_decide_without_commit_needs_one_unambiguous_hash() -> None:
    one = decide_results(["t"], ["w1", "w2"], {"w1": {"t": "A"}, "w2": {"t": "A"}}, {}, {"t"})
    assert one.accepted == {"t": "A"}
    att = {"w1": {"t": "A"}, "w2": {"t": "A"}, "w3": {"t": "B"}, "w4": {"t": "B"}}
    two = decide_results(["t"], ["w1", "w2", "w3", "w4"], att, {}, {"t"})  # quorum(4) = 2
    assert two.accepted == {} and "disagree" in two.rejected["t"]


def test_decide_counts_only_live_witnesses_and_live_trainers() -> None:
    att = {"w1": {"t": "A"}, "w2": {"t": "A"}}
    # w3 dropped: the committee is w1, w2 (quorum 2), not 3 (quorum 2 of which w3 can't vote)
    assert decide_results(["t"], ["w1", "w2"], att, {}, {"t"}).accepted == {"t": "A"}
    assert decide_results(["t"], ["w1"], att, {}, {"t"}).accepted == {"t": "A"}
    dropped = decide_results(["t"], ["w1", "w2"], att, {}, set())
    assert dropped.rejected == {"t": "trainer dropped"}
    nobody = decide_results(["t"], [], att, {}, {"t"})
    assert "no live witness" in nobody.rejected["t"]


def test_the_running_vote_tally_ranks_like_tally_votes_after_a_voter_leaves() -> None:
    votes = {"a": (("x", 2), ("y", 1)), "b": (("y", 3), ("z", 0)), "c": (("x", 5),)}
    tally = VoteTally()
    for voter, candidates in votes.items():
        tally.add(voter, candidates)
    eligible = {"x", "y", "z"}
    assert "c" in tally and "d" not in tally
    assert tally.top(eligible, 3, 1) == tally_votes(votes, eligible, 3, 1) == ("x", "y", "z")
    tally.forget("c")
    del votes["c"]
    assert "c" not in tally
    assert tally.top(eligible, 2, 1) == tally_votes(votes, eligible, 2, 1) == ("y", "x")
    tally.forget("b")  # z is named by nobody now: the tally forgets it too
    assert tally.top({"z"}, 1, 1) == tally_votes({"a": votes["a"]}, {"z"}, 1, 1)
