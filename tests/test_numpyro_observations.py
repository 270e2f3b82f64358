"""Observation operators against direct computations (indexing, convolution, averaging)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal, stats

import numpyro_inflow as nif

LGO = nif.LinearGaussianObservation


def test_mask_selects_entries():
    mask = np.array([[True, False], [False, True]])
    obs = LGO.mask(mask, 0.1)
    x = jnp.arange(4.0).reshape(1, 4) + 1
    np.testing.assert_allclose(obs.forward(x), [[1.0, 4.0]])
    assert (obs.input_dim, obs.output_dim, obs.kind) == (4, 2, "mask")
    with pytest.raises(ValueError, match="mask: expected a boolean"):
        LGO.mask(np.ones(3), 0.1)
    with pytest.raises(ValueError, match="at least one"):
        LGO.mask(np.zeros(3, bool), 0.1)


def test_blur_is_a_convolution():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(5, 6)).astype(np.float32)
    kernel = np.array([[0.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 1.0, 0.0]], np.float32)
    obs = LGO.blur(kernel, (5, 6), 0.05)
    ref = signal.convolve2d(img, kernel, mode="same")
    np.testing.assert_allclose(
        obs.forward(jnp.asarray(img.reshape(-1))), ref.reshape(-1), atol=1e-5
    )
    sig = rng.normal(size=7).astype(np.float32)
    k1 = np.array([0.25, 0.5, 0.25], np.float32)
    obs1 = LGO.blur(k1, 7, 0.05)
    np.testing.assert_allclose(
        obs1.forward(jnp.asarray(sig)), np.convolve(sig, k1, "same"), atol=1e-6
    )
    with pytest.raises(ValueError, match="kernel: expected 2 axes"):
        LGO.blur(k1, (5, 6), 0.1)


def test_downsample_is_block_average():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(4, 6)).astype(np.float32)
    obs = LGO.downsample((4, 6), 2, 0.1)
    ref = img.reshape(2, 2, 3, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(
        obs.forward(jnp.asarray(img.reshape(-1))), ref.reshape(-1), atol=1e-6
    )
    with pytest.raises(ValueError, match="factor: expected a divisor"):
        LGO.downsample((4, 6), 4, 0.1)


def test_random_projection_and_simulate():
    obs = LGO.random_projection(jax.random.key(0), 300, 4, 0.2)
    assert obs.matrix.shape == (300, 4)
    # columns have squared norm ~1 (entries N(0, 1/M))
    np.testing.assert_allclose(jnp.sum(obs.matrix**2, 0), 1.0, atol=0.25)
    x = jnp.array([1.0, -1.0, 0.5, 0.0])
    y = obs.simulate(jax.random.key(1), x)
    resid = np.asarray(y - obs.forward(x))
    assert abs(resid.std() - 0.2) < 0.03
    ll = obs.log_likelihood(x, y)
    ref = stats.norm.logpdf(np.asarray(y), np.asarray(obs.forward(x)), 0.2).sum()
    np.testing.assert_allclose(ll, ref, rtol=1e-4)


def test_gaussian_posterior_information_form():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(2, 3))
    m = rng.normal(size=3)
    b = rng.normal(size=(3, 3))
    s = b @ b.T + 0.3 * np.eye(3)
    noise = np.array([0.3, 0.5])
    y = rng.normal(size=2)
    obs = LGO(jnp.asarray(a, jnp.float32), jnp.asarray(noise, jnp.float32))
    mean, cov = obs.gaussian_posterior(jnp.asarray(m, jnp.float32), jnp.asarray(s, jnp.float32), y)
    rinv = np.diag(1 / noise**2)
    cov_ref = np.linalg.inv(np.linalg.inv(s) + a.T @ rinv @ a)
    mean_ref = cov_ref @ (np.linalg.solve(s, m) + a.T @ rinv @ y)
    np.testing.assert_allclose(mean, mean_ref, atol=1e-4)
    np.testing.assert_allclose(cov, cov_ref, atol=1e-4)


def test_magnitude_observation_and_errors():
    obs = nif.NonlinearGaussianObservation.magnitude(jnp.array([[1.0, 1.0], [1.0, -1.0]]), 0.1)
    x = jnp.array([[1.0, -3.0], [0.5, 0.5]])
    np.testing.assert_allclose(obs.forward(x), [[2.0, 4.0], [1.0, 0.0]], atol=1e-5)
    g = jax.grad(lambda v: obs.forward(v).sum())(jnp.array([0.5, 0.5]))
    assert bool(jnp.all(jnp.isfinite(g)))
    assert obs.distribution(x).event_shape == (2,)
    with pytest.raises(ValueError, match="noise_std: expected positive"):
        LGO(jnp.eye(2), -1.0)
    with pytest.raises(ValueError, match="noise_std: expected a scalar or a vector of length 2"):
        LGO(jnp.eye(2), jnp.ones(3))
    with pytest.raises(ValueError, match="matrix: expected finite"):
        LGO(jnp.array([[jnp.inf, 0.0]]), 0.1)
    with pytest.raises(ValueError, match="y: expected finite"):
        obs.log_likelihood(x, jnp.array([jnp.nan, 1.0]))
    with pytest.raises(ValueError, match="fn: expected a callable"):
        nif.NonlinearGaussianObservation(3, 2, 2, 0.1)
