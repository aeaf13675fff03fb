"""Confidence intervals of the evaluation protocol against published values."""

import numpy as np
import pytest

from smallsample.evaluate import mean_ci95, mean_ci95_runs

# t(0.975, df) from a printed table (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2)
T975 = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 29: 2.045}


@pytest.mark.parametrize("df", sorted(T975))
def test_runs_interval_is_student_t_with_the_sample_deviation(df):
    x = np.random.default_rng(df).normal(0.8, 0.02, size=df + 1)
    s = np.sqrt(((x - x.mean()) ** 2).sum() / df)  # float64, by hand
    got = mean_ci95_runs(x)
    assert got.mean == pytest.approx(x.mean(), rel=1e-12)
    assert got.ci95 == pytest.approx(T975[df] * s / np.sqrt(df + 1), rel=2e-4)


def test_three_seeds_interval_is_wider_than_the_episode_one():
    seeds = [0.8854, 0.8737, 0.8581]
    assert mean_ci95_runs(seeds).ci95 == pytest.approx(4.303 * np.std(seeds, ddof=1) / np.sqrt(3),
                                                       rel=2e-4)
    assert mean_ci95_runs(seeds).ci95 / mean_ci95(seeds).ci95 == pytest.approx(
        4.303 * np.sqrt(3 / 2) / 1.96, rel=2e-4)


@pytest.mark.parametrize("bad, match", [([0.5], "at least 2 runs"), ([[0.5, 0.6]], "1-D"),
                                        ([0.5, float("nan")], r"finite; got \[nan\]")])
def test_runs_interval_refuses_what_has_no_interval(bad, match):
    with pytest.raises(ValueError, match=match):
        mean_ci95_runs(bad)
