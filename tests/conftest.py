"""Shared fixtures: small exact oracles that make the flow known in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpyro_inflow as nif


def ring_mixture(n_comp=8, radius=2.0, var=0.05, dim=2, dtype=jnp.float32):
    """Equal-weight mixture on a ring in the first two coordinates (extra dims: small var)."""
    ang = np.linspace(0, 2 * np.pi, n_comp, endpoint=False)
    means = np.zeros((n_comp, dim))
    means[:, 0] = radius * np.cos(ang)
    means[:, 1] = radius * np.sin(ang)
    covs = np.tile(var * np.eye(dim), (n_comp, 1, 1))
    return nif.GaussianMixtureScore(
        jnp.full(n_comp, 1.0 / n_comp, dtype), jnp.asarray(means, dtype), jnp.asarray(covs, dtype)
    )


def random_mixture(seed, n_comp, dim, dtype=jnp.float32):
    """Mixture with random weights, means and full covariances."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 1.5, n_comp)
    means = rng.normal(0, 1.5, (n_comp, dim))
    a = rng.normal(0, 0.4, (n_comp, dim, dim))
    covs = a @ np.swapaxes(a, -1, -2) + 0.05 * np.eye(dim)
    return nif.GaussianMixtureScore(
        jnp.asarray(w / w.sum(), dtype), jnp.asarray(means, dtype), jnp.asarray(covs, dtype)
    )


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def x64():
    """Run one test in float64 without switching the whole process (xdist or not)."""
    with jax.enable_x64(True):
        yield


def gaussian_oracle(seed, dim, dtype=jnp.float32):
    """A single full-covariance Gaussian (as a one-component mixture) with a non-zero mean."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, (dim, dim))
    cov = a @ a.T + 0.3 * np.eye(dim)
    mean = rng.normal(0, 1, dim)
    return nif.GaussianMixtureScore(
        jnp.ones(1, dtype), jnp.asarray(mean[None], dtype), jnp.asarray(cov[None], dtype)
    )
