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
from numpyro.infer.hmc import HMCState

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


def run(kernel, num_warmup=1000, num_samples=3000, num_chains=2, seed=0, fields=None, **kw):
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(seed), extra_fields=fields or ("accept_prob", "step_size"), **kw)
    return mcmc


def z_scores(draws, target_mean, target_var):
    """z-scores of the mean and variance estimates of (chain, draw, d) draws.

    Each standard error is sd / sqrt(ESS) of the averaged quantity (Markov-chain CLT, ESS
    from the draws themselves), so |z| < 4.5 fails for a correct sampler with probability
    about 7e-6 per coordinate. That holds on any CPU: a different rounding only re-draws
    the chain. The variance of the squared deviation is estimated from the draws, so the
    check needs no Gaussian fourth moment.
    """
    x = np.asarray(draws, float)
    sq = (x - target_mean) ** 2
    flat, flat_sq = x.reshape(-1, x.shape[-1]), sq.reshape(-1, x.shape[-1])
    se_mean = np.sqrt(flat.var(0) / effective_sample_size(x))
    se_var = np.sqrt(flat_sq.var(0) / effective_sample_size(sq))
    return (flat.mean(0) - target_mean) / se_mean, (flat_sq.mean(0) - target_var) / se_var


def mean_and_se(x):
    """Mean of (chain, draw) values and its Monte Carlo standard error sd / sqrt(ESS)."""
    x = np.asarray(x, float)
    return float(x.mean()), float(x.std() / np.sqrt(effective_sample_size(x)))


def std_normal(x):
    return 0.5 * jnp.sum(x**2)


def fixed_step(kernel, h, num_chains=64, num_samples=2000, inverse_mass_matrix=None, **kw):
    """A run with fixed step h and fixed diagonal metric on N(0, 1), started at 0.

    Every 1-D run uses 64 chains: the eager (un-jitted) set-up ops compile once per shape.
    """
    k = kernel(
        potential_fn=std_normal,
        step_size=h,
        adapt_step_size=False,
        adapt_mass_matrix=False,
        inverse_mass_matrix=inverse_mass_matrix,
    )
    mcmc = run(k, 200, num_samples, num_chains, init_params=jnp.zeros((num_chains, 1)), **kw)
    return mcmc, np.asarray(mcmc.get_samples(group_by_chain=True), float)[..., 0]


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
    # Dual averaging steers the warm-up average towards 0.574; the sampling phase uses
    # the averaged (smaller) step, so its rate is somewhat higher. No closed form exists:
    # the band only rejects a failed adaptation (the rate of the fixed final step has a
    # Monte Carlo error below 0.01 here).
    acc = mala_run.get_extra_fields()["accept_prob"]
    assert 0.45 < float(acc.mean()) < 0.8
    st = mala_run.last_state
    # The learned diagonal is the regularised variance of Stan's last window (500 draws;
    # at this chain's ESS of about 0.25 per draw, ESS >= 100), relative error
    # sqrt(2 / 100) = 0.14: the band [0.4, 2.5] lies more than 4 such errors from 1.
    _, cov = exact_posterior()
    ratio = np.asarray(st.inverse_mass_matrix) / np.diag(cov)
    assert np.all((ratio > 0.4) & (ratio < 2.5)), ratio
    # step size is fixed after warm-up, and reported as the Langevin step h everywhere
    steps = mala_run.get_extra_fields(group_by_chain=True)["step_size"]
    assert np.all(np.ptp(np.asarray(steps), axis=1) == 0)
    np.testing.assert_array_equal(steps[:, -1], st.adapt_state.step_size)
    assert np.all(np.asarray(st.num_steps) == 1)  # one leapfrog step, whatever the step size


def mala_mean_accept(h, n=801, lim=8.0):
    """Stationary mean acceptance of MALA with step h on N(0, 1), by quadrature.

    x ~ N(0, 1), x' = (1 - h) x + sqrt(2 h) xi; the Metropolis-Hastings log ratio of
    the Gaussian proposal q(x' | x) = N((1 - h) x, 2 h) is written out independently of
    the kernel. The rule on 801^2 points agrees with 6001^2 points to 1e-7.
    """
    g = np.linspace(-lim, lim, n)
    w = np.exp(-(g**2) / 2)
    w /= w.sum()
    x, xi = np.meshgrid(g, g, indexing="ij")
    xn = (1 - h) * x + np.sqrt(2 * h) * xi
    log_q_fwd = -((xn - (1 - h) * x) ** 2) / (4 * h)
    log_q_bwd = -((x - (1 - h) * xn) ** 2) / (4 * h)
    log_ratio = 0.5 * x**2 - 0.5 * xn**2 + log_q_bwd - log_q_fwd
    return float(np.einsum("i,j,ij->", w, w, np.minimum(1.0, np.exp(log_ratio))))


@pytest.fixture(scope="module")
def mala_fixed():
    # with M^{-1} = 2 on N(0, 1), MALA's step h = 0.4 moves as h M^{-1} = 0.8 unpreconditioned
    return fixed_step(nif.MALA, 0.4, inverse_mass_matrix=2.0)


