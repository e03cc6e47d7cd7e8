"""The statistics: intervals that cover, paired differences that are zero for identical systems, exact tests."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tunelab.eval.stats import compare, mean_with_interval, relative_change, verdict_word


def test_identical_scores_give_no_detectable_difference():
    scores = [0.2, 0.9, 0.5, 0.5, 1.0, 0.0]
    comparison = compare("base", "fine_tuned", "rubric", scores, list(scores), binary=False)
    assert comparison.mean_diff == 0 and (comparison.low, comparison.high) == (0, 0)
    assert (comparison.wins, comparison.ties, comparison.losses) == (0, 6, 0) and comparison.p_value == 1
    assert verdict_word(comparison) == "no detectable difference"


def test_a_clear_gain_is_detected_and_a_noisy_one_is_not():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 0.5, 60)
    clear = compare("base", "fine_tuned", "rubric", list(base), list(base + 0.3), binary=False)
    assert clear.detectable and clear.low > 0.29 and verdict_word(clear) == "better"
    noisy = compare("base", "fine_tuned", "rubric", list(base), list(base + rng.normal(0, 0.3, 60)), binary=False)
    assert noisy.low < 0 < noisy.high and verdict_word(noisy) == "no detectable difference"


def test_mcnemar_is_the_exact_binomial_test_on_discordant_pairs():
    a = [1] * 10 + [0] * 12 + [1] * 3 + [0] * 5  # 12 gained by b, 3 lost, 15 unchanged
    b = [1] * 10 + [1] * 12 + [0] * 3 + [0] * 5
    comparison = compare("base", "fine_tuned", "ended_turn", a, b, binary=True)
    assert (comparison.wins, comparison.ties, comparison.losses) == (12, 15, 3)
    assert comparison.p_value == pytest.approx(scipy_stats.binomtest(12, 15, 0.5).pvalue)
    assert comparison.test == "mcnemar"


def test_lower_is_better_counts_wins_the_other_way():
    comparison = compare("a", "b", "loss", [3.0, 3.0, 3.0], [2.0, 2.0, 4.0], binary=False, higher_is_better=False)
    assert (comparison.wins, comparison.losses) == (2, 1)


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small, large = mean_with_interval(list(rng.uniform(size=20))), mean_with_interval(list(rng.uniform(size=500)))
    assert small.low < small.mean < small.high and large.low < large.mean < large.high
    assert large.high - large.low < small.high - small.low
    assert mean_with_interval([0.5, 0.5]).as_dict() == {"mean": 0.5, "ci95": [0.5, 0.5], "n": 2}


def test_relative_change_of_paired_losses():
    before = [2.0, 3.0, 2.5, 2.2, 2.8]
    assert relative_change(before, before).mean == 0 and relative_change(before, before).high == 0
    worse = relative_change(before, [b * 1.1 for b in before])
    assert worse.mean == pytest.approx(0.1) and worse.low == pytest.approx(0.1) and worse.high == pytest.approx(0.1)


def test_a_few_losses_and_no_gains_are_not_called_a_difference():
    # 4 of 80 probes lost, none gained: the bootstrap interval alone would exclude zero; McNemar's p = 0.125.
    before, after = [1.0] * 80, [1.0] * 76 + [0.0] * 4
    comparison = compare("base", "fine_tuned", "probes", before, after, binary=True)
    assert comparison.high < 0 and comparison.p_value == pytest.approx(0.125)
    assert not comparison.detectable and verdict_word(comparison) == "no detectable difference"


def test_a_slice_too_small_for_any_test_says_so():
    unanimous = compare("base", "fine_tuned", "rubric", [0.3] * 5, [0.9] * 5, binary=False)
    assert unanimous.p_value == pytest.approx(0.0625) and unanimous.low > 0
    assert verdict_word(unanimous) == "no detectable difference (too few examples to tell)"
    assert verdict_word(compare("base", "fine_tuned", "rubric", [0.3] * 6, [0.9] * 6, binary=False)) == "better"
