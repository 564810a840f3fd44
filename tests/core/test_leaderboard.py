"""Leaderboard ratings: Bradley-Terry against an independent fit, ties, the prior, intervals."""

from __future__ import annotations

import math
import random

import pytest

from training.core.leaderboard import (
    SCALE,
    Row,
    bootstrap_intervals,
    bradley_terry,
    elo,
    leaderboard,
)

# A beats B 3 of 4, B beats C 3 of 4 (and they tie once), A beats C 2 of 3.
HAND = (
    [("A", "B", "a")] * 3
    + [("A", "B", "b")]
    + [("B", "C", "a")] * 3
    + [("B", "C", "b"), ("C", "B", "tie")]
    + [("A", "C", "a"), ("C", "A", "b"), ("C", "A", "a")]
)


def log_likelihood(x: dict[str, float], votes: list[tuple[str, str, str]], prior: float) -> float:
    """Bradley-Terry log-likelihood of natural log-strengths ``x`` (a tie: half a win each),
    plus ``prior`` virtual ties of every model against a pseudo-model at 0."""

    def log_sigmoid(z: float) -> float:
        return -math.log1p(math.exp(-z))

    total = 0.0
    for a, b, outcome in votes:
        score = {"a": 1.0, "b": 0.0}.get(outcome, 0.5)
        d = x[a] - x[b]
        total += score * log_sigmoid(d) + (1 - score) * log_sigmoid(-d)
    for value in x.values():
        total += prior / 2 * (log_sigmoid(value) + log_sigmoid(-value))
    return total


def grid_fit(votes: list[tuple[str, str, str]]) -> dict[str, float]:
    """Maximum likelihood (no prior) for A, B, C by brute force: x_A = 0, a grid over (x_B,
    x_C) refined around the best point until the step is 1e-7."""
    best, step = (0.0, 0.0), 0.1
    while step > 1e-7:
        candidates = [
            (best[0] + i * step, best[1] + j * step) for i in range(-50, 51) for j in range(-50, 51)
        ]

        def fit(point: tuple[float, float]) -> float:
            return log_likelihood({"A": 0.0, "B": point[0], "C": point[1]}, votes, 0.0)

        best = max(candidates, key=fit)
        step /= 20
    return {"A": 0.0, "B": best[0], "C": best[1]}


def ascent_fit(votes: list[tuple[str, str, str]], prior: float) -> dict[str, float]:
    """Maximum likelihood with the prior by plain gradient ascent."""
    x = {"A": 0.0, "B": 0.0, "C": 0.0}
    for _ in range(20_000):
        grad = dict.fromkeys(x, 0.0)
        for a, b, outcome in votes:
            score = {"a": 1.0, "b": 0.0}.get(outcome, 0.5)
            g = score - 1 / (1 + math.exp(-(x[a] - x[b])))
            grad[a] += g
            grad[b] -= g
        for m in x:
            grad[m] += prior / 2 * (1 - 2 / (1 + math.exp(-x[m])))
        x = {m: x[m] + 0.05 * grad[m] for m in x}
    return x


def elo_scale(x: dict[str, float]) -> dict[str, float]:
    mean = sum(x.values()) / len(x)
    return {m: 1000 + SCALE * (v - mean) for m, v in x.items()}


def test_hand_case_matches_an_independent_fit() -> None:
    pure = bradley_terry(HAND, prior=0)
    assert sorted(pure, key=pure.get, reverse=True) == ["A", "B", "C"]
    assert sum(pure.values()) / 3 == pytest.approx(1000)
    expected = elo_scale(grid_fit(HAND))
    assert pure == pytest.approx(expected, abs=1e-3)

    regularised = bradley_terry(HAND)  # prior=1: one virtual tie each against a pseudo-model
    assert regularised == pytest.approx(elo_scale(ascent_fit(HAND, 1.0)), abs=1e-3)
    spread = max(regularised.values()) - min(regularised.values())
    assert spread < max(pure.values()) - min(pure.values())  # the prior pulls in


def test_two_models_have_the_closed_form() -> None:
    # P(A beats B) = 3/4 ⇒ the gap is 400 log10(3), split evenly around 1000.
    ratings = bradley_terry([("A", "B", "a")] * 3 + [("A", "B", "b")], prior=0)
    assert ratings["A"] - ratings["B"] == pytest.approx(400 * math.log10(3))
    assert ratings["A"] + ratings["B"] == pytest.approx(2000)


def test_ties_count_half_and_both_bad_is_a_tie() -> None:
    base = HAND
    with_ties = bradley_terry(base + [("A", "B", "tie")] * 2)
    with_split = bradley_terry(base + [("A", "B", "a"), ("B", "A", "a")])
    assert with_ties == pytest.approx(with_split, abs=1e-9)
    assert bradley_terry(base + [("A", "B", "both_bad")] * 2) == with_ties
    only_ties = bradley_terry([("A", "B", "tie")] * 5)
    assert only_ties["A"] == pytest.approx(only_ties["B"])