def test_mala_step_size_is_the_langevin_time_step(mala_fixed):
    mcmc, x = mala_fixed
    acc, se = mean_and_se(mcmc.get_extra_fields(group_by_chain=True)["accept_prob"])
    assert abs(acc - mala_mean_accept(0.8)) < 4.5 * se, (acc, mala_mean_accept(0.8), se)
    # positive control: were 0.4 the leapfrog step (h = 0.08, h M^{-1} = 0.16), far more
    # moves would pass
    assert abs(acc - mala_mean_accept(2.0 * 0.4**2 / 2)) > 6 * se
    np.testing.assert_array_equal(mcmc.get_extra_fields()["step_size"], np.float32(0.4))
    z_mean, z_var = z_scores(x[..., None], 0.0, 1.0)  # and MALA is exact
    assert abs(z_mean[0]) < 4.5 and abs(z_var[0]) < 4.5, (z_mean, z_var)


def test_state_is_an_hmc_state_pytree(mala_fixed):
    st = mala_fixed[0].last_state  # MALA and ULA share this state and its construction
    assert isinstance(st, nif.LangevinState) and isinstance(st, HMCState)
    leaves, tree = jax.tree.flatten(st)
    assert type(jax.tree.unflatten(tree, leaves)) is nif.LangevinState
    back = jax.jit(lambda s: s)(st)  # survives a trip through jit
    assert type(back) is nif.LangevinState and np.all(back.step_size == np.float32(0.4))
    np.testing.assert_array_equal(back.inverse_mass_matrix, 2.0)
    np.testing.assert_allclose(back.adapt_state.mass_matrix_sqrt, np.sqrt(0.5), rtol=1e-6)


@pytest.fixture(scope="module")
def ula_variances():
    """Stationary variance (and its standard error) of ULA at two fixed steps on N(0, 1).

    The stationary law is Gaussian (a linear AR(1) chain) with mean 0, so the variance
    estimate is mean(x^2), with standard error sqrt(2 var^2 / ESS(x^2)).
    """
    out = {}
    for h in (0.4, 0.1):
        _, x = fixed_step(nif.ULA, h)
        var = float(np.mean(x**2))
        out[h] = var, float(np.sqrt(2.0 / effective_sample_size(x**2)) * var)
    return out


@pytest.mark.parametrize("h", [0.4, 0.1])
def test_ula_bias_matches_closed_form(ula_variances, h):
    # x' = (1 - h) x + sqrt(2h) xi  =>  Var = 1 / (1 - h / 2)
    var, se = ula_variances[h]
    assert abs(var - 1.0 / (1.0 - h / 2.0)) < 4.5 * se, (var, se)
    if h == 0.4:  # the bias is resolved: the exact target variance 1 is rejected
        assert abs(var - 1.0) > 6 * se


def test_ula_bias_shrinks_with_step_size(ula_variances):
    (v_big, se_big), (v_small, se_small) = ula_variances[0.4], ula_variances[0.1]
    se = np.hypot(se_big, se_small)
    exact = 1.0 / (1.0 - 0.4 / 2.0) - 1.0 / (1.0 - 0.1 / 2.0)  # 0.197
    assert abs((v_big - v_small) - exact) < 4.5 * se
    assert v_big - v_small > 6 * se  # the smaller step is resolved as less biased


@pytest.mark.parametrize("kernel", [nif.MALA, nif.ULA])
def test_non_finite_potential_is_never_entered(kernel):
    # N(0, 1) where a failed solve would give U = NaN (x > 1) or U = +inf (x < -1.5)
    def potential(x):
        bad = jnp.where(x[0] > 1.0, jnp.nan, jnp.inf)
        return jnp.where((x[0] > 1.0) | (x[0] < -1.5), bad, std_normal(x))

    # forward-mode gradients, as a flow prior with diffrax.ForwardMode() needs them
    k = kernel(
        potential_fn=potential,
        step_size=0.5,
        adapt_step_size=False,
        forward_mode_differentiation=True,
    )
    mcmc = run(k, 100, 300, 64, init_params=jnp.zeros((64, 1)), fields=("potential_energy",))
    x = np.asarray(mcmc.get_samples())
    assert np.all((x <= 1.0) & (x >= -1.5)), (x.min(), x.max())
    fields = mcmc.get_extra_fields()
    assert np.all(np.isfinite(fields["potential_energy"]))
    assert fields["diverging"].sum() > 0


def test_numpyro_integration_constrained_sites_and_arviz():
    def model(y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
        numpyro.deterministic("mu2", 2 * mu)
        numpyro.sample("y", dist.Normal(mu, sigma).expand([20]).to_event(1), obs=y)

    y = 1.0 + 0.5 * jax.random.normal(jax.random.key(3), (20,))
    kernel = nif.ULA(model)
    mcmc = run(kernel, num_warmup=300, num_samples=300, y=y)
    assert type(mcmc.last_state) is nif.LangevinState
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
    # wrap_model (how HMCGibbs and friends condition a kernel) returns a fresh kernel
    wrapped = kernel.wrap_model(lambda m: numpyro.handlers.condition(m, {"mu": 1.0}))
    assert type(wrapped) is nif.ULA and wrapped.model is not model
    assert set(wrapped.init(jax.random.key(2), 10, model_args=(y,)).z) == {"sigma"}


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
    with pytest.raises(ValueError, match="inverse_mass_matrix"):
        nif.MALA(linear_model, inverse_mass_matrix=[1.0, -1.0])
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
