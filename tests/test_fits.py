import math
import warnings

import numpy as np
import powerlaw
import pytest
import torch
from scipy import stats

from pythia_dynamics.fits import (
    FAMILIES,
    NU_MAX,
    POWERLAW_MIN_TAIL,
    POWERLAW_TAIL_SIZES,
    QQ_PROBABILITIES,
    WEIGHT_BINS,
    FixedBinHistogram,
    Reservoir,
    RunningMoments,
    SymlogBins,
    fit_distributions,
    fit_powerlaw_tail,
    fit_student_t,
    ks_distance,
    subsample,
)
from pythia_dynamics.fits import _bin_tables

SCALE = 0.02  # weights' scale: the fits must not care about units
PLANTED = {
    "gaussian": (stats.norm(0.001, SCALE), {}),
    "logistic": (stats.logistic(0.0, SCALE), {}),
    "student_t": (stats.t(3, 0.0, SCALE), {"nu": 3.0}),
    "gennorm": (stats.gennorm(1.0, 0.0, SCALE), {"beta": 1.0}),
}


@pytest.fixture(scope="module")
def planted_reports():
    """50k draws from each family (fixed seeds) and their fits."""
    out = {}
    for seed, (family, (dist, _)) in enumerate(PLANTED.items(), start=1):
        sample = dist.rvs(size=50_000, random_state=seed)
        out[family] = (sample, fit_distributions(sample))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_planted_family_is_recovered(planted_reports, family):
    _, report = planted_reports[family]
    assert report.n_fit == 50_000 and not report.subsampled
    fit = report.families[family]
    if family == "gaussian":
        # AIC may prefer a nested family (about 1 sample in 5 is Gaussian-looking enough for a
        # spare parameter to gain 1 nat), so accept that only with a Gaussian shape; BIC must not.
        assert report.best_family_bic == "gaussian"
        nested = report.families[report.best_family].params
        assert report.best_family == "gaussian" or nested.get("nu", math.inf) > 30 or abs(nested.get("beta", 2) - 2) < 0.1
    else:
        assert report.best_family == family and report.best_family_bic == family
    # Planted shape within stated tolerance; scale within 3%.
    for shape, truth in PLANTED[family][1].items():
        assert fit.params[shape] == pytest.approx(truth, abs=0.3 if shape == "nu" else 0.1)
    assert fit.params["scale"] == pytest.approx(SCALE, rel=0.03)
    assert abs(fit.params["loc"] - PLANTED[family][0].mean()) < 0.05 * SCALE
    # The nested families find Gaussian data Gaussian.
    if family == "gaussian":
        assert report.families["student_t"].params["nu"] > 30
        assert report.families["gennorm"].params["beta"] == pytest.approx(2.0, abs=0.1)


def test_loglik_aic_and_ks_are_what_scipy_computes(planted_reports):
    sample, report = planted_reports["student_t"]
    for fit in report.families.values():
        dist = fit.frozen()
        loglik = dist.logpdf(sample).sum()
        assert fit.loglik == pytest.approx(loglik, rel=1e-9)
        assert fit.loglik_per_sample == pytest.approx(loglik / len(sample), rel=1e-9)
        assert fit.aic == pytest.approx(2 * len(fit.params) - 2 * loglik, rel=1e-9)
        assert fit.ks == pytest.approx(stats.kstest(sample, dist.cdf).statistic, rel=1e-9)
    scalars = report.scalars()
    assert scalars["best_family_index"] == FAMILIES.index("student_t")
    assert scalars["student_t_nu"] == report.families["student_t"].params["nu"]
    assert all(isinstance(v, float) for v in scalars.values())


