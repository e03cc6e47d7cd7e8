"""The statistics behind every number the evaluation reports.

- A system's mean score gets a 95% bootstrap interval (scipy.stats.bootstrap, percentile method, 10,000
  resamples, a fixed seed so a report is reproducible).
- Two systems are compared on the same prompts, so the comparison is paired: the mean of the per-example
  differences, its paired-bootstrap interval (the bootstrap of those differences), win/tie/loss counts,
  and an exact p-value — McNemar's test for pass/fail scores (the binomial test on the discordant pairs),
  the sign test otherwise (the binomial test on wins against losses). Ties carry no information in either.
- A difference whose interval includes zero, or whose exact test gives p ≥ 0.05, is "no detectable
  difference", never a gain: `verdict_word`
  is the only place that turns numbers into words, so the report and the summary cannot disagree.

Why the bootstrap rather than a t-interval: scores here are bounded, skewed and often pass/fail, and held-out
sets are small (tens of examples); the percentile bootstrap makes no normality assumption.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

RESAMPLES = 10_000
SEED = 20260106  # fixed: the same scores give the same intervals in every report
TIE_TOLERANCE = 1e-9
ALPHA = 0.05


@dataclass
class Estimate:
    """A mean with its 95% interval, over `n` examples."""

    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return {"mean": self.mean, "ci95": [self.low, self.high], "n": self.n}


@dataclass
class Comparison:
    """System b against system a on one scorer, paired by example: b − a."""

    a: str
    b: str
    scorer: str
    mean_diff: float
    low: float
    high: float
    p_value: float
    test: str  # "mcnemar" or "sign"
    wins: int  # examples where b scored better than a (in the scorer's direction)
    ties: int
    losses: int
    n: int

    @property
    def detectable(self) -> bool:
        """Whether the interval excludes zero and the exact test agrees (p < 0.05). The percentile bootstrap is
        too confident when only a handful of pairs differ (4 lost probes of 80, none gained: the interval
        excludes zero, McNemar's p is 0.125); a difference must pass both to be called one."""
        return (self.low > 0 or self.high < 0) and self.p_value < ALPHA

    def as_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "scorer": self.scorer, "mean_diff": self.mean_diff,
                "ci95": [self.low, self.high], "p_value": self.p_value, "test": self.test,
                "wins": self.wins, "ties": self.ties, "losses": self.losses, "n": self.n,
                "detectable": self.detectable}


def _interval(values: np.ndarray, statistic=np.mean) -> tuple[float, float]:
    """95% percentile-bootstrap interval of `statistic` over `values` (a constant sample has a point interval)."""
    if len(values) < 2 or np.ptp(values) == 0:
        point = float(statistic(values)) if len(values) else float("nan")
        return point, point
    result = stats.bootstrap((values,), statistic, n_resamples=RESAMPLES, confidence_level=0.95,
                             method="percentile", random_state=np.random.default_rng(SEED), vectorized=True)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mean_with_interval(values: list[float]) -> Estimate:
    """The mean of `values` with its 95% bootstrap interval."""
    array = np.asarray(values, dtype=float)
    low, high = _interval(array, lambda x, axis=-1: np.mean(x, axis=axis))
    return Estimate(float(array.mean()) if len(array) else float("nan"), low, high, len(array))


def compare(a_name: str, b_name: str, scorer: str, a: list[float], b: list[float], binary: bool,
            higher_is_better: bool | None = True) -> Comparison:
    """b − a on paired scores (the same examples in the same order). `higher_is_better=None` (a scorer with no
    better direction, such as length) counts wins as b > a."""
    a_array, b_array = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_array.shape != b_array.shape:
        raise ValueError(f"{scorer}: {a_name} and {b_name} were scored on different examples")
    differences = b_array - a_array
    low, high = _interval(differences, lambda x, axis=-1: np.mean(x, axis=axis))
    sign = -1.0 if higher_is_better is False else 1.0
    wins = int(np.sum(sign * differences > TIE_TOLERANCE))
    losses = int(np.sum(sign * differences < -TIE_TOLERANCE))
    discordant = wins + losses
    # McNemar's exact test and the sign test are both the binomial test on the pairs that differ.
    p_value = float(stats.binomtest(wins, discordant, 0.5).pvalue) if discordant else 1.0
    return Comparison(a_name, b_name, scorer, float(differences.mean()) if len(differences) else float("nan"),
                      low, high, p_value, "mcnemar" if binary else "sign", wins, len(differences) - discordant,
                      losses, len(differences))


def relative_change(before: list[float], after: list[float]) -> Estimate:
    """mean(after) / mean(before) − 1 on paired samples, with its paired-bootstrap interval (the forgetting
    check's "general-text loss +1.8%")."""
    before_array, after_array = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    point = float(after_array.mean() / before_array.mean() - 1)
    if len(before_array) < 2 or np.ptp(after_array - before_array) == 0:
        return Estimate(point, point, point, len(before_array))
    result = stats.bootstrap((before_array, after_array), lambda x, y, axis=-1: y.mean(axis) / x.mean(axis) - 1,
                             paired=True, n_resamples=RESAMPLES, confidence_level=0.95, method="percentile",
                             random_state=np.random.default_rng(SEED), vectorized=True)
    return Estimate(point, float(result.confidence_interval.low), float(result.confidence_interval.high),
                    len(before_array))


def verdict_word(comparison: Comparison, higher_is_better: bool | None = True) -> str:
    """"better", "worse", "no detectable difference" — or "longer"/"shorter" for a scorer with no direction.

    Below 6 examples even a unanimous result has p ≥ 0.0625 (2 × 0.5⁵), so a small slice says so rather than
    leaving "no detectable difference" next to a large mean difference unexplained."""
    if not comparison.detectable:
        return "no detectable difference" + (" (too few examples to tell)" if comparison.n < 6 else "")
    if higher_is_better is None:
        return "higher" if comparison.mean_diff > 0 else "lower"
    improved = comparison.mean_diff > 0 if higher_is_better else comparison.mean_diff < 0
    return "better" if improved else "worse"
