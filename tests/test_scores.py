"""Oracle scores against independent computations (autodiff, direct softmax, closed forms).

Exactness checks run in float64 (the ``x64`` fixture). The float32 empirical-denoiser
checks compare with a float64 NumPy softmax: float32 rounding of the logits and of the
weighted sum leaves errors of a few float32 ulp of the output (below 1e-6 for these
data), a hundred times below ``rtol=atol=1e-4`` whatever the reduction order.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import gaussian_oracle, random_mixture, ring_mixture

import numpyro_inflow as nif


def _schedule(gm, **kw):
    return nif.InflationSchedule.from_moments(*gm.moments(), **kw)


# ---------------------------------------------------------------- Gaussian mixture
@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("keep", [None, 2])
def test_mixture_denoiser_satisfies_tweedie(keep):
    gm = random_mixture(3, 4, 5, dtype=jnp.float64)
    sch = _schedule(gm, keep=keep)
    rng = np.random.default_rng(0)

    @jax.jit
    def both(w, t):
        grad = jax.vmap(jax.grad(lambda wi: gm.log_prob_t(wi, t, sch)))(w)
        den = jax.vmap(lambda wi: gm.denoise(wi, t, sch))(w)
        return grad, den, jax.vmap(lambda wi: gm.score(wi, t, sch))(w)

    for t in [0.0, 0.37 * sch.t_end, 0.9 * sch.t_end]:
        gam = np.asarray(sch.gamma(t))
        w = jnp.asarray(rng.normal(size=(6, 5)) * np.sqrt(np.asarray(sch.eigenvalues) + gam))
        assert w.dtype == jnp.float64
        grad, den, score = both(w, t)
        np.testing.assert_allclose((den - w) / gam, grad, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(score, grad, rtol=1e-8, atol=1e-8)


@pytest.mark.usefixtures("x64")
def test_single_gaussian_denoiser_is_linear_shrinkage():
    gm = gaussian_oracle(1, 3, dtype=jnp.float64)
    sch = _schedule(gm)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)))
    denoise = jax.jit(jax.vmap(gm.denoise, in_axes=(0, None, None)))
    for t in [0.0, 2.0, sch.t_end]:
        lam, gam = np.asarray(sch.eigenvalues), np.asarray(sch.gamma(t))
        den = denoise(w, t, sch)
        np.testing.assert_allclose(den, lam / (lam + gam) * np.asarray(w), rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("x64")
def test_mixture_log_prob_t_is_a_normalised_convolution():
    gm = ring_mixture(n_comp=3, dtype=jnp.float64)
    sch = _schedule(gm)
    t = 1.5
    g = np.linspace(-5.5, 5.5, 121)
    pts = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    dens = np.exp(np.asarray(jax.jit(lambda p: gm.log_prob_t(p, t, sch))(jnp.asarray(pts))))
    assert dens.sum() * (g[1] - g[0]) ** 2 == pytest.approx(1.0, abs=1e-6)
    # a single component is the Gaussian N(a, B + diag gamma) in eigen coordinates
    one = ring_mixture(n_comp=1, dtype=jnp.float64)
    a = (np.asarray(one.means[0]) - np.asarray(sch.mean)) @ np.asarray(sch.eigenvectors)
    b = np.asarray(sch.eigenvectors).T @ np.asarray(one.covariances[0]) @ np.asarray(
        sch.eigenvectors
    ) + np.diag(np.asarray(sch.gamma(t)))
    from scipy.stats import multivariate_normal

    np.testing.assert_allclose(
        one.log_prob_t(jnp.asarray(pts[:50]), t, sch),
        multivariate_normal(a, b).logpdf(pts[:50]),
        rtol=1e-10,
    )


def test_mixture_sample_moments():
    gm = random_mixture(2, 3, 3)
    x = np.asarray(jax.jit(lambda k: gm.sample(k, 20000))(jax.random.key(0)), np.float64)
    mu, cov = (np.asarray(a, np.float64) for a in gm.moments())
    se_mean = np.sqrt(np.diag(cov) / len(x))
    assert np.all(np.abs(x.mean(0) - mu) < 5 * se_mean)
    np.testing.assert_allclose(np.cov(x, rowvar=False), cov, atol=0.1 * np.abs(cov).max())


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((np.array([1, 1]), np.zeros((2, 2)), np.tile(np.eye(2), (2, 1, 1))), "weights"),
        ((np.ones(2), np.zeros((2, 2), np.int32), np.tile(np.eye(2), (2, 1, 1))), "means"),
        (
            (np.ones(2), np.zeros((2, 2)), np.tile(np.eye(2, dtype=np.int64), (2, 1, 1))),
            "covariances",
        ),
        ((np.ones(2), np.array([[0.0, np.nan], [0, 0]]), np.tile(np.eye(2), (2, 1, 1))), "means"),
        ((np.array([np.inf, 1.0]), np.zeros((2, 2)), np.tile(np.eye(2), (2, 1, 1))), "weights"),
        ((np.array([-1.0, 2.0]), np.zeros((2, 2)), np.tile(np.eye(2), (2, 1, 1))), "weights"),
        ((np.ones(2), np.zeros((2, 3)), np.tile(np.eye(2), (2, 1, 1))), "covariances"),
        ((np.ones(2), np.zeros((3, 2)), np.tile(np.eye(2), (2, 1, 1))), "means"),
        ((np.ones(2), np.zeros((2, 2)), np.tile(-np.eye(2), (2, 1, 1))), "covariances"),
        (
            (np.ones(2), np.zeros((2, 2)), np.tile([[1.0, 0.5], [0.0, 1.0]], (2, 1, 1))),
            "covariances",
        ),
    ],
)
def test_mixture_rejects_bad_input(args, name):
    args = tuple(a.astype(np.float32) if a.dtype == np.float64 else a for a in args)
    with pytest.raises(ValueError, match=rf"^{name}:"):
        nif.GaussianMixtureScore(*args)


# ---------------------------------------------------------------- empirical score
def _direct_empirical_denoiser(data, w, sch, t):
    """Unchunked softmax over all data in float64 numpy (independent of the scan)."""
    a = np.asarray(sch.to_eigen(jnp.asarray(data)), np.float64)
    gam = np.asarray(sch.gamma(t), np.float64)
    w = np.asarray(w, np.float64)
    logits = -0.5 * np.sum((w[:, None, :] - a[None]) ** 2 / gam, -1)
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(-1, keepdims=True)
    return p @ a


@pytest.mark.parametrize(("n", "chunk"), [(1003, 100), (250, 4096), (300, 300), (17, 5)])
def test_empirical_denoiser_matches_direct_softmax(n, chunk):
    rng = np.random.default_rng(n)
    data = rng.normal(size=(n, 3)).astype(np.float32) * [2.0, 1.0, 0.3]
    sch = nif.InflationSchedule.from_data(data)
    score = nif.EmpiricalScore(data, chunk_size=chunk)
    w = rng.normal(size=(7, 3)).astype(np.float32)
    denoise = jax.jit(jax.vmap(score.denoise, in_axes=(0, None, None)))
    for t in [0.0, 3.0, 0.8 * sch.t_end]:
        got = denoise(jnp.asarray(w), t, sch)
        np.testing.assert_allclose(
            got, _direct_empirical_denoiser(data, w, sch, t), rtol=1e-4, atol=1e-4
        )


def test_empirical_denoiser_is_stable_at_tiny_noise():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(400, 2)).astype(np.float32)
    sch = nif.InflationSchedule.from_data(data, gamma0=1e-9)  # logits ~ -1e9
    score = nif.EmpiricalScore(data, chunk_size=64)
    w = rng.normal(size=(5, 2)).astype(np.float32)
    got = np.asarray(jax.vmap(lambda wi: score.denoise(wi, 0.0, sch))(jnp.asarray(w)))
    assert np.all(np.isfinite(got))
    # at vanishing noise the posterior mean is the nearest data point
    a = np.asarray(sch.to_eigen(jnp.asarray(data)))
    nearest = a[np.argmin(((w[:, None] - a[None]) ** 2).sum(-1), axis=1)]
    np.testing.assert_allclose(got, nearest, atol=1e-5)
    # gradients (used by the exact trace) stay finite too
    jac = jax.jacfwd(lambda wi: score.denoise(wi, 0.0, sch))(jnp.asarray(w[0]))
    assert np.all(np.isfinite(np.asarray(jac)))


def test_empirical_score_handles_fifty_thousand_points():
    rng = np.random.default_rng(2)
    data = rng.normal(size=(50_000, 2)).astype(np.float32)
    sch = nif.InflationSchedule.from_data(data)
    score = nif.EmpiricalScore(data)
    w = rng.normal(size=(4, 2)).astype(np.float32) * 0.5
    t = 2.0
    got = jax.jit(jax.vmap(lambda wi: score.denoise(wi, t, sch)))(jnp.asarray(w))
    np.testing.assert_allclose(
        got, _direct_empirical_denoiser(data, w, sch, t), rtol=1e-4, atol=1e-4
    )


@pytest.mark.usefixtures("x64")
def test_empirical_denoiser_satisfies_tweedie():
    rng = np.random.default_rng(3)
    data = rng.normal(size=(60, 2))
    sch = nif.InflationSchedule.from_data(jnp.asarray(data))
    score = nif.EmpiricalScore(jnp.asarray(data), chunk_size=16)
    a = sch.to_eigen(jnp.asarray(data))
    t = 2.5
    gam = sch.gamma(t)

    def log_p(w):  # mixture of N(a_j, diag gamma), up to a constant
        return jax.nn.logsumexp(-0.5 * jnp.sum((w - a) ** 2 / gam, -1))

    w = jnp.asarray(rng.normal(size=(5, 2)))
    np.testing.assert_allclose(
        jax.vmap(lambda wi: score.score(wi, t, sch))(w),
        jax.vmap(jax.grad(log_p))(w),
        rtol=1e-9,
        atol=1e-9,
    )


@pytest.mark.parametrize(
    ("x", "kwargs", "name"),
    [
        (np.arange(20).reshape(10, 2), {}, "x"),
        (np.array([[0.0, np.nan], [1.0, 2.0]], np.float32), {}, "x"),
        (np.array([[0.0, np.inf], [1.0, 2.0]], np.float32), {}, "x"),
        (np.zeros((0, 2), np.float32), {}, "x"),
        (np.zeros(4, np.float32), {}, "x"),
        (np.zeros((4, 2), np.float32), {"chunk_size": 0}, "chunk_size"),
    ],
)
def test_empirical_rejects_bad_input(x, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        nif.EmpiricalScore(x, **kwargs)