@pytest.mark.parametrize("family", ["logistic", "student_t", "gennorm"])
def test_fits_match_scipy_full_sample_fit(planted_reports, family):
    """Same optimum as scipy's own fit on the same (not subsampled) sample, within 1e-3 relative."""
    sample, report = planted_reports[family]
    scipy_dist = {"logistic": stats.logistic, "student_t": stats.t, "gennorm": stats.gennorm}[family]
    reference = scipy_dist.fit(sample)
    ours = report.families[family]
    assert list(ours.params.values()) == pytest.approx(list(reference), rel=1e-3, abs=1e-3 * SCALE)
    # and a likelihood no worse than scipy's
    assert ours.loglik >= scipy_dist.logpdf(sample, *reference).sum() - 1e-3


def test_student_t_fit_standalone_matches_scipy():
    sample = stats.t.rvs(5, 1.0, 3.0, size=5_000, random_state=7)
    assert fit_student_t(sample) == pytest.approx(stats.t.fit(sample), rel=2e-3)
    # Gaussian data run into the cap rather than wandering off.
    assert fit_student_t(stats.norm.rvs(size=5_000, random_state=8))[0] > 30
    assert fit_student_t(stats.norm.rvs(size=5_000, random_state=8))[0] <= NU_MAX


def test_subsampled_fit_stays_close_to_the_full_sample_fit():
    """Fitting 50k of 200k draws moves nu by < 0.25, beta by < 0.05 and scales by < 3% (about 4 SE)."""
    for family, shape, tol in [("student_t", "nu", 0.25), ("gennorm", "beta", 0.05)]:
        sample = PLANTED[family][0].rvs(size=200_000, random_state=11)
        full = fit_distributions(sample, max_samples=200_000)
        sub = fit_distributions(sample, max_samples=50_000, seed=3)
        assert sub.subsampled and sub.n_fit == 50_000 and sub.n_total == 200_000 and not full.subsampled
        a, b = full.families[family].params, sub.families[family].params
        assert b[shape] == pytest.approx(a[shape], abs=tol)
        assert b["scale"] == pytest.approx(a["scale"], rel=0.03)
        assert sub.best_family == full.best_family == family
        assert fit_distributions(sample, max_samples=50_000, seed=3).scalars() == sub.scalars()  # seeded


def planted_tail(alpha: float, x_min: float, n_bulk: int, n_tail: int, seed: int) -> np.ndarray:
    """|N(0, 1)| below x_min, then a Pareto tail of density ∝ x^-alpha above it (shuffled)."""
    rng = np.random.default_rng(seed)
    bulk = np.abs(rng.normal(size=n_bulk))
    tail = x_min * (1 - rng.random(n_tail)) ** (-1 / (alpha - 1))
    return rng.permutation(np.concatenate([bulk[bulk < x_min], tail]))


def powerlaw_package_fit(values, **kwargs):
    # powerlaw warns about the zeros it drops and the fits it rejects while searching x_min: expected here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return powerlaw.Fit(values, discrete=False, verbose=False, **kwargs)


# powerlaw 2.0 fits alpha in closed form only inside (1.5, 3] (numerically, to ~1e-4, outside) and rejects
# x_min whose alpha leaves (0, 3): planted alphas inside (1.5, 3) make its search exactly Clauset's, ours.
@pytest.mark.parametrize(
    "alpha, x_min, n_bulk, n_tail, seed",
    [(2.5, 2.0, 4_000, 1_000, 0), (2.0, 1.5, 3_000, 800, 1), (2.8, 2.5, 5_000, 1_500, 2)],
)
def test_all_candidates_equal_the_powerlaw_package_on_a_planted_tail(alpha, x_min, n_bulk, n_tail, seed):
    x = planted_tail(alpha, x_min, n_bulk, n_tail, seed)
    ours, theirs = fit_powerlaw_tail(x), powerlaw_package_fit(x)
    assert ours.x_min == pytest.approx(theirs.xmin, rel=1e-12) and ours.n_tail == theirs.n_tail
    assert ours.alpha == pytest.approx(theirs.alpha, rel=1e-12) and ours.ks == pytest.approx(theirs.D, rel=1e-12)
    assert ours.alpha == pytest.approx(alpha, abs=3 * ours.alpha_stderr)
    assert 0.9 * x_min < ours.x_min < 1.5 * x_min  # the KS minimum may sit above x_min: a Pareto's tails are Pareto


