"""Ratings from pairwise votes: a Bradley-Terry leaderboard with bootstrap intervals, and Elo.

Pure Python (no numpy, no torch): the web process can rank models from arena votes directly.

A *vote* is ``(model_a, model_b, outcome)`` with ``outcome`` one of:

- ``"a"``: ``model_a`` won; ``"b"``: ``model_b`` won;
- ``"tie"``: neither was better; ``"both_bad"``: a tie marked all-bad (the labeling app's
  arena vote). For ratings it is a tie: both replies being bad says nothing about which model
  is stronger. :func:`leaderboard` counts it among the ties.

Votes may be tuples, lists or dicts with the keys ``model_a``, ``model_b`` and ``outcome``.
Model names are any hashable value (usually strings). A vote of a model against itself carries
no information and is refused (ValueError), as is an unknown outcome.

The Bradley-Terry model gives each model a strength ``p = e^x > 0`` with ``P(i beats j) = p_i
/ (p_i + p_j)``. :func:`bradley_terry` finds the maximum-likelihood strengths iteratively, a tie
counting as half a win for each side (``w_ij``: the points i scored against j). Each iteration
applies, to one model after the other (in place: updating all at once can oscillate forever,
two models already do), the update of Zermelo and Newman (2023, "Efficient computation of
rankings from pairwise comparisons"), ``p_i <- sum_j w_ij p_j / (p_i + p_j) / sum_j w_ji / (p_i
+ p_j)``, whose fixed point is the same as that of Hunter's MM algorithm (``p_i <- W_i /
sum_j n_ij / (p_i + p_j)``) and which converges several times faster; then it shifts all
log-strengths together to the best common offset (one Newton solve: only the prior below depends
on it, and leaving that direction to the plain update made it crawl: thousands of iterations
instead of tens). It stops when no log-strength moves by more than ``tol``. Ratings are on the
Elo scale, ``rating = 400 * log10(p) + c`` with ``c`` chosen so the mean rating is 1000: a
400-point gap means 10:1 odds, 100 points about 64%.

The prior. A model that never lost has an infinite maximum-likelihood rating (one that never won,
minus infinity), and models in two groups that never met have no common scale. So, by default,
every model also plays ``prior`` virtual games against a pseudo-model whose strength is fixed
at 1 (log-strength 0), all of them ties: half a win and half a loss each. That is a weak pull
towards the middle (one virtual tie is worth one real game), it keeps every rating finite, and
it anchors disconnected groups to the same pseudo-model; the pseudo-model is not reported.
Between groups that never met, the ratings reflect only each group's record against the prior
and should not be compared. ``prior=0`` gives the pure maximum-likelihood fit, which exists only
when, however the models are split into two groups, each group scored against the other (the
"scored against" graph is strongly connected); otherwise ValueError, in a bootstrap round too.

:func:`bootstrap_intervals` resamples the votes with replacement ``rounds`` times (seeded),
refits Bradley-Terry each time over the same set of models, and reports the percentile interval
of each model's rating. :func:`elo` is the online Elo rating (order dependent, for comparison).
:func:`leaderboard` puts it together: one :class:`Row` per model, best first.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

OUTCOMES = ("a", "b", "tie", "both_bad")
TIE_OUTCOMES = ("tie", "both_bad")
SCALE = 400.0 / math.log(10.0)  # natural log-strength → Elo points
MEAN_RATING = 1000.0

Model = Hashable
Vote = tuple[Model, Model, str]


@dataclass(frozen=True)
class Row:
    model: Model
    rating: float  # Bradley-Terry, Elo scale, mean 1000
    low: float  # bootstrap percentile interval of the rating
    high: float
    battles: int  # votes the model took part in
    wins: int
    losses: int
    ties: int  # "tie" and "both_bad" votes


def normalize_votes(votes: Iterable[Any]) -> list[Vote]:
    """The votes as ``(model_a, model_b, outcome)`` tuples; ValueError for a malformed vote."""
    result: list[Vote] = []
    for index, vote in enumerate(votes, start=1):
        if isinstance(vote, Mapping):
            try:
                a, b, outcome = vote["model_a"], vote["model_b"], vote["outcome"]
            except KeyError as exc:
                raise ValueError(f"vote {index}: missing {exc.args[0]!r}") from None
        else:
            try:
                a, b, outcome = vote
            except (TypeError, ValueError):
                raise ValueError(
                    f"vote {index}: expected (model_a, model_b, outcome), got {vote!r}"
                ) from None
        if outcome not in OUTCOMES:
            raise ValueError(
                f"vote {index}: unknown outcome {outcome!r} (expected one of {', '.join(OUTCOMES)})"
            )
        if a == b:
            raise ValueError(f"vote {index}: a model cannot be compared with itself ({a!r})")
        result.append((a, b, outcome))
    return result


def _models_of(votes: Sequence[Vote], models: Iterable[Model] | None) -> list[Model]:
    seen: dict[Model, None] = {}
    for a, b, _ in votes:
        seen.setdefault(a)
        seen.setdefault(b)
    for model in models or ():
        seen.setdefault(model)
    try:  # a deterministic order, whatever order the votes came in
        return sorted(seen)
    except TypeError:  # names of mixed types
        return sorted(seen, key=repr)


def _pair_counts(
    votes: Sequence[Vote], index: Mapping[Model, int]
) -> dict[tuple[int, int], tuple[float, float]]:
    """``{(i, j): (score of i, games)}`` for i < j; a tie is half a point to each side."""
    counts: dict[tuple[int, int], list[float]] = {}
    for a, b, outcome in votes:
        i, j = index[a], index[b]
        score_a = 1.0 if outcome == "a" else 0.0 if outcome == "b" else 0.5
        if i > j:
            i, j, score_a = j, i, 1.0 - score_a
        cell = counts.setdefault((i, j), [0.0, 0.0])
        cell[0] += score_a
        cell[1] += 1.0
    return {key: (value[0], value[1]) for key, value in counts.items()}


def bradley_terry(
    votes: Iterable[Any],
    *,
    prior: float = 1.0,
    iterations: int = 10_000,
    tol: float = 1e-9,
    models: Iterable[Model] | None = None,
) -> dict[Model, float]:
    """Bradley-Terry ratings on the Elo scale (mean 1000), by the iteration described in
    the module docstring; deterministic (the same votes in any order give the same ratings).

    ``prior``: virtual tied games each model plays against a fixed pseudo-model (see the module
    docstring); 0 for the pure maximum-likelihood fit. ``models`` adds models without votes
    (rated by the prior alone, so 0 before centring). ``tol``: the largest change of a natural
    log-strength at which the iteration stops; ``iterations`` caps it. Empty input → ``{}``.
    """
    if prior < 0:
        raise ValueError(f"prior must be 0 or more, got {prior}")
    votes = normalize_votes(votes)
    names = _models_of(votes, models)
    if not names:
        return {}
    if len(names) == 1:
        return {names[0]: MEAN_RATING}
    index = {model: i for i, model in enumerate(names)}
    pairs = _pair_counts(votes, index)
    m = len(names)
    wins = [0.0] * m  # W_i: points scored in real games
    neighbours: list[list[tuple[int, float, float]]] = [[] for _ in range(m)]  # (j, w_ij, w_ji)
    for (i, j), (score_i, games) in sorted(pairs.items()):  # sorted: the same sums in any order
        wins[i] += score_i
        wins[j] += games - score_i
        neighbours[i].append((j, score_i, games - score_i))
        neighbours[j].append((i, games - score_i, score_i))
    if prior == 0:
        _check_identifiable(m, pairs, wins)
    half = prior / 2.0  # the virtual ties: half a point each way against the pseudo-model
    logs = [0.0] * m
    strength = [1.0] * m
    for _ in range(iterations):
        old = logs
        new = []
        for i in range(m):  # in place (Gauss-Seidel): all at once can oscillate forever
            p_i = strength[i]
            virtual = half / (p_i + 1.0)
            gained = lost = virtual
            for j, w_ij, w_ji in neighbours[i]:
                gained += w_ij * strength[j] / (p_i + strength[j])
                lost += w_ji / (p_i + strength[j])
            new.append(math.log(gained / lost))
            strength[i] = gained / lost
        shift = _best_shift(new, half) if prior > 0 else -sum(new) / m
        logs = [x + shift for x in new]
        strength = [math.exp(x) for x in logs]
        change = max(abs(x - y) for x, y in zip(logs, old, strict=True))
        if change < tol:
            break
    mean = sum(logs) / m
    return {
        model: MEAN_RATING + SCALE * (value - mean)
        for model, value in zip(names, logs, strict=True)
    }


def _best_shift(logs: Sequence[float], half: float) -> float:
    """The common shift ``c`` of all log-strengths that maximizes the likelihood, by Newton's
    method. The real games do not depend on ``c``; the virtual ties do: ``sum_i half *
    (log sigma(x_i + c) + log sigma(-x_i - c))``, concave in ``c``."""
    c = 0.0
    for _ in range(100):
        sig = [1.0 / (1.0 + math.exp(-(x + c))) for x in logs]
        gradient = sum(half * (1.0 - 2.0 * s) for s in sig)
        curvature = sum(2.0 * half * s * (1.0 - s) for s in sig)
        step = gradient / curvature
        c += step
        if abs(step) < 1e-13:
            break
    return c


def _check_identifiable(
    m: int, pairs: Mapping[tuple[int, int], tuple[float, float]], wins: Sequence[float]
) -> None:
    """The maximum-likelihood fit is finite only when, for every split of the models in two
    groups, each group beat the other at least once (Hunter's condition): the "scored a point
    against" graph must be strongly connected."""
    beat: list[set[int]] = [set() for _ in range(m)]  # i → j: i scored against j
    for (i, j), (score_i, games) in pairs.items():
        if score_i > 0:
            beat[i].add(j)
        if games - score_i > 0:
            beat[j].add(i)

    def reach(edges: list[set[int]]) -> set[int]:
        seen, stack = {0}, [0]
        while stack:
            for j in edges[stack.pop()]:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return seen

    backwards: list[set[int]] = [set() for _ in range(m)]
    for i, targets in enumerate(beat):
        for j in targets:
            backwards[j].add(i)
    if m > 1 and (len(reach(beat)) < m or len(reach(backwards)) < m or min(wins) <= 0):
        raise ValueError(
            "with prior=0 the ratings are infinite or undefined: some model never won or never "
            "lost against the others, or the models form groups that never met; use prior > 0"
        )


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    position = q * (len(sorted_values) - 1)
    below = math.floor(position)
    above = min(below + 1, len(sorted_values) - 1)
    weight = position - below
    return sorted_values[below] * (1 - weight) + sorted_values[above] * weight


def bootstrap_intervals(
    votes: Iterable[Any],
    *,
    rounds: int = 200,
    seed: int = 0,
    level: float = 0.95,
    prior: float = 1.0,
    models: Iterable[Model] | None = None,
    **fit: Any,
) -> dict[Model, tuple[float, float]]:
    """Percentile bootstrap intervals of the Bradley-Terry ratings: ``{model: (low, high)}``.

    Each of ``rounds`` rounds draws as many votes as there are, with replacement, with a
    ``random.Random(seed)``, and refits over every model (one missing from a round's sample is
    rated by the prior alone). ``level`` is the interval's coverage (0.95: the 2.5% and 97.5%
    percentiles). ``fit`` passes ``iterations`` / ``tol`` to :func:`bradley_terry`.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    votes = normalize_votes(votes)
    names = _models_of(votes, models)
    if not votes:
        return {}
    rng = random.Random(seed)
    samples: dict[Model, list[float]] = {model: [] for model in names}
    for _ in range(rounds):
        drawn = rng.choices(votes, k=len(votes))
        ratings = bradley_terry(drawn, prior=prior, models=names, **fit)
        for model in names:
            samples[model].append(ratings[model])
    tail = (1.0 - level) / 2.0
    intervals = {}
    for model, values in samples.items():
        values.sort()
        intervals[model] = (_quantile(values, tail), _quantile(values, 1.0 - tail))
    return intervals


def elo(votes: Iterable[Any], k: float = 32.0, initial: float = 1000.0) -> dict[Model, float]:
    """Online Elo, votes taken in the given order: after each vote both ratings move by ``k *
    (score - expected)`` with ``expected = 1 / (1 + 10 ** ((r_other - r_self) / 400))`` and a
    tie (``both_bad`` too) scoring 0.5. Order dependent, unlike :func:`bradley_terry`."""
    ratings: dict[Model, float] = {}
    for a, b, outcome in normalize_votes(votes):
        ra, rb = ratings.setdefault(a, initial), ratings.setdefault(b, initial)
        expected_a = 1.0 / (1.0 + 10.0 ** ((rb - ra) / 400.0))
        score_a = 1.0 if outcome == "a" else 0.0 if outcome == "b" else 0.5
        ratings[a] = ra + k * (score_a - expected_a)
        ratings[b] = rb - k * (score_a - expected_a)
    return ratings


def leaderboard(
    votes: Iterable[Any],
    *,
    rounds: int = 200,
    seed: int = 0,
    level: float = 0.95,
    prior: float = 1.0,
) -> list[Row]:
    """One :class:`Row` per model that took part in a vote, by rating (best first, then name):
    the Bradley-Terry rating, its bootstrap interval, and the model's record. Empty → ``[]``."""
    votes = normalize_votes(votes)
    if not votes:
        return []
    ratings = bradley_terry(votes, prior=prior)
    intervals = bootstrap_intervals(votes, rounds=rounds, seed=seed, level=level, prior=prior)
    record: dict[Model, list[int]] = {model: [0, 0, 0, 0] for model in ratings}
    for a, b, outcome in votes:
        record[a][0] += 1
        record[b][0] += 1
        if outcome == "a":
            record[a][1] += 1
            record[b][2] += 1
        elif outcome == "b":
            record[b][1] += 1
            record[a][2] += 1
        else:
            record[a][3] += 1
            record[b][3] += 1
    order = list(ratings)  # already in a deterministic name order; sort is stable
    order.sort(key=lambda model: -ratings[model])
    return [Row(model, ratings[model], *intervals[model], *record[model]) for model in order]
