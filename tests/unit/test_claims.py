"""nrnlib.claims: the bootstrap against independent computations, the decision rule at its
boundaries, the Claim record, and clear errors on bad input."""

import itertools
import math

import numpy as np
import pytest
import scipy.stats

from nrnlib import claims as C


def _frequencies(boot: np.ndarray, support: list[float]) -> list[float]:
    return [float(np.isclose(boot, v).mean()) for v in support]


# --------------------------------------------------------------------------------------------------
# the bootstrap
# --------------------------------------------------------------------------------------------------


def test_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(123)
    n_sims, covered = 300, 0
    for _ in range(n_sims):
        sample = rng.normal(loc=2.0, scale=3.0, size=40)
        est = C.bootstrap_ci(sample, n_boot=500, seed=int(rng.integers(1 << 30)))
        covered += est.ci_low < 2.0 < est.ci_high
    # percentile bootstrap at n = 40 covers slightly under nominal; 300 runs: sd of the rate ~ 0.013
    assert 0.88 <= covered / n_sims <= 0.99, covered / n_sims


def test_tiny_bootstrap_matches_the_hand_computed_distribution():
    # values [0, 0, 1]: a resample's mean is K/3 with K ~ Binomial(3, 1/3)
    boot = C.bootstrap_distribution([0.0, 0.0, 1.0], n_boot=40_000, seed=5)
    expected = [8 / 27, 12 / 27, 6 / 27, 1 / 27]
    assert np.allclose(_frequencies(boot, [0, 1 / 3, 2 / 3, 1]), expected, atol=0.01)
    est = C.bootstrap_ci([0.0, 0.0, 1.0], n_boot=40_000, seed=5)
    # 2.5% falls in the mass at 0; P(mean <= 2/3) = 26/27 < 0.975, so 97.5% falls in the mass at 1
    assert (est.estimate, est.ci_low, est.ci_high) == pytest.approx((1 / 3, 0.0, 1.0))
    assert est.n == 3 and est.shape == (3,)


def test_nested_design_resamples_seeds_then_examples_within_each():
    # seeds differ, examples within a seed equal: only the seed draw matters -> mean of 2 seeds
    boot = C.bootstrap_distribution([[0.0, 0.0], [1.0, 1.0]], n_boot=40_000, seed=1)
    assert np.allclose(_frequencies(boot, [0, 0.5, 1]), [1 / 4, 1 / 2, 1 / 4], atol=0.01)
    # seeds equal, examples differ: nested = 4 independent example draws -> Binomial(4, 1/2) / 4
    boot = C.bootstrap_distribution([[0.0, 1.0], [0.0, 1.0]], n_boot=40_000, seed=1)
    assert np.allclose(_frequencies(boot, [0, 0.25, 0.5, 0.75, 1]), [1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16],
                       atol=0.01)
    # crossed: one example draw shared by the seeds -> Binomial(2, 1/2) / 2
    boot = C.bootstrap_distribution([[0.0, 1.0], [0.0, 1.0]], n_boot=40_000, seed=1, design="crossed")
    assert np.allclose(_frequencies(boot, [0, 0.5, 1]), [1 / 4, 1 / 2, 1 / 4], atol=0.01)


def test_ci_agrees_with_scipy_percentile_bootstrap():
    sample = np.random.default_rng(7).normal(size=50)
    ours = C.bootstrap_ci(sample, n_boot=20_000)
    theirs = scipy.stats.bootstrap((sample,), np.mean, n_resamples=20_000, method="percentile", random_state=3)
    assert ours.ci_low == pytest.approx(theirs.confidence_interval.low, abs=0.02)
    assert ours.ci_high == pytest.approx(theirs.confidence_interval.high, abs=0.02)
    median = C.bootstrap_ci(sample, np.median, n_boot=20_000)
    theirs = scipy.stats.bootstrap((sample,), np.median, n_resamples=20_000, method="percentile", random_state=3)
    assert median.estimate == pytest.approx(np.median(sample))
    assert median.ci_low == pytest.approx(theirs.confidence_interval.low, abs=0.03)


def test_determinism_by_seed():
    sample = np.random.default_rng(0).exponential(size=30)
    assert C.bootstrap_ci(sample, seed=4) == C.bootstrap_ci(sample, seed=4)
    assert C.bootstrap_ci(sample, seed=4) != C.bootstrap_ci(sample, seed=5)
    grid = np.random.default_rng(0).normal(size=(3, 20))
    assert C.bootstrap_ci(grid, seed=2) == C.bootstrap_ci(grid, seed=2)