def test_all_candidates_equal_the_powerlaw_package_with_ties_and_zeros():
    # float16 rounding repeats values (as 16-bit weights do); zeros are dropped by both
    x = np.concatenate([np.zeros(300), planted_tail(2.5, 2.0, 4_000, 1_000, 3).astype(np.float16).astype(np.float64)])
    ours, theirs = fit_powerlaw_tail(x), powerlaw_package_fit(x)
    assert len(np.unique(x)) < len(x) - 1_000
    assert ours.x_min == theirs.xmin and ours.n_tail == theirs.n_tail
    assert ours.alpha == pytest.approx(theirs.alpha, rel=1e-12) and ours.ks == pytest.approx(theirs.D, rel=1e-12)
    assert ours.tail_fraction == ours.n_tail / len(x)


@pytest.mark.parametrize("seed, dtype", [(0, np.float64), (1, np.float64), (2, np.float16)])
def test_log_spaced_candidates_against_the_powerlaw_package(seed, dtype):
    """The log-spaced option: the candidate the powerlaw package scores best, alpha within one standard error."""
    x = planted_tail(2.5, 2.0, 4_000, 1_000, seed).astype(dtype).astype(np.float64)
    ours = fit_powerlaw_tail(x, candidates=POWERLAW_TAIL_SIZES, min_tail=POWERLAW_MIN_TAIL)
    # the candidates by definition: the smallest value of each of 100 tail sizes, log-spaced from 100 to all
    a = np.sort(x)
    sizes = np.unique(np.round(np.geomspace(POWERLAW_MIN_TAIL, len(a), POWERLAW_TAIL_SIZES)).astype(int))
    candidates = np.unique(a[len(a) - sizes])
    candidates = candidates[candidates < a[-1]]  # a tail of one value has no exponent
    scored = {x_min: powerlaw_package_fit(x, xmin=x_min).power_law for x_min in candidates}
    best = min(scored, key=lambda x_min: scored[x_min].D)
    assert ours.x_min == best and ours.ks == pytest.approx(scored[best].D, rel=1e-12)
    assert ours.alpha == pytest.approx(scored[best].alpha, rel=1e-12)
    every = powerlaw_package_fit(x)
    assert ours.alpha == pytest.approx(every.alpha, abs=(every.alpha - 1) / math.sqrt(every.n_tail))
    assert ours.ks >= every.D  # fewer candidates: never a better fit than the full search


def test_powerlaw_tail_of_a_pareto_sample():
    rng = np.random.default_rng(0)
    x = (rng.pareto(1.5, 50_000) + 1.0) * rng.choice([-1, 1], 50_000)  # |x| has density ∝ x^-2.5 above 1
    fit = fit_powerlaw_tail(np.abs(x), candidates=POWERLAW_TAIL_SIZES, min_tail=POWERLAW_MIN_TAIL)
    assert fit.alpha == pytest.approx(2.5, abs=0.15)
    # Every tail of a pure Pareto is Pareto, so the KS minimum may sit a little above the true x_min.
    assert 1.0 <= fit.x_min < 1.5
    assert fit.tail_fraction == fit.n_tail / 50_000 and fit.n_tail >= 100
    assert fit.alpha_stderr == pytest.approx((fit.alpha - 1) / math.sqrt(fit.n_tail))
    # alpha is the continuous MLE on the tail; KS as the powerlaw package computes it there.
    tail = np.abs(x)[np.abs(x) >= fit.x_min]
    assert fit.alpha == pytest.approx(1 + len(tail) / np.log(tail / fit.x_min).sum())
    assert fit.ks == pytest.approx(powerlaw_package_fit(tail, xmin=fit.x_min).power_law.D, rel=1e-12)
    # fit_distributions fits |x| with these candidates; its QQ data against the power law fall on the
    # diagonal through the body of the tail.
    report = fit_distributions(x)
    assert report.powerlaw == fit
    p, model, empirical = report.qq_powerlaw.T
    inner = (p >= 0.05) & (p <= 0.95)
    assert np.allclose(empirical[inner], model[inner], rtol=0.1)
    assert np.array_equal(empirical, np.quantile(tail, QQ_PROBABILITIES))


