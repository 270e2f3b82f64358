"""Latent MAP, Laplace approximation and Laplace-preconditioned NUTS against closed forms.

A single-Gaussian oracle flow decodes affinely, so its latent MAP and Laplace
approximation equal the exact Gaussian posterior (`gaussian_posterior` of the
observation, independent of the code under test); a mixture oracle's posterior is a
mixture in closed form (`conftest.exact_posterior`), which preconditioned NUTS must
reproduce.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import check_moments, exact_posterior, gaussian_oracle
from numpyro.infer import MCMC, NUTS

import numpyro_inflow as nif


def _flow(gm, keep=None):
    sch = nif.InflationSchedule.from_moments(*gm.moments(), keep=keep)
    return nif.InflationaryFlow(sch, gm, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def gaussian_problem():
    flow = _flow(gaussian_oracle(3, 3))
    matrix = jnp.array([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]])
    obs = nif.LinearGaussianObservation(matrix, 0.3)
    return flow, obs, jnp.array([0.7, -0.4])


def test_map_and_laplace_equal_exact_gaussian_posterior(gaussian_problem):
    flow, obs, y = gaussian_problem
    _, mean, cov = exact_posterior(flow, obs.matrix, 0.3, y)
    approx = nif.laplace_approximation(flow, obs, y, steps=1500, learning_rate=0.02)
    # The bounds are Adam's distance from the optimum after 1500 steps (1.4e-5 for the
    # mean, 8e-5 for the covariance, float32), a contraction that rounding does not
    # amplify; the solver (rtol = atol = 1e-6) adds ~1e-6.
    np.testing.assert_allclose(flow.decode(approx.loc), mean, atol=2e-3)
    # the decoder is affine: push the latent covariance through its Jacobian
    jac = np.asarray(jax.jacrev(flow.decode)(approx.loc), np.float64)
    lat = np.asarray(approx.scale_tril, np.float64)
    np.testing.assert_allclose(jac @ lat @ lat.T @ jac.T, cov, atol=2e-3)
    assert np.allclose(np.triu(lat, 1), 0)  # lower triangular


@pytest.mark.slow
def test_preconditioned_nuts_matches_mixture_posterior():
    gm = nif.GaussianMixtureScore(
        jnp.array([0.4, 0.6]),
        jnp.array([[-0.8, 0.0], [0.8, 0.3]]),
        jnp.array([[[0.4, 0.15], [0.15, 0.3]], [[0.3, -0.1], [-0.1, 0.5]]]),
    )
    flow = _flow(gm)
    matrix, noise, y = jnp.array([[1.0, 1.0]]), 0.4, jnp.array([0.5])
    obs = nif.LinearGaussianObservation(matrix, noise)
    wts, mean, cov = exact_posterior(flow, matrix, noise, y)
    assert wts.min() > 0.15  # both components matter: the Laplace Gaussian alone is wrong
    approx = nif.laplace_approximation(flow, obs, y)
    model = nif.inverse_problem(flow, obs)
    mcmc = MCMC(NUTS(model), num_warmup=250, num_samples=600, progress_bar=False)
    mcmc.run(jax.random.key(1), y, laplace=approx)
    draws = mcmc.get_samples()
    assert set(draws) >= {"x", "x_latent", "x_white"}
    # the same affine map evaluated twice in float32: rounding of a 2-term dot product of
    # O(1) numbers, at most ~1e-6 whatever the order of operations
    np.testing.assert_allclose(
        draws["x_latent"], approx.loc + draws["x_white"] @ approx.scale_tril.T, atol=1e-5
    )
    check_moments(draws["x"], mean, cov)


def test_batch_equals_one_by_one(gaussian_problem):
    flow, obs, y = gaussian_problem
    ys = jnp.stack([y, -y, 2 * y])
    batch = nif.laplace_approximation(flow, obs, ys, steps=100)
    assert batch.loc.shape == (3, 3) and batch.scale_tril.shape == (3, 3, 3)
    # the batch runs each problem's computation vectorised: they differ by float32
    # rounding (7e-7 here), or by the solver's error (rtol = atol = 1e-6) in the rare
    # case where rounding changes an adaptive step
    for i in range(3):
        one = nif.laplace_approximation(flow, obs, ys[i], steps=100)
        np.testing.assert_allclose(batch.loc[i], one.loc, atol=1e-5)
        np.testing.assert_allclose(batch.scale_tril[i], one.scale_tril, atol=1e-5)
    # a batched model samples the three problems at once, each site with the batch shape
    model = nif.inverse_problem(flow, obs)
    mcmc = MCMC(NUTS(model), num_warmup=20, num_samples=10, progress_bar=False)
    mcmc.run(jax.random.key(0), ys, laplace=batch)
    assert mcmc.get_samples()["x"].shape == (10, 3, 3)


def test_reduced_flow_has_k_dimensional_approximation():
    gm = gaussian_oracle(1, 3)
    flow = _flow(gm, keep=2)
    obs = nif.LinearGaussianObservation.mask(np.array([True, False, True]), 0.2)
    approx = nif.laplace_approximation(flow, obs, jnp.array([0.3, -0.2]), steps=50)
    assert approx.loc.shape == (2,) and approx.scale_tril.shape == (2, 2)
    full = nif.laplace_approximation(flow, obs, jnp.array([0.3, -0.2]), steps=50, reduced=False)
    assert full.loc.shape == (3,)


def test_bad_inputs_are_named(gaussian_problem):
    flow, obs, y = gaussian_problem
    with pytest.raises(ValueError, match="y: expected one observation"):
        nif.latent_map(flow, obs, jnp.stack([y, y])[None])
    with pytest.raises(ValueError, match="steps"):
        nif.latent_map(flow, obs, y, steps=0)
    with pytest.raises(ValueError, match="learning_rate"):
        nif.latent_map(flow, obs, y, learning_rate=-1.0)
    with pytest.raises(ValueError, match="init"):
        nif.latent_map(flow, obs, y, init=jnp.zeros(2))
    with pytest.raises(ValueError, match="y: expected finite"):
        nif.latent_map(flow, obs, jnp.array([jnp.nan, 0.0]))
    with pytest.raises(ValueError, match="init: expected shape"):
        nif.latent_map(flow, obs, jnp.stack([y, y]), init=jnp.zeros(3))
    bad = nif.LatentLaplace(jnp.zeros(2), jnp.eye(2))
    with pytest.raises(ValueError, match="laplace: expected loc"):
        nif.inverse_problem(flow, obs)(y, laplace=bad)
    with pytest.raises(ValueError, match="laplace: expected None"):
        nif.inverse_problem(flow, obs, latent=False)(y, laplace=bad)
