"""The batched fitting path (`fit_many`) and the fast accumulators, against scipy, numpy and exhaustive search.

Tolerances are the ones stated in `pythia_dynamics.fits`: parameters within 1e-3 relative of scipy's own
`fit` (scipy's optimiser stops at about 1e-4), loc within 1e-3 of the scale; KS distances and histograms
exactly as the exhaustive computation gives them. The power-law tail is tested against the `powerlaw`
package in tests/test_fits.py.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import pythia_dynamics.fits as fits
from pythia_dynamics.fits import (
    FAMILIES,
    FAMILY_PARAMETERS,
    NU_MAX,
    WEIGHT_BINS,
    FixedBinHistogram,
    RunningMoments,
    fit_distributions,
    fit_many,
    subsample,
)
from pythia_dynamics.summaries import ACTIVATION_BINS, GRADIENT_BINS, DistributionSummary

SCIPY = {"gaussian": stats.norm, "logistic": stats.logistic, "student_t": stats.t, "gennorm": stats.gennorm}
# (family, planted distribution): shapes on both sides of the cases the fitter treats apart (gennorm
# beta < 1.5 has its loc found by golden-section search, Student-t is bounded at nu = 1000).
PLANTED = [
    ("gaussian", stats.norm(0.001, 0.02)),
    ("logistic", stats.logistic(0.001, 0.02)),
    ("student_t", stats.t(3, 0.0, 0.02)),
    ("student_t", stats.t(12, 0.002, 0.05)),
    ("gennorm", stats.gennorm(0.8, 0.0, 0.02)),
    ("gennorm", stats.gennorm(1.3, 0.001, 0.02)),
    ("gennorm", stats.gennorm(3.0, 0.0, 0.02)),
]


@pytest.fixture(scope="module")
def planted():
    """20k draws from each planted distribution and a Gaussian, all fitted in one batch. The Gaussian
    sample is its quantiles (negative excess kurtosis: the Student-t likelihood rises with nu forever)."""
    samples = [dist.rvs(size=20_000, random_state=seed) for seed, (_, dist) in enumerate(PLANTED, start=10)]
    samples.append(stats.norm(0.0, 0.02).ppf((np.arange(20_000) + 0.5) / 20_000))
    return samples, fit_many(samples)


@pytest.mark.parametrize("case", range(len(PLANTED)), ids=[f"{f}-{d.args[0] if d.args else ''}" for f, d in PLANTED])
def test_batched_fit_agrees_with_scipys_generic_fit(planted, case):
    family, _ = PLANTED[case]
    sample, fit = planted[0][case], planted[1][case].families[family]
    reference = dict(zip(FAMILY_PARAMETERS[family], SCIPY[family].fit(sample), strict=True))
    for name, value in fit.params.items():
        if name == "loc":
            assert abs(value - reference["loc"]) < 1e-3 * reference["scale"], (name, value, reference)
        else:
            assert value == pytest.approx(reference[name], rel=1e-3), (name, value, reference)
    # and a likelihood no worse than scipy's maximum
    assert fit.loglik >= SCIPY[family].logpdf(sample, **_scipy_kwargs(family, reference)).sum() - 1e-6


def _scipy_kwargs(family: str, params: dict) -> dict:
    shape = {"student_t": "df", "gennorm": "beta"}
    return {shape.get(family, name) if name in ("nu", "beta") else name: v for name, v in params.items()}


def test_reported_parameters_are_the_maximum(planted):
    """No parameter moved by 1e-4 (loc: of the scale) within its range raises scipy's log-likelihood."""
    for sample, report in zip(*planted, strict=True):
        for family in FAMILIES:
            fit = report.families[family]
            best = SCIPY[family].logpdf(sample, **_scipy_kwargs(family, fit.params)).sum()
            assert fit.loglik == pytest.approx(best, rel=1e-10)
            for name in fit.params:
                for sign in (-1, 1):
                    moved = dict(fit.params)
                    moved[name] += sign * 1e-4 * (fit.params["scale"] if name == "loc" else fit.params[name])
                    if name == "nu" and moved[name] > NU_MAX:
                        continue
                    loglik = SCIPY[family].logpdf(sample, **_scipy_kwargs(family, moved)).sum()
                    assert loglik <= best + 1e-9 * abs(best), (family, name, sign)


def test_gaussian_data_put_nu_at_the_cap(planted):
    report = planted[1][-1]
    assert report.families["student_t"].params["nu"] == NU_MAX
    assert report.families["gennorm"].params["beta"] == pytest.approx(2.0, abs=0.1)


def test_fit_many_equals_fitting_one_at_a_time():
    rng = np.random.default_rng(5)
    samples = [
        rng.standard_t(4, 3_000) * 0.02,
        stats.gennorm(0.9).rvs(size=3_000, random_state=1),
        torch.from_numpy(rng.logistic(0, 0.01, (60, 70)).astype(np.float32)),  # a tensor, subsampled
        rng.normal(0, 1, 500),  # another size: its own batch
    ]
    together = fit_many(samples, max_samples=3_000, seed=2)
    for sample, report in zip(samples, together, strict=True):
        alone = fit_distributions(sample, max_samples=3_000, seed=2)
        assert report.n_total == alone.n_total and report.n_fit == alone.n_fit
        for name, value in alone.scalars().items():
            assert report.scalars()[name] == pytest.approx(value, rel=1e-7, abs=1e-12), name
        assert np.array_equal(report.qq_gaussian, alone.qq_gaussian)