def test_powerlaw_fit_with_too_few_values_is_nan():
    fit = fit_powerlaw_tail(np.array([0.0] * 500 + [1.0] * 50), min_tail=100)
    assert math.isnan(fit.alpha) and fit.n_tail == 0
    assert fit_powerlaw_tail(np.array([0.0, 3.0, 3.0, 3.0])).n_tail == 0  # one distinct value: no exponent


@pytest.mark.parametrize(
    "values, options, message",
    [
        ([-1.0, 2.0], {}, "nonnegative"),
        ([1.0, np.nan, 2.0], {}, "NaN or inf"),
        ([1.0, 2.0], {"candidates": "every"}, "candidates"),
        ([1.0, 2.0], {"candidates": 0}, "candidates"),
        ([1.0, 2.0], {"min_tail": 1}, "min_tail"),
    ],
)
def test_powerlaw_fit_rejects_bad_input(values, options, message):
    with pytest.raises(ValueError, match=message):
        fit_powerlaw_tail(np.array(values), **options)


def test_fit_student_t_takes_no_standardised_flag():
    # it was accepted and ignored; the sample is always standardised internally
    with pytest.raises(TypeError, match="standardised"):
        fit_student_t(np.random.default_rng(0).normal(size=500), standardised=True)


def test_qq_gaussian_data(planted_reports):
    sample, report = planted_reports["gaussian"]
    p, model, empirical = report.qq_gaussian.T
    assert np.array_equal(p, QQ_PROBABILITIES) and len(p) == 103
    assert np.array_equal(empirical, np.quantile(sample, QQ_PROBABILITIES))
    g = report.families["gaussian"].params
    assert np.allclose(model, stats.norm(g["loc"], g["scale"]).ppf(QQ_PROBABILITIES))
    bulk = (p >= 0.01) & (p <= 0.99)
    assert np.max(np.abs(empirical[bulk] - model[bulk])) < 0.05 * SCALE
    # Student-t data bend away from the Gaussian line in the tails.
    _, t_report = planted_reports["student_t"]
    _, t_model, t_empirical = t_report.qq_gaussian.T
    assert t_empirical[0] < 1.5 * t_model[0] and t_empirical[-1] > 1.5 * t_model[-1]


def test_fit_rejects_what_it_cannot_fit():
    with pytest.raises(ValueError, match="no spread"):
        fit_distributions(np.full(1000, 0.5))
    with pytest.raises(ValueError, match="non-finite"):
        fit_distributions(np.r_[np.random.default_rng(0).normal(size=1000), np.nan])
    with pytest.raises(ValueError, match="at least"):
        fit_distributions(np.arange(10.0))


def test_ks_distance_matches_kstest():
    x = stats.logistic.rvs(size=3000, random_state=2)
    assert ks_distance(x, stats.norm(0, 1.7).cdf) == pytest.approx(stats.kstest(x, stats.norm(0, 1.7).cdf).statistic)


def _uneven_chunks(x, n_chunks=7, seed=0):
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, len(x)), n_chunks - 1, replace=False))
    return np.split(x, cuts)


