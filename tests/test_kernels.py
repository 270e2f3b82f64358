"""MALA / ULA kernels: exactness against closed-form posteriors, ULA bias, NumPyro glue."""

import arviz_base
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC, Predictive

import numpyro_inflow as nif

# linear-Gaussian model with very different prior scales (needs preconditioning)
A = jnp.array([[1.0, 0.5, 0.0], [0.0, 3.0, 0.2], [0.2, 0.0, 0.1], [1.0, 1.0, 1.0]])
PRIOR_SD = jnp.array([1.0, 5.0, 0.2])
NOISE = 0.3
Y = jnp.array([1.0, -2.0, 0.3, 0.5])


def linear_model(y=None):
    theta = numpyro.sample("theta", dist.Normal(0.0, PRIOR_SD).to_event(1))
    numpyro.sample("y", dist.Normal(A @ theta, NOISE).to_event(1), obs=y)


def exact_posterior():
    """Conjugate posterior N(m, C) of linear_model given Y (computed in float64)."""
    a, y = np.asarray(A, float), np.asarray(Y, float)
    prec = np.diag(1 / np.asarray(PRIOR_SD, float) ** 2) + a.T @ a / NOISE**2
    cov = np.linalg.inv(prec)
    return cov @ (a.T @ y / NOISE**2), cov


def run(kernel, num_warmup=1000, num_samples=3000, num_chains=2, seed=0, **kw):
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(seed), extra_fields=("accept_prob", "step_size"), **kw)
    return mcmc


def z_scores(draws, target_mean, target_var):
    """Standardised errors of the mean and variance estimates of (chain, draw, d) draws."""
    x = np.asarray(draws, float)
    ess = effective_sample_size(x)
    flat = x.reshape(-1, x.shape[-1])
    ess_sq = effective_sample_size((x - target_mean) ** 2)
    z_mean = (flat.mean(0) - target_mean) / np.sqrt(target_var / ess)
    # Var of the squared deviation of a Gaussian is 2 var^2
    z_var = (((flat - target_mean) ** 2).mean(0) - target_var) / np.sqrt(2 * target_var**2 / ess_sq)
    return z_mean, z_var


@pytest.fixture(scope="module")
def mala_run():
    return run(nif.MALA(linear_model), y=Y)


def test_mala_recovers_exact_posterior_moments(mala_run):
    m, cov = exact_posterior()
    draws = mala_run.get_samples(group_by_chain=True)["theta"]
    z_mean, z_var = z_scores(draws, m, np.diag(cov))
    assert np.all(np.abs(z_mean) < 4.5), z_mean
    assert np.all(np.abs(z_var) < 4.5), z_var
    # negative control: the same check rejects a posterior with the wrong noise scale
    a = np.asarray(A, float)
    prec_wrong = np.diag(1 / np.asarray(PRIOR_SD, float) ** 2) + a.T @ a / (2 * NOISE) ** 2
    cov_wrong = np.linalg.inv(prec_wrong)
    _, z_var_wrong = z_scores(draws, m, np.diag(cov_wrong))
    assert np.max(np.abs(z_var_wrong)) > 10


def test_mala_adaptation(mala_run):
    acc = mala_run.get_extra_fields()["accept_prob"]
    assert 0.45 < float(acc.mean()) < 0.8  # dual averaging towards 0.574
    st = mala_run.last_state
    # the learned diagonal metric follows the posterior variances (within a factor 2.5)
    _, cov = exact_posterior()
    ratio = np.asarray(st.inverse_mass_matrix) / np.diag(cov)
    assert np.all((ratio > 0.4) & (ratio < 2.5)), ratio
    # step size is fixed after warm-up
    steps = mala_run.get_extra_fields(group_by_chain=True)["step_size"]
    assert np.all(np.ptp(np.asarray(steps), axis=1) == 0)


def ula_variance(h, num_chains=64, num_samples=2000):
    """Stationary variance of ULA with fixed step h on N(0, 1) (no preconditioning)."""

    def potential(x):
        return 0.5 * jnp.sum(x**2)

    kernel = nif.ULA(
        potential_fn=potential, step_size=h, adapt_step_size=False, adapt_mass_matrix=False
    )
    mcmc = run(
        kernel,
        num_warmup=200,
        num_samples=num_samples,
        num_chains=num_chains,
        init_params=jnp.zeros((num_chains, 1)),
    )
    x = np.asarray(mcmc.get_samples(group_by_chain=True), float)[..., 0]
    var = float(np.mean(x**2))
    se = float(np.sqrt(2.0 / effective_sample_size(x**2)) * var)
    return var, se


@pytest.mark.parametrize("h", [0.4, 0.1])
def test_ula_bias_matches_closed_form(h):
    # x' = (1 - h) x + sqrt(2h) xi  =>  Var = 1 / (1 - h / 2)
    exact = 1.0 / (1.0 - h / 2.0)
    var, se = ula_variance(h)
    assert abs(var - exact) < 4.5 * se, (var, exact, se)
    if h == 0.4:  # the bias is resolved: the exact target variance 1 is rejected
        assert abs(var - 1.0) > 6 * se


