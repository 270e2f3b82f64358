"""Coverage functions: nominal coverage on exactly known posteriors; miscalibration flagged."""

import matplotlib
import numpy as np
import pytest
from scipy import stats

import numpyro_inflow as nif

matplotlib.use("Agg")

LEVELS = (0.5, 0.8, 0.9, 0.95)


def gaussian_problem(seed, S=1500, N=400, d=2, scale=1.0, shift=0.0):
    """theta ~ N(0, I), y ~ N(theta, I): posterior N(y/2, I/2); draws optionally distorted."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(S, d))
    y = theta + rng.normal(size=(S, d))
    mean, sd = y / 2, np.sqrt(0.5)
    draws = mean[:, None] + shift * sd + scale * sd * rng.normal(size=(S, N, d))
    return draws, theta, mean, sd


def test_central_coverage_nominal_on_exact_posterior():
    draws, theta, _, _ = gaussian_problem(0)
    table = nif.central_coverage(draws, theta, LEVELS)
    assert len(table) == 2 * len(LEVELS)
    assert not table["flagged"].any(), table
    # within 4 binomial standard errors (sample quantiles of N=400 draws add little)
    se = np.sqrt(table["level"] * (1 - table["level"]) / table["n"])
    assert np.all(np.abs(table["coverage"] - table["level"]) < 4 * se)


@pytest.mark.parametrize(("scale", "shift"), [(0.6, 0.0), (1.6, 0.0), (1.0, 0.7)])
def test_central_coverage_flags_miscalibration(scale, shift):
    draws, theta, _, _ = gaussian_problem(1, scale=scale, shift=shift)
    table = nif.central_coverage(draws, theta, LEVELS)
    assert table["flagged"].any()
    if scale < 1:  # over-confident: every interval under-covers
        assert np.all(table["coverage"] < table["level"])


def _normal_logpdf(x, mean, sd):
    return np.sum(stats.norm.logpdf(x, mean, sd), axis=-1)


def test_hdr_coverage_exact_densities():
    draws, theta, mean, sd = gaussian_problem(2)
    lp_s = _normal_logpdf(draws, mean[:, None], sd)
    lp_t = _normal_logpdf(theta, mean, sd)
    table = nif.hdr_coverage(
        draws, theta, LEVELS, log_density_samples=lp_s, log_density_truths=lp_t
    )
    assert list(table["quantity"]) == ["joint"] * len(LEVELS)
    assert not table["flagged"].any(), table
    # negative control: draws from a too-narrow posterior (the density is that of the draws)
    bad, theta_b, mean_b, _ = gaussian_problem(3, scale=0.6)
    sd_b = 0.6 * sd
    table_b = nif.hdr_coverage(
        bad,
        theta_b,
        LEVELS,
        log_density_samples=_normal_logpdf(bad, mean_b[:, None], sd_b),
        log_density_truths=_normal_logpdf(theta_b, mean_b, sd_b),
    )
    assert table_b["flagged"].all()


def test_hdr_coverage_kde_close_to_nominal():
    draws, theta, _, _ = gaussian_problem(4, S=300, N=500, d=1)
    table = nif.hdr_coverage(draws, theta, LEVELS)
    assert np.all(np.abs(table["coverage"] - table["level"]) < 0.08), table
    bad, theta_b, _, _ = gaussian_problem(5, S=300, N=500, d=1, scale=0.5)
    assert nif.hdr_coverage(bad, theta_b, LEVELS)["flagged"].any()


def test_tarp_calibrated_and_miscalibrated():
    draws, theta, _, _ = gaussian_problem(6, S=1000, N=300, d=3)
    good = nif.tarp(draws, theta, seed=1)
    assert good.passed and abs(good.atc) < 0.03
    assert np.max(np.abs(good.ecp - good.alpha_grid)) < 0.06
    for kw in ({"scale": 0.6}, {"scale": 1.6}, {"shift": 0.8}):
        bad_draws, bad_theta, _, _ = gaussian_problem(7, S=1000, N=300, d=3, **kw)
        assert not nif.tarp(bad_draws, bad_theta, seed=1).passed, kw


def test_plots_and_errors():
    draws, theta, _, _ = gaussian_problem(8, S=100, N=50)
    fig = nif.plot_coverage(nif.central_coverage(draws, theta), title="t")
    assert len(fig.axes) == 1
    assert nif.tarp(draws, theta).plot() is not None
    matplotlib.pyplot.close("all")
    with pytest.raises(ValueError, match="truths"):
        nif.central_coverage(draws, theta[:, :1])
    with pytest.raises(ValueError, match="levels"):
        nif.central_coverage(draws, theta, levels=(0.5, 1.0))
    with pytest.raises(ValueError, match="log_density"):
        nif.hdr_coverage(draws, theta, log_density_samples=np.zeros((100, 50)))


def test_kde_matches_scipy():
    from numpyro_inflow.coverage import _kde_logpdf

    rng = np.random.default_rng(9)
    x, q = rng.normal(size=(150, 2)), rng.normal(size=(5, 2))
    np.testing.assert_allclose(_kde_logpdf(x, q), stats.gaussian_kde(x.T).logpdf(q.T), rtol=1e-8)


def test_binomial_columns_match_scipy_binomtest():
    """Interval and p-value columns equal scipy's binomtest (closed form vs root finding)."""
    draws, theta, _, _ = gaussian_problem(10, S=60, N=50, scale=0.8)
    rng = np.random.default_rng(11)
    edge = rng.normal(size=(7, 20, 2))  # truths far outside (0 hits) and at the median (all)
    truths = np.stack([np.full(7, 50.0), np.median(edge[..., 1], axis=1)], -1)
    for table in (nif.central_coverage(draws, theta, LEVELS), nif.central_coverage(edge, truths)):
        for row in table.itertuples():
            ref = stats.binomtest(row.hits, row.n, row.level)
            ci = ref.proportion_ci(0.95)
            # scipy finds the Clopper-Pearson bounds by root finding (tolerance ~1e-12)
            assert row.lower == pytest.approx(ci.low, abs=1e-9)
            assert row.upper == pytest.approx(ci.high, abs=1e-9)
            assert row.pvalue == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
    assert set(table["hits"]) == {0, 7}