def test_fit_is_deterministic_and_order_free() -> None:
    shuffled = HAND[:]
    random.Random(3).shuffle(shuffled)
    assert bradley_terry(shuffled) == bradley_terry(HAND)
    dicts = [{"model_a": a, "model_b": b, "outcome": o} for a, b, o in HAND]
    assert bradley_terry(dicts) == bradley_terry(HAND)


def test_unbeaten_and_winless_models_stay_finite() -> None:
    votes = [("A", "B", "a")] * 20 + [("B", "C", "a")] * 20
    ratings = bradley_terry(votes)
    assert all(math.isfinite(r) for r in ratings.values())
    assert ratings["A"] > ratings["B"] > ratings["C"]
    assert ratings["A"] - ratings["C"] < 2000
    with pytest.raises(ValueError, match="prior > 0"):
        bradley_terry(votes, prior=0)


def test_disconnected_groups_are_anchored_by_the_prior() -> None:
    votes = [("A", "B", "a")] * 3 + [("A", "B", "b")] + [("C", "D", "a")] * 3 + [("D", "C", "a")]
    ratings = bradley_terry(votes)
    assert ratings["A"] == pytest.approx(ratings["C"]) and ratings["B"] == pytest.approx(
        ratings["D"]
    )
    assert ratings["A"] > ratings["B"]
    with pytest.raises(ValueError, match="never met"):
        bradley_terry(votes, prior=0)


def test_empty_and_malformed_input() -> None:
    assert bradley_terry([]) == {} and bootstrap_intervals([]) == {}
    assert elo([]) == {} and leaderboard([]) == []
    with pytest.raises(ValueError, match="unknown outcome"):
        bradley_terry([("A", "B", "draw")])
    with pytest.raises(ValueError, match="itself"):
        bradley_terry([("A", "A", "a")])
    with pytest.raises(ValueError, match="vote 2"):
        bradley_terry([("A", "B", "a"), ("A", "B")])


def test_intervals_contain_the_estimate_and_shrink_with_more_votes() -> None:
    few = bootstrap_intervals(HAND, rounds=100, seed=1)
    many = bootstrap_intervals(HAND * 10, rounds=100, seed=1)
    assert bootstrap_intervals(HAND, rounds=100, seed=1) == few  # seeded
    for votes, intervals in ((HAND, few), (HAND * 10, many)):
        for model, rating in bradley_terry(votes).items():
            low, high = intervals[model]
            assert low <= rating <= high
    for model in "ABC":
        assert many[model][1] - many[model][0] < 0.6 * (few[model][1] - few[model][0])
    narrow = bootstrap_intervals(HAND, rounds=100, seed=1, level=0.5)
    assert narrow["A"][1] - narrow["A"][0] < few["A"][1] - few["A"][0]


def test_elo_online_updates() -> None:
    ratings = elo([("A", "B", "a")])
    assert ratings == {"A": 1016.0, "B": 984.0}
    assert elo([("A", "B", "both_bad")]) == {"A": 1000.0, "B": 1000.0}
    ratings = elo(HAND * 5, k=16, initial=1500)
    assert ratings["A"] > ratings["B"] > ratings["C"]
    assert sum(ratings.values()) == pytest.approx(4500)  # zero-sum updates


def test_leaderboard_rows() -> None:
    rows = leaderboard(HAND, rounds=50)
    assert [r.model for r in rows] == ["A", "B", "C"]
    assert all(isinstance(r, Row) and r.low <= r.rating <= r.high for r in rows)
    record = {r.model: (r.battles, r.wins, r.losses, r.ties) for r in rows}
    assert record == {"A": (7, 5, 2, 0), "B": (9, 4, 4, 1), "C": (8, 2, 5, 1)}
    ratings = bradley_terry(HAND)
    assert [r.rating for r in rows] == [ratings[m] for m in "ABC"]


def test_simulated_votes_recover_the_true_order() -> None:
    rng = random.Random(0)
    truth = {f"m{i}": 150.0 * i for i in range(5)}
    votes = []
    for _ in range(1500):
        a, b = rng.sample(sorted(truth), 2)
        p_a = 1 / (1 + 10 ** ((truth[b] - truth[a]) / 400))
        votes.append((a, b, "a" if rng.random() < p_a else "b"))
    ratings = bradley_terry(votes)
    assert sorted(ratings, key=ratings.get) == sorted(truth, key=truth.get)
    for model in truth:  # truth centred on 1000: m0..m4 = 700..1300
        assert ratings[model] == pytest.approx(700 + truth[model], abs=40)
