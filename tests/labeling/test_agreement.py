"""Inter-annotator agreement for rankings: hand-computed cases, edge cases, and cross-checks
against independent implementations written here (pure Python, no database)."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest

from labeling.agreement import (
    RankedItem,
    agreement_ceiling,
    coincidences,
    kendall_tau_b,
    krippendorff_alpha,
    labeler_agreement,
    mean_kendall_tau,
    pairwise_agreement,
    verdicts,
)

STRICT = [[0], [1], [2]]  # 0 > 1 > 2
TOP_1_TIE = [[1], [0, 2]]  # 1 best, 0 and 2 tie behind it
SWAP = [[1], [0], [2]]  # 1 > 0 > 2


def one(**rankings: list[list[int]]) -> list[RankedItem]:
    return [RankedItem(item_id=1, rankings=rankings)]


def test_verdicts_per_response_pair() -> None:
    assert verdicts(STRICT) == {(0, 1): 1, (0, 2): 1, (1, 2): 1}
    assert verdicts(TOP_1_TIE) == {(0, 1): -1, (0, 2): 0, (1, 2): 1}
    assert verdicts([[3], [1]]) == {(1, 3): -1}
    with pytest.raises(ValueError, match="more than once"):
        verdicts([[0], [0]])


def test_two_labelers_with_a_tie_by_hand() -> None:
    """a = 0 > 1 > 2, b = 1 > {0, 2}.

    Verdicts per unit (i < j; +1: i better, -1: j better, 0: tie):
    (0,1): a +1, b -1   (0,2): a +1, b 0   (1,2): a +1, b +1.

    Pairwise agreement: 1 of 3 units. Tau-b: n0 = 3, ties in a 0, ties in b 1, concordant 1
    ((1,2)), discordant 1 ((0,1)): (1 - 1) / sqrt(3 * 2) = 0.

    Alpha: each unit counted also reversed, with verdicts negated: (0,1) -> {-1, +1},
    (0,2) -> {-1, 0}, (1,2) -> {-1, -1}. Every unit has m = 2 values, weight 1/(m-1) = 1, and
    contributes both ordered pairs of its values. Coincidence matrix o[c][k]:

              -1   0   +1
        -1  [  2   1   2 ]
         0  [  1   0   1 ]
        +1  [  2   1   2 ]

    Marginals n_-1 = 5, n_0 = 2, n_+1 = 5, n = 12.
    Interval (d = (c-k)^2: d(+1,-1) = 4, d(+-1, 0) = 1):
        D_o = (2*4 + 2*4 + 4*1) / 12 = 20/12 = 5/3
        D_e = (2*5*5*4 + 4*5*2*1) / (12*11) = 240/132 = 20/11
        alpha = 1 - (5/3) / (20/11) = 1 - 55/60 = 1/12.
    Nominal (d = 1 when different):
        D_o = (2+2+4) / 12 = 2/3;  D_e = (2*25 + 4*10) / 132 = 90/132 = 15/22
        alpha = 1 - (2/3) / (15/22) = 1 - 44/45 = 1/45.

    Ceiling: units with >= 2 strict verdicts: (0,1) (1 of 2 with the majority, whichever side)
    and (1,2) (2 of 2); (0,2) has one strict verdict and is left out: (1 + 2) / (2 + 2) = 3/4.
    """
    items = one(a=STRICT, b=TOP_1_TIE)
    assert pairwise_agreement(items) == pytest.approx(1 / 3)
    assert labeler_agreement(items) == {"a": pytest.approx(1 / 3), "b": pytest.approx(1 / 3)}
    assert kendall_tau_b(STRICT, TOP_1_TIE) == 0
    assert mean_kendall_tau(items) == 0
    matrix = coincidences(items)
    assert [[matrix[(c, k)] for k in (-1, 0, 1)] for c in (-1, 0, 1)] == [
        [2, 1, 2],
        [1, 0, 1],
        [2, 1, 2],
    ]
    assert krippendorff_alpha(items) == pytest.approx(1 / 12)
    assert krippendorff_alpha(items, "nominal") == pytest.approx(1 / 45)
    assert agreement_ceiling(items) == pytest.approx(3 / 4)


def test_two_labelers_strict_rankings_by_hand() -> None:
    """a = 0 > 1 > 2, b = 1 > 0 > 2: they disagree on (0,1) only.

    Agreement 2/3. Tau-b: C = 2, D = 1, no ties: (2 - 1) / 3 = 1/3.
    Alpha, doubled units {+1,-1}, {-1,+1}, {+1,+1}, {-1,-1}, {+1,+1}, {-1,-1}:
    o[+1][+1] = o[-1][-1] = 4, o[+1][-1] = o[-1][+1] = 2, n_+1 = n_-1 = 6, n = 12.
    Interval: D_o = 4*4/12 = 4/3, D_e = 2*36*4/132 = 24/11, alpha = 1 - 44/72 = 7/18.
    Only two values occur, so nominal gives the same 7/18 (D_o = 1/3, D_e = 6/11).
    Ceiling: (1 + 2 + 2) / 6 = 5/6.
    """
    items = one(a=STRICT, b=SWAP)
    assert pairwise_agreement(items) == pytest.approx(2 / 3)
    assert kendall_tau_b(STRICT, SWAP) == pytest.approx(1 / 3)
    assert krippendorff_alpha(items) == pytest.approx(7 / 18)
    assert krippendorff_alpha(items, "nominal") == pytest.approx(7 / 18)
    assert agreement_ceiling(items) == pytest.approx(5 / 6)


def test_three_labelers_one_pair_by_hand() -> None:
    """a and b prefer response 0, c prefers 1.

    Comparisons: ab agree, ac and bc disagree: 1/3; per labeler a 1/2, b 1/2, c 0.
    Alpha: one unit with m = 3 values {+1,+1,-1} (weight 1/2), doubled with {-1,-1,+1}:
    o[+1][+1] = o[-1][-1] = 1, o[+1][-1] = o[-1][+1] = 2, n_+1 = n_-1 = 3, n = 6.
    Nominal: D_o = 4/6, D_e = 2*9/30 = 3/5, alpha = 1 - 10/9 = -1/9 (worse than chance).
    Ceiling: the majority (0 better) has 2 of the 3 strict verdicts: 2/3.
    """
    items = one(a=[[0], [1]], b=[[0], [1]], c=[[1], [0]])
    assert pairwise_agreement(items) == pytest.approx(1 / 3)
    assert labeler_agreement(items) == {"a": 0.5, "b": 0.5, "c": 0.0}
    assert coincidences(items)[(1, -1)] == 2 and coincidences(items)[(1, 1)] == 1
    assert krippendorff_alpha(items, "nominal") == pytest.approx(-1 / 9)
    assert agreement_ceiling(items) == pytest.approx(2 / 3)
    assert mean_kendall_tau(items) == pytest.approx((1 - 1 - 1) / 3)


def test_a_single_labeler_gives_none() -> None:
    items = [RankedItem(1, {"a": STRICT}), RankedItem(2, {"b": SWAP})]
    assert pairwise_agreement(items) is None
    assert krippendorff_alpha(items) is None
    assert mean_kendall_tau(items) is None
    assert agreement_ceiling(items) is None
    assert labeler_agreement(items) == {}
    assert pairwise_agreement([]) is None


def test_all_ties() -> None:
    items = one(a=[[0, 1, 2]], b=[[0, 1, 2]])
    assert pairwise_agreement(items) == 1.0
    assert krippendorff_alpha(items) is None  # no variation: alpha is 0/0
    assert kendall_tau_b([[0, 1, 2]], [[0, 1, 2]]) is None
    assert kendall_tau_b(STRICT, [[0, 1, 2]]) is None
    assert mean_kendall_tau(items) is None
    assert agreement_ceiling(items) is None  # no strict verdicts to predict
    # Ties against preferences: full disagreement on every unit.
    mixed = one(a=[[0, 1, 2]], b=STRICT)
    assert pairwise_agreement(mixed) == 0.0
    assert krippendorff_alpha(mixed, "nominal") < 0  # type: ignore[operator]
    # Interval: a tie is only a quarter as far from a preference as the opposite preference,
    # and chance (symmetric +-1 and 0) includes opposites: D_o = 1, D_e = 12/11, alpha = 1/12.
    assert krippendorff_alpha(mixed) == pytest.approx(1 / 12)


def test_identical_rankings_agree_fully() -> None:
    items = [
        RankedItem(1, {"a": STRICT, "b": STRICT}),
        RankedItem(2, {"a": TOP_1_TIE, "b": TOP_1_TIE, "c": TOP_1_TIE}),
    ]
    assert pairwise_agreement(items) == 1.0
    assert labeler_agreement(items) == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert krippendorff_alpha(items) == 1.0
    assert krippendorff_alpha(items, "nominal") == 1.0
    assert mean_kendall_tau(items) == 1.0
    assert agreement_ceiling(items) == 1.0
    # Everyone agreeing that response 0 wins is still perfect agreement (units count both ways).
    assert krippendorff_alpha(one(a=[[0], [1]], b=[[0], [1]])) == 1.0


def test_only_responses_both_labelers_ordered_are_compared() -> None:
    items = one(a=[[0], [1], [2]], b=[[2], [1]])  # b did not place 0
    # Only (1, 2) is shared: a says 1 > 2, b says 2 > 1.
    assert pairwise_agreement(items) == 0.0
    assert kendall_tau_b([[0], [1], [2]], [[2], [1]]) == -1.0
    assert agreement_ceiling(items) == 0.5


def test_kendall_tau_b_textbook_values() -> None:
    # x = (1, 2, 3, 4), y = (1, 3, 2, 4): 5 concordant, 1 discordant -> 4/6.
    assert kendall_tau_b([[0], [1], [2], [3]], [[0], [2], [1], [3]]) == pytest.approx(2 / 3)
    assert kendall_tau_b(STRICT, [[2], [1], [0]]) == -1.0
    # x = (1, 2, 3), y = (1, 1, 2): C = 2, D = 0, ties in y 1: 2 / sqrt(3 * 2).
    assert kendall_tau_b(STRICT, [[0, 1], [2]]) == pytest.approx(2 / math.sqrt(6))
    assert kendall_tau_b([[0]], [[0]]) is None


def test_alpha_does_not_depend_on_how_responses_are_numbered() -> None:
    items = one(a=[[0], [1], [2], [3]], b=[[1], [0, 3], [2]], c=[[0], [2], [1, 3]])
    relabel = {0: 3, 1: 0, 2: 1, 3: 2}
    relabelled = [
        RankedItem(
            1, {n: [[relabel[i] for i in t] for t in o] for n, o in items[0].rankings.items()}
        )
    ]
    for metric in ("interval", "nominal"):
        assert krippendorff_alpha(relabelled, metric) == pytest.approx(
            krippendorff_alpha(items, metric)
        )
    assert pairwise_agreement(relabelled) == pairwise_agreement(items)
    assert mean_kendall_tau(relabelled) == pytest.approx(mean_kendall_tau(items))


# --------------------------------------------------------------------------------------------
# Independent implementations


def reference_alpha(items: list[RankedItem], metric: str) -> float | None:
    """Krippendorff's alpha from the pairable-values form, without a coincidence matrix:

    D_o = 1/n * sum over units u of 1/(m_u - 1) * sum over ordered pairs of different coders
    in u of d; D_e = 1/(n (n-1)) * sum over all ordered pairs of distinct pairable values in the
    data of d. Data: every (item, i, j) with i != j, value +1 if i ranked above j, -1 below, 0
    tied (so both orientations of each response pair, as the module documents).
    """

    def d(x: int, y: int) -> int:
        return (x - y) ** 2 if metric == "interval" else int(x != y)

    units = []
    for item in items:
        tiers = {
            name: {i: t for t, tier in enumerate(order) for i in tier}
            for name, order in item.rankings.items()
        }
        indices = sorted({i for pos in tiers.values() for i in pos})
        for i, j in itertools.permutations(indices, 2):
            values = [
                (pos[j] > pos[i]) - (pos[j] < pos[i])
                for pos in tiers.values()
                if i in pos and j in pos
            ]
            if len(values) >= 2:
                units.append(values)
    pooled = [v for unit in units for v in unit]
    n = len(pooled)
    if n == 0:
        return None
    observed = Fraction(0)
    for unit in units:
        m = len(unit)
        pair_sum = sum(d(unit[x], unit[y]) for x in range(m) for y in range(m) if x != y)
        observed += Fraction(pair_sum, m - 1)
    observed /= n
    expected = Fraction(
        sum(d(pooled[x], pooled[y]) for x in range(n) for y in range(n) if x != y), n * (n - 1)
    )
    return None if expected == 0 else float(1 - observed / expected)


def reference_tau_b(order_a: list[list[int]], order_b: list[list[int]]) -> float | None:
    """Tau-b in its covariance form over tier-number vectors x, y:
    sum sgn(x_i - x_j) sgn(y_i - y_j) / sqrt(sum sgn(x_i - x_j)^2 * sum sgn(y_i - y_j)^2)."""
    x = {i: t for t, tier in enumerate(order_a) for i in tier}
    y = {i: t for t, tier in enumerate(order_b) for i in tier}
    common = sorted(set(x) & set(y))

    def sgn(v: int) -> int:
        return (v > 0) - (v < 0)

    pairs = list(itertools.combinations(common, 2))
    num = sum(sgn(x[i] - x[j]) * sgn(y[i] - y[j]) for i, j in pairs)
    den = sum(sgn(x[i] - x[j]) ** 2 for i, j in pairs) * sum(
        sgn(y[i] - y[j]) ** 2 for i, j in pairs
    )
    return num / math.sqrt(den) if den else None


def random_order(rng: random.Random, indices: list[int]) -> list[list[int]]:
    shuffled = rng.sample(indices, len(indices))
    tiers: list[list[int]] = []
    for index in shuffled:
        if tiers and rng.random() < 0.3:
            tiers[-1].append(index)
        else:
            tiers.append([index])
    return tiers


def random_items(rng: random.Random) -> list[RankedItem]:
    items = []
    for item_id in range(rng.randint(1, 6)):
        k = rng.randint(2, 5)
        base = random_order(rng, list(range(k)))
        rankings = {}
        for name in rng.sample(["ann", "bob", "cat", "dan"], rng.randint(1, 4)):
            # Often copy a shared "true" order, so agreement is not only chance.
            rankings[name] = base if rng.random() < 0.4 else random_order(rng, list(range(k)))
        items.append(RankedItem(item_id, rankings))
    return items


def test_alpha_and_tau_match_independent_implementations() -> None:
    rng = random.Random(20240501)
    checked = 0
    for _ in range(150):
        items = random_items(rng)
        for metric in ("interval", "nominal"):
            expected = reference_alpha(items, metric)
            got = krippendorff_alpha(items, metric)
            if expected is None:
                assert got is None
            else:
                assert got == pytest.approx(expected, abs=1e-12)
                checked += 1
        for item in items:
            for a, b in itertools.combinations(sorted(item.rankings), 2):
                expected_tau = reference_tau_b(item.rankings[a], item.rankings[b])
                got_tau = kendall_tau_b(item.rankings[a], item.rankings[b])
                assert got_tau == (
                    None if expected_tau is None else pytest.approx(expected_tau, abs=1e-12)
                )
    assert checked > 100


def test_ceiling_is_the_best_any_fixed_prediction_can_do() -> None:
    """Brute force: over every way to predict each unit's direction, the best pairwise accuracy
    against the labelers' strict verdicts (units with >= 2 of them) equals the ceiling."""
    rng = random.Random(7)
    for _ in range(40):
        items = [RankedItem(i, {n: random_order(rng, [0, 1, 2]) for n in "abc"}) for i in range(2)]
        units = []
        for item in items:
            per = [verdicts(order) for order in item.rankings.values()]
            for pair in [(0, 1), (0, 2), (1, 2)]:
                strict = [v[pair] for v in per if v[pair] != 0]
                if len(strict) >= 2:
                    units.append(strict)
        if not units:
            assert agreement_ceiling(items) is None
            continue
        total = sum(len(u) for u in units)
        best = max(
            sum(sum(v == guess for v in unit) for unit, guess in zip(units, guesses, strict=True))
            for guesses in itertools.product((1, -1), repeat=len(units))
        )
        assert agreement_ceiling(items) == pytest.approx(best / total)
