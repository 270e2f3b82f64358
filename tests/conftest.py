"""Shared fixtures: small exact oracles that make the flow known in closed form."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.diagnostics import effective_sample_size

import numpyro_inflow as nif
from numpyro_inflow.evaluation import GaussianMixture


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


def load_example(name):
    """Import ``examples/<name>.py`` as a module (the examples are scripts, not a package)."""
    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


def exact_posterior(flow, matrix, noise_std, y):
    """Weights, mean and covariance of an oracle flow's posterior under ``y = A x + n``.

    The prior is the flow's exact density (its mixture convolved with the start inflation,
    `GaussianMixture.of_flow`); the posterior is that mixture conditioned in closed form.
    """
    post = GaussianMixture.of_flow(flow).condition(matrix, noise_std, y)
    mean, cov = post.moments()
    return post.weights, mean, cov


def check_moments(samples, mean, cov, extra_tol=0.02):
    """Mean and covariance within Monte-Carlo error (ESS-based, 5 standard errors)."""
    s = np.asarray(samples, np.float64).reshape(-1, samples.shape[-1])
    ess = np.minimum(
        effective_sample_size(
            np.asarray(samples).reshape(1, *s.shape) if samples.ndim == 2 else np.asarray(samples)
        ),
        len(s),
    )
    sd = np.sqrt(np.diag(cov))
    se_mean = sd / np.sqrt(ess)
    np.testing.assert_array_less(np.abs(s.mean(0) - mean), 5 * se_mean + extra_tol)
    emp = np.cov(s.T)
    # se of a covariance entry ~ sqrt((S_ii S_jj + S_ij^2) / ess)
    ess_min = ess.min()
    se_cov = np.sqrt((np.outer(sd**2, sd**2) + cov**2) / ess_min)
    np.testing.assert_array_less(np.abs(emp - cov), 5 * se_cov + extra_tol)
    return ess