def test_paired_difference_uses_shared_units():
    rng = np.random.default_rng(2)
    b = rng.normal(size=40) * 10  # large between-unit spread ...
    a = b + 0.5 + rng.normal(size=40) * 0.01  # ... cancels in the paired difference
    est = C.paired_difference_ci(a, b)
    assert est.estimate == pytest.approx(np.mean(a - b))
    assert est.ci_low > 0.49 and est.ci_high < 0.51
    assert C.paired_difference_ci(a, b) == C.paired_difference_ci(a, b)


@pytest.mark.wrong_type  # arrays of two shapes: the annotation says the arms share their units' shape
def test_paired_arms_of_different_shapes_are_refused():
    b = np.random.default_rng(2).normal(size=40)
    with pytest.raises(ValueError, match="share units"):
        C.paired_difference_ci(b + 0.5, b[:-1])


def test_ratio_and_scaled_difference():
    rng = np.random.default_rng(3)
    den = rng.uniform(1, 2, size=60)
    num = 3 * den
    ratio = C.ratio_of_means_ci(num, den)
    assert (ratio.estimate, ratio.ci_low, ratio.ci_high) == pytest.approx((3, 3, 3))
    assert C.decide(ratio.ci_low, ratio.ci_high, 3, ">") == "inconclusive"
    num = 4 * den + rng.normal(size=60) * 0.1
    ratio = C.ratio_of_means_ci(num, den)
    margin = C.scaled_difference_ci(num, den, 3)
    assert ratio.estimate == pytest.approx(num.mean() / den.mean())
    assert margin.estimate == pytest.approx(num.mean() - 3 * den.mean())
    assert ratio.ci_low > 3 and margin.ci_low > 0  # the two forms agree where mean(den) > 0
    unpaired = C.ratio_of_means_ci(num, den[:30], paired=False)
    assert unpaired.estimate == pytest.approx(num.mean() / den[:30].mean()) and unpaired.n == 90
    with pytest.raises(ValueError, match="scaled_difference_ci"):
        C.ratio_of_means_ci(num, -den)


def test_correlation_ci():
    rng = np.random.default_rng(4)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    spearman = C.correlation_ci(x, y)
    pearson = C.correlation_ci(x, y, "pearson")
    assert spearman.estimate == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    assert pearson.estimate == pytest.approx(scipy.stats.pearsonr(x, y).statistic)
    assert -1 <= spearman.ci_low < spearman.estimate < spearman.ci_high <= 1
    monotone = C.correlation_ci(x, np.exp(x))
    assert (monotone.ci_low, monotone.ci_high) == pytest.approx((1, 1))
    with pytest.raises(ValueError, match="constant"):
        C.correlation_ci(x, np.ones(30))


def test_off_diagonal_mean_matches_exact_enumeration():
    m = np.array([[1.0, 0.2, 0.4], [0.3, 1.0, 0.9], [0.1, 0.5, 1.0]])
    est = C.off_diagonal_mean_ci(m, n_boot=40_000, seed=9)
    assert est.estimate == pytest.approx((m.sum() - 3) / 6)
    # the exact bootstrap distribution: 27 equally likely task resamples, of which the 3 that draw one
    # task thrice have no pair of distinct tasks (undefined, left out): 24 outcomes of 1/24 > 2.5% each,
    # so the 2.5% and 97.5% quantiles are the smallest and largest outcome
    values = []
    for draw in itertools.product(range(3), repeat=3):
        pairs = [m[a, b] for a, b in itertools.product(draw, draw) if a != b]
        if pairs:
            values.append(np.mean(pairs))
    assert len(values) == 24
    assert (est.ci_low, est.ci_high) == pytest.approx((min(values), max(values)))


@pytest.mark.wrong_type  # a [3, 2] array: the annotation says [unit, unit]
def test_off_diagonal_mean_refuses_a_non_square_matrix():
    m = np.array([[1.0, 0.2, 0.4], [0.3, 1.0, 0.9], [0.1, 0.5, 1.0]])
    with pytest.raises(ValueError, match="square"):
        C.off_diagonal_mean_ci(m[:, :2])


# --------------------------------------------------------------------------------------------------
# the rule and the record
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("low", "high", "direction", "verdict"), [
    (0.11, 0.2, ">", "holds"),
    (0.10, 0.2, ">", "inconclusive"),  # touching the threshold is not past it
    (0.05, 0.2, ">", "inconclusive"),
    (0.0, 0.10, ">", "inconclusive"),
    (0.0, 0.09, ">", "does not hold"),
    (0.0, 0.09, "<", "holds"),
    (0.0, 0.10, "<", "inconclusive"),
    (0.10, 0.2, "<", "inconclusive"),
    (0.11, 0.2, "<", "does not hold"),
    (0.10, 0.10, ">", "inconclusive"),
])
def test_decide_at_the_boundaries(low, high, direction, verdict):
    assert C.decide(low, high, 0.10, direction) == verdict


