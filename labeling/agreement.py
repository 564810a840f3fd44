"""Inter-annotator agreement for rankings, and the ceiling it sets for any reward model.

Pure Python (stdlib only): no Django.

Input: :class:`RankedItem`\\ s, each the rankings that several labelers gave the same item, shown
to all of them identically: ``{labeler: tiers}``, tiers best first, each a list of response
indices judged equal (see :mod:`labeling.preferences`). Leave all-bad rankings out (or in: their
order is then read like any other); the caller decides.

Everything is built on *verdicts*: for two responses ``i < j`` that a labeler ordered, the verdict
is ``+1`` when ``i`` is in a better tier, ``-1`` when ``j`` is, ``0`` when they tie. A *unit* is
one (item, response pair); two labelers can be compared on a unit when both ordered both
responses. Statistics that need two labelers return ``None`` when no unit has two.

- :func:`pairwise_agreement`: over every unit and every two labelers with a verdict on it, the
  share of those comparisons where the verdicts are equal (``a>b``, ``b>a`` or tie).
  :func:`labeler_agreement` is the same per labeler, over the comparisons that involve them.
- :func:`krippendorff_alpha`: Krippendorff's alpha with units = (item, response pair) and
  values = verdicts, by the standard coincidence-matrix formula, ``interval`` metric by default
  (``(v - v')**2``: a tie against a preference is a quarter of the disagreement of opposite
  preferences) or ``nominal``. Which response of a pair is called ``i`` is an accident of the
  order shown, so each unit enters twice, as ``(i, j)`` and ``(j, i)`` with negated verdicts.
  Observed disagreement is unchanged by this; expected disagreement becomes that of the
  symmetric distribution, so alpha no longer depends on how responses were numbered (without
  it, labelers who all agree that response 0 always wins would have no variation and no alpha).
  ``None`` when no unit has two verdicts, or when all verdicts are ties (no variation: alpha is
  0/0).
- :func:`kendall_tau_b` between two rankings (tau-b: ties in either ranking handled), and
  :func:`mean_kendall_tau` over every item and every two labelers who ranked it.
- :func:`agreement_ceiling`: the best pairwise accuracy any reward model could reach against
  these labelers' own strict verdicts. A reward model orders two responses one way; on a unit
  where ``n+`` labelers prefer ``i`` and ``n-`` prefer ``j`` it can agree with at most
  ``max(n+, n-)`` of them, and the model that always picks the majority reaches that. The
  ceiling is ``sum(max(n+, n-)) / sum(n+ + n-)`` over units with at least two strict verdicts
  (ties are left out, as pairwise accuracy is measured on strict pairs; a unit with a single
  strict verdict would count as agreed by construction). It is measured on the same votes that
  define the majority, so with few labelers per item it is optimistic (a 1-1 split counts 1/2).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

Order = Sequence[Sequence[int]]
Verdicts = dict[tuple[int, int], int]


@dataclass(frozen=True)
class RankedItem:
    """One item and the ranking each labeler gave it (tiers of response indices, best first)."""

    item_id: str | int
    rankings: Mapping[str, Order]


def _positions(order: Order) -> dict[int, int]:
    """``{response index: tier number}``; ValueError for an index ranked twice."""
    positions: dict[int, int] = {}
    for tier_number, tier in enumerate(order):
        for index in tier:
            if isinstance(index, bool) or not isinstance(index, int):
                raise ValueError(f"{index!r} is not a response index")
            if index in positions:
                raise ValueError(f"response {index} is ranked more than once")
            positions[index] = tier_number
    return positions


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def verdicts(order: Order) -> Verdicts:
    """``{(i, j): verdict}`` for every two responses ``i < j`` in the ranking: ``+1`` if ``i``
    is better, ``-1`` if ``j`` is, ``0`` for a tie."""
    positions = _positions(order)
    return {
        (i, j): _sign(positions[j] - positions[i])
        for i, j in itertools.combinations(sorted(positions), 2)
    }


def _units(items: Sequence[RankedItem]) -> list[dict[str, int]]:
    """One ``{labeler: verdict}`` per (item, response pair) that at least one labeler ordered,
    labelers in sorted order (so sums are taken in one order)."""
    units: list[dict[str, int]] = []
    for item in items:
        by_labeler = {name: verdicts(item.rankings[name]) for name in sorted(item.rankings)}
        keys = sorted({pair for v in by_labeler.values() for pair in v})
        for pair in keys:
            units.append({name: v[pair] for name, v in by_labeler.items() if pair in v})
    return units


def _comparisons(items: Sequence[RankedItem]) -> dict[tuple[str, str], tuple[int, int]]:
    """``{(labeler a, labeler b): (agreeing units, compared units)}`` with ``a < b``."""
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    for unit in _units(items):
        for a, b in itertools.combinations(unit, 2):
            agree, total = counts.get((a, b), (0, 0))
            counts[(a, b)] = (agree + (unit[a] == unit[b]), total + 1)
    return counts


def pairwise_agreement(items: Sequence[RankedItem]) -> float | None:
    """Share of (unit, two labelers) comparisons with the same verdict; None if there is none."""
    counts = _comparisons(items).values()
    total = sum(t for _, t in counts)
    return sum(a for a, _ in counts) / total if total else None


def labeler_agreement(items: Sequence[RankedItem]) -> dict[str, float]:
    """Per labeler, the share of their comparisons with other labelers (on units both judged)
    where the verdicts are equal. Labelers who never share a unit with another are left out."""
    totals: dict[str, tuple[int, int]] = {}
    for (a, b), (agree, total) in _comparisons(items).items():
        for name in (a, b):
            old_agree, old_total = totals.get(name, (0, 0))
            totals[name] = (old_agree + agree, old_total + total)
    return {name: agree / total for name, (agree, total) in sorted(totals.items())}


Metric = Literal["interval", "nominal"]
VALUES = (-1, 0, 1)


def _distance(metric: Metric, c: int, k: int) -> int:
    if metric == "interval":
        return (c - k) ** 2
    return int(c != k)


def coincidences(items: Sequence[RankedItem]) -> dict[tuple[int, int], Fraction]:
    """Krippendorff's coincidence matrix ``o[(c, k)]`` over verdict values, each unit counted in
    both orientations: ``sum over units of (pairs of verdicts (c, k) from different labelers) /
    (verdicts in the unit - 1)``, units with fewer than two verdicts left out."""
    pairs_by_size: dict[int, Counter[tuple[int, int]]] = {}  # integer counts, divided once
    for unit in _units(items):
        values = list(unit.values())
        m = len(values)
        if m < 2:
            continue
        counts = pairs_by_size.setdefault(m, Counter())
        for oriented in (values, [-v for v in values]):
            counts.update(
                (oriented[x], oriented[y]) for x, y in itertools.permutations(range(m), 2)
            )
    return {
        (c, k): sum(
            (Fraction(counts[(c, k)], m - 1) for m, counts in pairs_by_size.items()), Fraction(0)
        )
        for c in VALUES
        for k in VALUES
    }


def krippendorff_alpha(items: Sequence[RankedItem], metric: Metric = "interval") -> float | None:
    """Krippendorff's alpha over (item, response pair) units with verdicts in {-1, 0, +1} (see
    the module docstring): ``1 - D_o / D_e`` with ``D_o = sum o_ck d_ck / n`` and ``D_e = sum
    n_c n_k d_ck / (n (n - 1))``. None without two verdicts on any unit, or without variation."""
    if metric not in ("interval", "nominal"):
        raise ValueError(f"metric must be 'interval' or 'nominal', not {metric!r}")
    matrix = coincidences(items)
    marginals = {c: sum(matrix[(c, k)] for k in VALUES) for c in VALUES}
    n = sum(marginals.values())
    if n == 0:
        return None
    observed = sum(o * _distance(metric, c, k) for (c, k), o in matrix.items()) / n
    expected = sum(
        marginals[c] * marginals[k] * _distance(metric, c, k) for c in VALUES for k in VALUES
    ) / (n * (n - 1))
    if expected == 0:
        return None
    return float(1 - observed / expected)


def kendall_tau_b(rank_a: Order, rank_b: Order) -> float | None:
    """Kendall's tau-b between two rankings (tiers) over the responses both ordered:
    ``(concordant - discordant) / sqrt((n0 - ties_a) (n0 - ties_b))``, ``n0`` the number of
    response pairs. None when it is undefined (fewer than two common responses, or one ranking
    ties them all)."""
    a, b = verdicts(rank_a), verdicts(rank_b)
    common = [pair for pair in a if pair in b]
    n0 = len(common)
    ties_a = sum(a[p] == 0 for p in common)
    ties_b = sum(b[p] == 0 for p in common)
    if n0 == 0 or ties_a == n0 or ties_b == n0:
        return None
    score = sum(a[p] * b[p] for p in common)  # +1 concordant, -1 discordant, 0 with a tie
    return score / math.sqrt((n0 - ties_a) * (n0 - ties_b))


def mean_kendall_tau(items: Sequence[RankedItem]) -> float | None:
    """Mean tau-b over every item and every two labelers who ranked it (where tau-b is
    defined); None if there is none."""
    taus = [
        tau
        for item in items
        for a, b in itertools.combinations(sorted(item.rankings), 2)
        if (tau := kendall_tau_b(item.rankings[a], item.rankings[b])) is not None
    ]
    return sum(taus) / len(taus) if taus else None


def agreement_ceiling(items: Sequence[RankedItem]) -> float | None:
    """The pairwise accuracy a perfect reward model could reach against these labelers' strict
    verdicts: ``sum(max(n+, n-)) / sum(n+ + n-)`` over (item, response pair) units with at least
    two strict verdicts (module docstring). None if no unit has two."""
    right = total = 0
    for unit in _units(items):
        plus = sum(v > 0 for v in unit.values())
        minus = sum(v < 0 for v in unit.values())
        if plus + minus >= 2:
            right += max(plus, minus)
            total += plus + minus
    return right / total if total else None


__all__ = [
    "RankedItem",
    "agreement_ceiling",
    "coincidences",
    "kendall_tau_b",
    "krippendorff_alpha",
    "labeler_agreement",
    "mean_kendall_tau",
    "pairwise_agreement",
    "verdicts",
]
