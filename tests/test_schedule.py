"""InflationSchedule and participation_ratio against their definitions.

The definitions are those of de Albuquerque & Pearson (2024), written out here in NumPy
float64. The schedule's float32 arrays carry a storage rounding of about 6e-8 relative
(the eigendecomposition itself runs in float64), which the exponentials of
``gamma(t)`` and ``s(t)`` amplify at most by their exponent (about 17 at ``T``): about
1e-6 relative, so ``rtol=1e-5`` holds on any CPU with a margin of ten.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_mixture

import numpyro_inflow as nif


def _spd(seed, dim, scales=None):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    lam = rng.uniform(0.2, 3.0, dim) if scales is None else np.asarray(scales, float)
    return (q * lam) @ q.T, np.sort(lam)[::-1]


# ---------------------------------------------------------------- participation ratio
def test_participation_ratio_extremes_and_covariance_input():
    assert float(nif.participation_ratio(jnp.array([2.0, 0.0, 0.0]))) == pytest.approx(1.0)
    assert float(nif.participation_ratio(jnp.full(5, 0.3))) == pytest.approx(5.0)
    cov, lam = _spd(0, 4)
    expected = lam.sum() ** 2 / (lam**2).sum()
    got_cov = nif.participation_ratio(jnp.asarray(cov, jnp.float32))
    got_eig = nif.participation_ratio(jnp.asarray(lam, jnp.float32))
    assert float(got_cov) == pytest.approx(expected, rel=1e-5)
    assert float(got_eig) == pytest.approx(expected, rel=1e-5)
    batch = nif.participation_ratio(jnp.stack([jnp.ones(3), jnp.array([1.0, 0.0, 0.0])]))
    np.testing.assert_allclose(batch, [3.0, 1.0], rtol=1e-6)


# ---------------------------------------------------------------- eigenbasis
def test_from_data_moments_and_eigenbasis():
    rng = np.random.default_rng(1)
    cov, _ = _spd(1, 4)
    x = rng.multivariate_normal([1.0, -2.0, 0.5, 3.0], cov, size=500)
    sch = nif.InflationSchedule.from_data(jnp.asarray(x, jnp.float32))
    emp_cov = np.cov(x, rowvar=False)
    np.testing.assert_allclose(sch.mean, x.mean(0), rtol=1e-5, atol=1e-5)
    w = np.asarray(sch.eigenvectors, np.float64)
    lam = np.asarray(sch.eigenvalues, np.float64)
    np.testing.assert_allclose(w.T @ w, np.eye(4), atol=1e-5)
    np.testing.assert_allclose(emp_cov @ w, w * lam, atol=1e-4)
    assert np.all(np.diff(lam) <= 0)
    np.testing.assert_allclose(lam, np.sort(np.linalg.eigvalsh(emp_cov))[::-1], rtol=1e-5)
    # to_eigen / from_eigen are inverse, and decorrelate the data
    u = sch.to_eigen(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(sch.from_eigen(u), x, atol=1e-4)
    np.testing.assert_allclose(np.cov(np.asarray(u), rowvar=False), np.diag(lam), atol=1e-4)


def test_tiny_eigenvalues_are_floored():
    cov = np.diag([2.0, 1.0, 0.0])
    sch = nif.InflationSchedule.from_moments(jnp.zeros(3), jnp.asarray(cov, jnp.float32))
    np.testing.assert_allclose(sch.eigenvalues, [2.0, 1.0, 2e-6], rtol=1e-5)


# ---------------------------------------------------------------- g, gamma(t), s(t), T
@pytest.mark.parametrize(
    ("keep", "gap", "expected_tail"),
    [(None, None, 0.0), (1, None, -1.0 / 3.0), (2, None, -1.0), (2, 1.0, 0.0), (1, 0.5, 0.5)],
)
def test_g_vector(keep, gap, expected_tail):
    cov, _ = _spd(2, 4)
    sch = nif.InflationSchedule.from_moments(
        jnp.zeros(4), jnp.asarray(cov, jnp.float32), keep=keep, inflation_gap=gap
    )
    k = 4 if keep is None else keep
    expected = np.r_[np.full(k, 0.0 if keep is None else 1.0), np.full(4 - k, expected_tail)]
    np.testing.assert_allclose(sch.g, expected, rtol=1e-6)
    assert sch.keep == k and sch.is_reducing == (keep is not None)


@pytest.mark.parametrize("keep", [None, 2])
def test_time_functions_follow_definitions(keep):
    cov, lam = _spd(3, 4)
    rho, gamma0, a0 = 0.7, 2e-3, 1.5
    sch = nif.InflationSchedule.from_moments(
        jnp.zeros(4), jnp.asarray(cov, jnp.float32), keep=keep, rho=rho, gamma0=gamma0, A0=a0
    )
    g = np.zeros(4) if keep is None else np.r_[1.0, 1.0, -1.0, -1.0]
    g_star = g.max()
    # default end time: gamma_*(T) = 1e4 * lambda_1
    assert gamma0 * np.exp(rho * (1 + g_star) * sch.t_end) == pytest.approx(1e4 * lam[0], rel=1e-5)
    for t in [0.0, 0.3 * sch.t_end, sch.t_end]:
        gam = gamma0 * np.exp(rho * (1 + g) * t)
        s = a0 / np.sqrt(lam[0] + gamma0 * np.exp(rho * (1 + g_star) * t))
        np.testing.assert_allclose(sch.gamma(t), gam, rtol=1e-5)
        np.testing.assert_allclose(sch.scale(t), np.full(4, s), rtol=1e-5)
        # derivatives against autodiff of the functions themselves
        tt = jnp.float32(t)
        np.testing.assert_allclose(sch.dgamma(tt), jax.jacfwd(sch.gamma)(tt), rtol=1e-4)
        np.testing.assert_allclose(
            sch.dlog_scale(tt),
            jax.jacfwd(lambda u: jnp.log(sch.scale(u)))(tt),
            rtol=1e-4,
            atol=1e-7,
        )
    t_end = sch.t_end
    var_t = (lam + gamma0 * np.exp(rho * (1 + g) * t_end)) / (
        lam[0] + gamma0 * np.exp(rho * (1 + g_star) * t_end)
    )
    expected_base = np.where(np.arange(4) < sch.keep, 1.0, var_t)
    np.testing.assert_allclose(sch.base_variance, expected_base, rtol=1e-5)
    np.testing.assert_allclose(sch.predicted_latent_variance(), var_t, rtol=1e-5)


def test_proportional_variant_keeps_gaussian_scaled_covariance_isotropic():
    cov, lam = _spd(4, 3)
    sch = nif.InflationSchedule.from_moments(
        jnp.zeros(3), jnp.asarray(cov, jnp.float32), proportional=True, A0=2.0
    )
    np.testing.assert_allclose(sch.gamma_start, 5e-4 * lam / lam[0], rtol=1e-5)
    for t in [0.0, 1.0, sch.t_end]:
        # s_i(t)^2 (lam_i + gamma_i(t)) = A0^2 for every direction and time
        np.testing.assert_allclose(
            sch.scale(t) ** 2 * (sch.eigenvalues + sch.gamma(t)), np.full(3, 4.0), rtol=1e-5
        )


# ---------------------------------------------------------------- PR-reducing
@pytest.mark.parametrize(("keep", "gap"), [(1, None), (2, None), (2, 1.0), (3, 0.8)])
def test_reducing_scaled_covariance_pr_tends_to_truncated(keep, gap):
    gm = random_mixture(5, 3, 5)
    sch = nif.InflationSchedule.from_moments(*gm.moments(), keep=keep, inflation_gap=gap)
    kept = np.arange(5) < keep

    def scaled_var(t):
        return np.asarray(sch.scale(t) ** 2 * (sch.eigenvalues + sch.gamma(t)), np.float64)

    def pr(v):
        return v.sum() ** 2 / (v**2).sum()

    ts = np.linspace(0.5, 1.0, 6) * sch.t_end
    gaps = np.array([abs(pr(scaled_var(t)) - pr(np.where(kept, scaled_var(t), 0.0))) for t in ts])
    assert np.all(np.diff(gaps) < 0), gaps  # monotone approach over the second half
    assert gaps[-1] < 1e-2
    # ... and the truncated (kept) block itself becomes isotropic: PR -> k
    final = scaled_var(sch.t_end)
    assert pr(final[kept]) == pytest.approx(keep, abs=1e-3)
    assert float(nif.participation_ratio(jnp.asarray(final))) == pytest.approx(keep, abs=1e-2)
    # squeezed variances are tiny and equal to the base variance the flow assumes
    assert np.all(final[~kept] < 1e-3)
    np.testing.assert_allclose(sch.base_variance[~kept], final[~kept], rtol=1e-5)


def test_preserving_scaled_covariance_pr_tends_to_dimension():
    gm = random_mixture(6, 3, 4)
    sch = nif.InflationSchedule.from_moments(*gm.moments())
    pr0 = float(nif.participation_ratio(sch.eigenvalues))
    pr_t = float(nif.participation_ratio(sch.predicted_latent_variance()))
    assert pr0 < 3.9
    assert pr_t == pytest.approx(4.0, abs=1e-3)


# ---------------------------------------------------------------- bad input
def _good_data():
    return np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)


@pytest.mark.parametrize(
    ("x", "kwargs", "name"),
    [
        (np.arange(30).reshape(10, 3), {}, "x"),  # integers
        (np.where(np.eye(50, 3) > 0, np.nan, 1.0).astype(np.float32), {}, "x"),
        (np.full((50, 3), np.inf, np.float32), {}, "x"),
        (np.zeros(3, np.float32), {}, "x"),  # not (N, D)
        (_good_data()[:1], {}, "x"),  # one sample
        (_good_data(), {"keep": 0}, "keep"),
        (_good_data(), {"keep": 3}, "keep"),
        (_good_data(), {"keep": -1}, "keep"),
        (_good_data(), {"keep": 1.5}, "keep"),
        (_good_data(), {"keep": True}, "keep"),
        (_good_data(), {"rho": 0.0}, "rho"),
        (_good_data(), {"rho": -1.0}, "rho"),
        (_good_data(), {"gamma0": 0.0}, "gamma0"),
        (_good_data(), {"gamma0": -1e-3}, "gamma0"),
        (_good_data(), {"gamma0": float("nan")}, "gamma0"),
        (_good_data(), {"t_end": -1.0}, "t_end"),
        (_good_data(), {"inflation_gap": 1.0}, "inflation_gap"),  # needs keep
        (_good_data(), {"keep": 1, "inflation_gap": 2.5}, "inflation_gap"),
        (_good_data(), {"keep": 1, "proportional": True}, "proportional"),
    ],
)
def test_from_data_rejects_bad_input(x, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        nif.InflationSchedule.from_data(x, **kwargs)


def test_participation_ratio_rejects_integers():
    with pytest.raises(ValueError, match=r"^eigenvalues_or_covariance:"):
        nif.participation_ratio(np.array([1, 2, 3]))