def test_fit_many_bounds_its_batches_and_keeps_every_report(monkeypatch):
    # A deep model's weight matrices are fitted a bounded number of rows at a time (memory), in order.
    rng = np.random.default_rng(8)
    samples = [rng.normal(0, 1 + i, 400) for i in range(2 * fits._FIT_BATCH_ROWS + 3)]
    seen, fit_rows = [], fits._fit_rows
    monkeypatch.setattr(fits, "_fit_rows", lambda x, *args: seen.append(len(x)) or fit_rows(x, *args))
    reports = fit_many(samples, max_samples=400)
    assert max(seen) <= fits._FIT_BATCH_ROWS and sum(seen) == len(samples)
    scales = [r.scalars()["gaussian_scale"] for r in reports]
    np.testing.assert_allclose(scales, [np.std(s) for s in samples], rtol=1e-9)


def test_ks_distance_is_exact_however_the_cdf_is_bracketed():
    rng = np.random.default_rng(3)
    rows = np.sort(np.stack([rng.standard_t(3, 5_000), rng.normal(size=5_000), rng.logistic(size=5_000)]), axis=1)
    for cdf in (stats.norm(0, 1.3).cdf, stats.t(3).cdf, stats.logistic(0.1).cdf):
        exhaustive = [stats.kstest(row, cdf).statistic for row in rows]
        assert np.array_equal(fits._ks_rows(rows, lambda v, _: cdf(v)), exhaustive)


@pytest.mark.parametrize("bins", [WEIGHT_BINS, ACTIVATION_BINS, GRADIENT_BINS], ids=["weight", "activation", "grad"])
def test_float32_histogram_by_bit_pattern_equals_numpy(bins):
    edges = bins.edges()
    rng = np.random.default_rng(6)
    x = np.concatenate([
        rng.standard_t(1.5, 200_000) * edges[-1] / 50, rng.normal(0, edges[-1] * 1e-6, 20_000),
        edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf), [0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38],
    ]).astype(np.float32)  # fmt: skip
    rng.shuffle(x)
    x = np.concatenate([x, np.float32([np.nan, np.inf, -np.inf])])
    hist = FixedBinHistogram(edges).update(x)
    finite = x[np.isfinite(x)].astype(np.float64)
    assert np.array_equal(hist.counts, np.histogram(finite, edges)[0])
    assert hist.underflow == (finite < edges[0]).sum() + 1 and hist.overflow == (finite > edges[-1]).sum() + 1
    assert hist.nan_count == 1 and hist.total == len(x)


def test_accelerator_code_paths_agree_with_the_cpu_ones(monkeypatch):
    """The torch paths (taken for tensors on an accelerator), run here on CPU tensors."""
    rng = np.random.default_rng(7)
    w = torch.from_numpy(rng.standard_t(5, (300, 500)).astype(np.float32) * 0.02).T  # transposed, like W_U
    w[3, 4] = 10.0  # the last edge, closed on the right
    cpu = DistributionSummary.of(w, WEIGHT_BINS, max_samples=5_000)
    monkeypatch.setattr(fits, "_on_accelerator", lambda x: isinstance(x, torch.Tensor))
    device = DistributionSummary.of(w, WEIGHT_BINS, max_samples=5_000)
    for attr in ("count", "mean", "m2", "m3", "m4", "max_abs"):
        assert getattr(device.moments, attr) == pytest.approx(getattr(cpu.moments, attr), rel=1e-12, abs=1e-18)
    assert np.array_equal(device.histogram.counts, cpu.histogram.counts)
    assert np.array_equal(device._fit_sample(), cpu._fit_sample())
    assert np.array_equal(cpu._fit_sample(), subsample(w.contiguous(), 5_000).astype(np.float32))  # logical order


def test_merged_parts_equal_a_pass_over_the_whole():
    rng = np.random.default_rng(8)
    shapes = (4, 64, 32)
    parts = [torch.tensor(rng.standard_t(6, shapes) * 0.02 + shift, dtype=torch.float32) for shift in (0, 0.01, -0.2)]
    whole = torch.cat([p.reshape(64, -1) for p in parts], 1)
    summaries = [DistributionSummary.of(p, WEIGHT_BINS) for p in parts]
    merged = DistributionSummary.of(whole, WEIGHT_BINS, parts=summaries)
    direct = DistributionSummary.of(whole, WEIGHT_BINS)
    for attr in ("mean", "std", "skew", "excess_kurtosis", "max_abs"):
        assert getattr(merged.moments, attr) == pytest.approx(getattr(direct.moments, attr), rel=1e-12)
    assert np.array_equal(merged.histogram.counts, direct.histogram.counts)
    assert merged.moments.count == whole.numel()


def test_moments_of_pieces_far_from_the_first_piece_mean():
    """Sorted data: every piece's mean is far from the first one's; the sums fall back to each piece's mean."""
    x = np.sort(np.random.default_rng(9).lognormal(3, 2, 300_000)).astype(np.float32)
    moments = RunningMoments.of(x)
    exact = x.astype(np.float64)
    assert moments.mean == pytest.approx(exact.mean(), rel=1e-12)
    assert moments.std == pytest.approx(exact.std(), rel=1e-10)
    assert moments.skew == pytest.approx(stats.skew(exact), rel=1e-9)
    assert moments.excess_kurtosis == pytest.approx(stats.kurtosis(exact), rel=1e-9)
    assert math.isnan(RunningMoments.of(np.r_[x, np.nan]).mean)