def test_running_moments_in_uneven_chunks_equal_one_shot():
    rng = np.random.default_rng(1)
    # Far from zero and skewed: the update must not lose precision to the mean.
    x = 1000.0 + rng.lognormal(0.0, 0.7, 100_003)
    chunks = _uneven_chunks(x)
    assert len(chunks) == 7 and len({len(c) for c in chunks}) == 7
    running = RunningMoments()
    for chunk in chunks:
        running.update(chunk)
    assert running.count == len(x)
    assert running.mean == pytest.approx(np.mean(x), rel=1e-12)
    assert running.std == pytest.approx(np.std(x), rel=1e-9)
    assert running.skew == pytest.approx(stats.skew(x), rel=1e-7)
    assert running.excess_kurtosis == pytest.approx(stats.kurtosis(x, fisher=True), rel=1e-7)
    assert running.max_abs == np.abs(x).max()
    one_shot = RunningMoments.of(x)
    for attr in ("mean", "std", "skew", "excess_kurtosis"):
        assert getattr(running, attr) == pytest.approx(getattr(one_shot, attr), rel=1e-9)
    # Two accumulators merged == one over both; float32 tensors are summed in float64.
    left, right = RunningMoments.of(torch.tensor(x[:500])), RunningMoments.of(x[500:])
    assert left.merge(right).excess_kurtosis == pytest.approx(stats.kurtosis(x), rel=1e-7)
    t32 = torch.from_numpy(rng.standard_t(4, 30_000).astype(np.float32))
    m32 = RunningMoments()
    for piece in t32.split(4_321):
        m32.update(piece)
    assert m32.excess_kurtosis == pytest.approx(stats.kurtosis(t32.double().numpy()), rel=1e-9)
    assert math.isnan(RunningMoments().std) and math.isnan(RunningMoments().excess_kurtosis)
    assert math.isnan(RunningMoments.of(np.ones(5)).skew)


def test_symlog_bins_are_fixed_symmetric_and_log_spaced_in_the_tails():
    edges = WEIGHT_BINS.edges()
    assert np.array_equal(edges, SymlogBins(0.002, 10.0, 240).edges())
    assert len(edges) == 241 and edges[0] == -10.0 and edges[-1] == 10.0 and edges[120] == 0.0
    assert np.allclose(edges, -edges[::-1]) and np.all(np.diff(edges) > 0)
    tail = edges[200:]  # beyond ~0.1: constant relative width
    ratios = tail[1:] / tail[:-1]
    assert np.allclose(ratios, ratios[0], rtol=1e-3)
    with pytest.raises(ValueError, match="even"):
        SymlogBins(0.002, 10.0, 7)


def test_fixed_bin_histogram_in_chunks_equals_numpy_histogram():
    edges = WEIGHT_BINS.edges()
    rng = np.random.default_rng(2)
    x = np.concatenate([
        rng.standard_t(2, 50_000) * 0.05,
        edges,  # values exactly on every edge, the last one included (numpy's last bin is closed)
        np.nextafter(edges, -np.inf), [-50.0, 12.0, np.inf, -np.inf],
    ])  # fmt: skip
    rng.shuffle(x)
    x = np.concatenate([x, [np.nan, np.nan]])
    hist = FixedBinHistogram(edges)
    for chunk in _uneven_chunks(x):
        hist.update(chunk)
    finite = x[~np.isnan(x)]
    assert np.array_equal(hist.counts, np.histogram(finite, edges)[0])
    assert hist.underflow == (finite < edges[0]).sum() and hist.overflow == (finite > edges[-1]).sum()
    assert hist.nan_count == 2 and hist.total == len(x)
    # float32 and bfloat16 tensors are binned exactly, as numpy bins their float64 values.
    for dtype in (torch.float32, torch.bfloat16):
        t = torch.from_numpy(np.concatenate([x, edges]).astype(np.float32)).to(dtype)
        h = FixedBinHistogram(edges)
        for piece in t.split(9_999):
            h.update(piece)
        as64 = t.double().numpy()
        assert np.array_equal(h.counts, np.histogram(as64[~np.isnan(as64)], edges)[0])
    with pytest.raises(ValueError, match="increasing"):
        FixedBinHistogram([0.0, 1.0, 1.0])