@pytest.mark.parametrize(("args", "message"), [
    ((0.0, 1.0, 0.5, ">="), "direction"),
    ((float("nan"), 1.0, 0.5, ">"), "finite"),
    ((0.0, float("inf"), 0.5, ">"), "finite"),
    ((1.0, 0.0, 0.5, ">"), "above ci_high"),
])
def test_decide_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        C.decide(*args)


@pytest.mark.parametrize(("values", "message"), [
    ([], "empty"),
    ([1.0], "at least 2"),
    ([1.0, float("nan"), 2.0], "non-finite"),
    (np.zeros((2, 2, 2)), "1-D"),
    pytest.param(["a", "b"], "numbers", marks=pytest.mark.wrong_type),
])
def test_bootstrap_rejects_bad_input(values, message):
    with pytest.raises(ValueError, match=message):
        C.bootstrap_ci(values)


def test_bootstrap_rejects_bad_options():
    with pytest.raises(ValueError, match="n_boot"):
        C.bootstrap_ci([1.0, 2.0], n_boot=10)
    with pytest.raises(ValueError, match="level"):
        C.bootstrap_ci([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match="design"):
        C.bootstrap_ci([[1.0, 2.0]], design="flat")
    with pytest.raises(ValueError, match="one number"):
        C.bootstrap_ci([1.0, 2.0], lambda x, axis: x)


def _claim(estimate: C.Estimate, threshold: float = 0.1, direction: str = ">") -> C.Claim:
    return C.make_claim("ours.test.claim", paper="ours", statement="s", paper_value="-", statistic="mean",
                        estimate=estimate, threshold=threshold, direction=direction, unit="examples",
                        scope="all tasks", notebook="00_model_and_tasks", figure="00_zero_few_shot", profile="smoke")


def test_claim_round_trip_and_consistency():
    claim = _claim(C.bootstrap_ci([0.3, 0.4, 0.5, 0.6]))
    assert claim.verdict == "holds" and claim.n == 4
    assert C.Claim.from_dict(claim.as_dict()) == claim
    assert all(isinstance(v, (str, int, float)) for v in claim.as_dict().values())
    bad = {**claim.as_dict(), "verdict": "does not hold"}
    with pytest.raises(ValueError, match="does not follow the rule"):
        C.Claim.from_dict(bad)
    with pytest.raises(ValueError, match="unknown keys"):
        C.Claim.from_dict({**claim.as_dict(), "extra": 1})
    with pytest.raises(ValueError, match="missing keys"):
        C.Claim.from_dict({k: v for k, v in claim.as_dict().items() if k != "threshold"})
    with pytest.raises(ValueError, match="paper"):
        C.Claim.from_dict({**claim.as_dict(), "paper": "C"})
    with pytest.raises(ValueError, match="direction"):
        _claim(C.bootstrap_ci([0.3, 0.4]), direction="=")


@pytest.mark.wrong_type
def test_make_claim_refuses_what_is_not_an_estimate():
    with pytest.raises(ValueError, match="Estimate"):
        C.make_claim("x", paper="A", statement="", paper_value="", statistic="", estimate=(0.1, 0, 1),
                     threshold=0, direction=">", unit="", scope="", notebook="", profile="smoke")


def test_tally_claim_counts_per_unit_verdicts():
    per_task = [_claim(C.Estimate(0.5, lo, hi, 10)) for lo, hi in
                [(0.2, 0.8), (0.2, 0.8), (0.2, 0.8), (0.0, 0.8), (0.0, 0.05), (0.0, 0.05)]]
    assert [c.verdict for c in per_task] == ["holds"] * 3 + ["inconclusive"] + ["does not hold"] * 2
    tally = C.tally_claim("ours.test.tally", per_task, 4, paper="ours", statement="s", paper_value="-",
                          scope="classification", notebook="00", profile="smoke")
    assert (tally.estimate, tally.ci_low, tally.ci_high, tally.verdict) == (3, 3, 4, "inconclusive")
    assert C.tally_claim("t", per_task, 3, paper="ours", statement="", paper_value="", scope="", notebook="",
                         profile="smoke").verdict == "holds"
    assert C.tally_claim("t", per_task, 5, paper="ours", statement="", paper_value="", scope="", notebook="",
                         profile="smoke").verdict == "does not hold"
    with pytest.raises(ValueError, match="at_least"):
        C.tally_claim("t", per_task, 7, paper="ours", statement="", paper_value="", scope="", notebook="",
                      profile="smoke")


def test_claims_table_is_tidy():
    table = C.claims_table([_claim(C.Estimate(0.123456, 0.1, 0.2, 4))])
    assert table.loc[0, "estimate [95% CI]"] == "0.123 [0.100, 0.200]"
    assert table.loc[0, "verdict"] == "inconclusive"
    assert not any(math.isnan(v) if isinstance(v, float) else False for v in table.iloc[0])


# --------------------------------------------------------------------------------------------------
# the notebooks' claim builders on hand-made tables
# --------------------------------------------------------------------------------------------------


def test_suite_claims_on_a_hand_table():
    import pandas as pd

    from nrnlib.experiments import suite_claims

    rows = []
    # six tasks, 20 examples, chance 0.5: calibrated correct counts per task (zero-shot, 2-shot)
    counts = {"t1": (20, 19), "t2": (20, 18), "t3": (10, 20), "t4": (20, 20), "t5": (12, 11), "t6": (4, 2)}
    for task, (zero, few) in counts.items():
        for setting, k in (("zero-shot", zero), ("2-shot", few)):
            correct = [1.0] * k + [0.0] * (20 - k)
            rows.append({"task": task, "category": "classification", "setting": setting, "chance": 0.5,
                         "accuracy": 0.5, "calibrated_accuracy": k / 20,
                         "per_example": {"correct": [0.0] * 20, "calibrated_correct": correct}})
    rows.append({"task": "g", "category": "generation", "setting": "zero-shot", "chance": 0.0,
                 "per_example": {"rougeL": [0.1, 0.2]}})
    claims = suite_claims(pd.DataFrame(rows), "smoke")
    per_task = {c.scope: c for c in claims if c.id == "ours.foundation.above_chance.per_task"}
    assert list(per_task) == ["t1", "t2", "t3", "t4", "t5", "t6"]
    assert per_task["t3"].estimate == pytest.approx(0.5) and "2-shot" in per_task["t3"].statistic  # better setting
    assert per_task["t1"].estimate == pytest.approx(0.5) and per_task["t1"].verdict == "holds"
    assert per_task["t6"].verdict == "does not hold"
    summary = next(c for c in claims if c.id == "ours.foundation.above_chance")
    n_holds = sum(c.verdict == "holds" for c in per_task.values())
    assert summary.estimate == n_holds and summary.threshold == 3.5
    plain = next(c for c in claims if c.id == "ours.foundation.above_chance_plain")
    assert plain.verdict == "does not hold"  # plain: every example wrong, far below chance
    assert all(C.Claim.from_dict(c.as_dict()) == c for c in claims)


def test_detection_claims_on_hand_tables():
    import pandas as pd

    from nrnlib.experiments import detection_claims

    tasks = ["a", "b", "c", "d", "e"]
    stability = pd.DataFrame(
        [{"selection": sel, "task": t, "chunks_per_half": m, "iou": iou + 0.01 * i, "chance": 0.1 / 1.9}
         for m in (1, 4) for sel, iou in (("plain", 0.6 if m == 4 else 0.01), ("specific", 0.3))
         for i, t in enumerate(tasks)])
    rng = np.random.default_rng(0)
    matrices = [0.3 + 0.05 * rng.random((5, 5)), 0.02 + 0.01 * rng.random((5, 5))]
    for m in matrices:
        np.fill_diagonal(m, 1.0)
    plain, specific = (pd.DataFrame(m, index=tasks, columns=tasks) for m in matrices)
    claims = detection_claims(stability, {"plain": plain, "specific": specific}, 0.1, "smoke")
    by = {(c.id, c.scope.split()[0]): c for c in claims}
    stable = by[("ours.detection.stability", "plain")]
    assert stable.estimate == pytest.approx(0.62) and stable.verdict == "holds"  # largest half size only
    assert stable.threshold == pytest.approx(0.1 / 1.9)
    overlap = by[("ours.detection.specific_overlap", "top-10%,")]
    diff = plain.to_numpy() - specific.to_numpy()
    assert overlap.estimate == pytest.approx((diff.sum() - np.trace(diff)) / 20) and overlap.verdict == "holds"
    assert by[("ours.detection.plain_shared", "plain")].verdict == "holds"
    with pytest.raises(ValueError, match="same tasks"):
        detection_claims(stability, {"plain": plain, "specific": specific.iloc[::-1]}, 0.1, "smoke")