def test_ula_bias_shrinks_with_step_size():
    biases = [ula_variance(h, num_chains=32)[0] - 1.0 for h in (0.4, 0.2, 0.05)]
    assert biases[0] > biases[1] > biases[2] > -0.05
    assert biases[2] < 0.08


def test_numpyro_integration_constrained_sites_and_arviz():
    def model(y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
        numpyro.deterministic("mu2", 2 * mu)
        numpyro.sample("y", dist.Normal(mu, sigma).expand([20]).to_event(1), obs=y)

    y = 1.0 + 0.5 * jax.random.normal(jax.random.key(3), (20,))
    kernel = nif.ULA(model)
    mcmc = run(kernel, num_warmup=300, num_samples=300, y=y)
    s = mcmc.get_samples()
    assert s["sigma"].shape == (600,) and float(s["sigma"].min()) > 0
    np.testing.assert_allclose(s["mu2"], 2 * s["mu"], rtol=1e-6)
    assert "step size" in kernel.get_diagnostics_str(jax.tree.map(lambda a: a[0], mcmc.last_state))
    mcmc.print_summary()
    pred = Predictive(model, s)(jax.random.key(1))
    assert pred["y"].shape == (600, 20)
    dt = arviz_base.from_numpyro(mcmc)
    assert {"acceptance_rate", "step_size", "diverging"} <= set(dt.sample_stats.data_vars)
    # post-warm-up state can be reused, as with NUTS
    mcmc.post_warmup_state = mcmc.last_state
    mcmc.run(mcmc.post_warmup_state.rng_key, y=y)
    assert mcmc.get_samples()["mu"].shape == (600,)


def test_sequential_chains_and_single_chain():
    mcmc = MCMC(
        nif.MALA(linear_model),
        num_warmup=100,
        num_samples=50,
        num_chains=2,
        chain_method="sequential",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(0), y=Y)
    assert mcmc.get_samples(group_by_chain=True)["theta"].shape == (2, 50, 3)
    one = run(nif.MALA(linear_model), num_warmup=10, num_samples=10, num_chains=1, y=Y)
    assert one.get_samples()["theta"].shape == (10, 3)


def test_argument_errors():
    with pytest.raises(ValueError, match="model/potential_fn"):
        nif.MALA()
    with pytest.raises(ValueError, match="model/potential_fn"):
        nif.MALA(linear_model, potential_fn=lambda x: x)
    with pytest.raises(ValueError, match="step_size"):
        nif.ULA(linear_model, step_size=-1.0)
    with pytest.raises(ValueError, match="target_accept_prob"):
        nif.MALA(linear_model, target_accept_prob=1.5)
    with pytest.raises(ValueError, match="init_params"):
        nif.MALA(potential_fn=lambda x: jnp.sum(x**2)).init(jax.random.key(0), 10)


@pytest.mark.slow
def test_mala_with_oracle_flow_prior_matches_grid_posterior():
    """Gaussian-mixture oracle flow prior + linear-Gaussian likelihood vs a grid posterior."""
    weights = jnp.array([0.5, 0.5])
    means = jnp.array([[-1.0, 0.0], [1.0, 0.5]])
    covs = jnp.stack([0.3 * jnp.eye(2)] * 2)
    score = nif.GaussianMixtureScore(weights, means, covs)
    flow = nif.InflationaryFlow(
        nif.InflationSchedule.from_moments(*score.moments()), score, rtol=1e-4, atol=1e-4
    )
    H, noise, y = np.array([1.0, 0.5]), 0.3, 0.4

    def model(y=None):
        x = numpyro.sample("x", nif.InflationaryFlowDistribution(flow))
        numpyro.sample("y", dist.Normal(jnp.asarray(H) @ x, noise), obs=y)

    # reference: the mixture density (what the oracle flow represents) times the likelihood
    g = np.linspace(-4, 4, 401)
    xx = np.stack(np.meshgrid(g, g, indexing="ij"), -1)
    from scipy import stats

    prior = sum(
        float(w) * stats.multivariate_normal(np.asarray(m), np.asarray(c)).pdf(xx)
        for w, m, c in zip(weights, means, covs, strict=True)
    )
    post = prior * stats.norm.pdf(y, xx @ H, noise)
    post /= post.sum()
    ref_mean = np.einsum("ij,ijk->k", post, xx)
    ref_var = np.einsum("ij,ijk->k", post, (xx - ref_mean) ** 2)
    mcmc = run(nif.MALA(model), num_warmup=300, num_samples=1000, y=y)
    draws = mcmc.get_samples(group_by_chain=True)["x"]
    z_mean, z_var = z_scores(draws, ref_mean, ref_var)
    assert np.all(np.abs(z_mean) < 4.5) and np.all(np.abs(z_var) < 4.5), (z_mean, z_var)