@pytest.mark.parametrize("kind", ["irregular", "log-spaced"])  # a lookup table / too uneven for one
def test_fixed_bin_histogram_on_other_edges(kind):
    rng = np.random.default_rng(3)
    edges = np.cumsum(rng.uniform(0.01, 0.1, 300)) - 10 if kind == "irregular" else np.geomspace(1e-12, 1e3, 60)
    x = np.concatenate([rng.normal(0, 5, 20_000), np.abs(rng.standard_cauchy(20_000)), edges, np.nextafter(edges, np.inf)])
    for data in (x, x.astype(np.float32)):
        hist = FixedBinHistogram(edges)
        for chunk in _uneven_chunks(data):
            hist.update(chunk)
        as64 = data.astype(np.float64)
        assert np.array_equal(hist.counts, np.histogram(as64, edges)[0])
        assert hist.underflow == (as64 < edges[0]).sum() and hist.overflow == (as64 > edges[-1]).sum()
    assert (_bin_tables(edges.tobytes(), np.dtype(np.float64))[1] is None) == (kind == "log-spaced")


def test_reservoir_is_uniform_and_independent_of_chunking():
    x = np.arange(20_000, dtype=np.float64)
    whole = Reservoir(500, seed=4).update(x).sample()
    chunked = Reservoir(500, seed=4)
    for chunk in _uneven_chunks(x, seed=9):
        chunked.update(torch.from_numpy(chunk))
    assert np.array_equal(chunked.sample(), whole) and chunked.seen == 20_000
    assert len(whole) == 500 and len(np.unique(whole)) == 500 and np.all(np.diff(whole) > 0)
    assert not np.array_equal(Reservoir(500, seed=5).update(x).sample(), whole)
    # Uniform: the kept positions look like draws from U(0, 20000).
    assert stats.kstest(whole, stats.uniform(0, 20_000).cdf).pvalue > 1e-3
    assert np.array_equal(Reservoir(10).update(x[:7]).sample(), x[:7])


def test_subsample():
    x = torch.arange(1000, dtype=torch.float32).reshape(10, 100)
    assert np.array_equal(subsample(x, 1000), np.arange(1000.0))
    s = subsample(x, 100, seed=1)
    assert len(s) == 100 and len(np.unique(s)) == 100 and np.all(np.diff(s) > 0) and s.dtype == np.float64
    assert np.array_equal(s, subsample(x, 100, seed=1)) and not np.array_equal(s, subsample(x, 100, seed=2))


def test_extremely_heavy_tails_do_not_overflow_the_student_t_fit():
    # Gradients at the first steps of training look like this: tiny scale, tails over many decades.
    rng = np.random.default_rng(7)
    sample = rng.standard_t(0.3, 20_000) * 1e-7
    report = fit_distributions(sample)
    assert np.isfinite(report.families["student_t"].params["scale"])
    assert report.families["student_t"].params["nu"] < 1.0


def test_reservoir_keeps_exactly_the_smallest_keys_of_the_whole_stream():
    """The sample is the `capacity` values whose keys (the generator's draws, one per value in stream order)
    are smallest: checked against that definition computed directly, for uneven chunks larger and smaller
    than the capacity."""
    x = np.random.default_rng(1).standard_normal(20_000)
    capacity, seed = 700, 3
    keys = np.random.Generator(np.random.PCG64(seed)).random(len(x))
    expected = x[np.sort(np.argsort(keys)[:capacity])]
    reservoir = Reservoir(capacity, seed=seed)
    for start, stop in [(0, 100), (100, 5000), (5000, 5300), (5300, 20_000)]:
        reservoir.update(x[start:stop])
    assert np.array_equal(reservoir.sample(), expected)
