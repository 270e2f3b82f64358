"""NUTS with flow priors against exact posteriors, robustness and the NumPyro ecosystem.

Ground truths are independent of the sampler: a Gaussian-mixture prior under a
linear-Gaussian likelihood has a Gaussian-mixture posterior in closed form
(information form, written out here), and a PR-reducing prior's posterior is an
integral over its 2-D latent, done by quadrature on a grid.
"""

import arviz
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from conftest import check_moments as _check_moments
from conftest import exact_posterior as _exact_posterior
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC, NUTS, Predictive

import numpyro_inflow as nif


def _mixture(weights, means, covs):
    f = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return nif.GaussianMixtureScore(f(weights), f(means), f(covs))


def _flow(gm, keep=None, **kw):
    kw.setdefault("rtol", 1e-4)
    kw.setdefault("atol", 1e-4)
    sch = nif.InflationSchedule.from_moments(*gm.moments(), keep=keep)
    return nif.InflationaryFlow(sch, gm, **kw)


def _nuts(model, *args, warmup=250, samples=500, chains=1, seed=0, max_tree_depth=10, **kw):
    mcmc = MCMC(
        NUTS(model, max_tree_depth=max_tree_depth),
        num_warmup=warmup,
        num_samples=samples,
        num_chains=chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(seed), *args, extra_fields=("diverging",), **kw)
    return mcmc


@pytest.fixture(scope="module")
def overlap_flow():
    """2-D, two overlapping components with different shapes (non-Gaussian posterior)."""
    gm = _mixture(
        [0.4, 0.6],
        [[-0.8, 0.0], [0.8, 0.3]],
        [[[0.4, 0.15], [0.15, 0.3]], [[0.3, -0.1], [-0.1, 0.5]]],
    )
    return _flow(gm)


@pytest.mark.parametrize("path", ["latent", "plain"])
def test_prp_posterior_matches_closed_form(overlap_flow, path):
    matrix, noise, y = jnp.array([[1.0, 1.0]]), 0.4, jnp.array([0.5])
    obs = nif.LinearGaussianObservation(matrix, noise)
    wts, mean, cov = _exact_posterior(overlap_flow, matrix, noise, y)
    assert wts.min() > 0.15  # both components matter
    model = nif.inverse_problem(overlap_flow, obs, latent=path == "latent")
    mcmc = _nuts(model, y)
    x = mcmc.get_samples()["x"]
    assert x.shape == (500, 2)
    _check_moments(x, mean, cov)


@pytest.mark.slow
def test_multimodal_posterior_chains_predictive_arviz():
    """Two far-apart modes: the latent connects them; vectorised chains, Predictive, ArviZ."""
    gm = _mixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 0.0]], 0.15 * np.tile(np.eye(2), (2, 1, 1)))
    flow = _flow(gm)
    matrix, noise, y = jnp.array([[0.0, 1.0]]), 0.3, jnp.array([0.2])
    wts, mean, cov = _exact_posterior(flow, matrix, noise, y)
    np.testing.assert_allclose(wts, [0.3, 0.7], atol=1e-6)
    obs = nif.LinearGaussianObservation(matrix, noise)
    model = nif.inverse_problem(flow, obs)
    mcmc = _nuts(model, y, chains=2, samples=600)
    x = mcmc.get_samples(group_by_chain=True)["x"]
    assert x.shape == (2, 600, 2)
    right = np.asarray(x[..., 0] > 0)
    # each chain visits both modes: the modes are connected in the latent space
    assert np.all(right.mean(1) > 0.3) and np.all(right.mean(1) < 0.95)
    frac = right.mean()
    ess = effective_sample_size(np.asarray(right, np.float64)[..., None])[0]
    assert abs(frac - 0.7) < 5 * np.sqrt(0.21 / ess) + 0.02, (frac, ess)
    _check_moments(x, mean, cov, extra_tol=0.05)

    # Predictive: posterior predictive and prior predictive
    post = mcmc.get_samples()
    pred = Predictive(model, post)(jax.random.key(1))
    assert pred["y"].shape == (1200, 1)
    # Predictive's decode and the sampler's are separate compilations of the same solve:
    # they differ by float32 rounding (~1e-6), or by up to the solver's error (rtol =
    # atol = 1e-4, amplified where the map is steep) where rounding flips an adaptive step
    diff = np.abs(np.asarray(pred["x"]) - np.asarray(post["x"]))
    assert np.median(diff) < 1e-4 and diff.max() < 0.05
    prior = Predictive(model, num_samples=50)(jax.random.key(2))
    assert prior["x"].shape == (50, 2) and prior["x_latent"].shape == (50, 2)
    assert np.all(np.isfinite(prior["x"]))

    # ArviZ 1.x: a DataTree with posterior, sample stats and observed data
    idata = arviz.from_numpyro(mcmc)
    assert "posterior" in idata.children
    assert idata.posterior["x"].shape == (2, 600, 2)
    assert idata.posterior["x_latent"].shape == (2, 600, 2)


def test_prr_posterior_matches_latent_quadrature():
    """3-D mixture with a thin third axis, reduced to a 2-D latent; exact by quadrature."""
    means = [[-1.0, 0.5, 0.05], [1.0, -0.3, -0.05]]
    covs = np.array([np.diag([0.3, 0.4, 0.01]), np.diag([0.5, 0.2, 0.01])])
    flow = _flow(_mixture([0.5, 0.5], means, covs), keep=2)
    matrix = jnp.array([[1.0, 0.5, 0.0], [0.0, 1.0, 1.0]])
    noise, y = 0.4, jnp.array([0.6, 0.1])
    obs = nif.LinearGaussianObservation(matrix, noise)

    n = 70
    g = jnp.linspace(-4.5, 4.5, n)
    zk = jnp.stack(jnp.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    xg = np.asarray(flow.from_latent(zk), np.float64)
    logp = -0.5 * np.sum(np.asarray(zk, np.float64) ** 2, 1)
    resid = y[None, :] - xg @ np.asarray(matrix, np.float64).T
    logp = logp - 0.5 * np.sum(resid**2, 1) / noise**2
    p = np.exp(logp - logp.max())
    p /= p.sum()
    mean = p @ xg
    cov = (xg - mean).T @ ((xg - mean) * p[:, None])

    model = nif.inverse_problem(flow, obs)  # reduced latent by default
    mcmc = _nuts(model, y)
    samples = mcmc.get_samples()
    assert samples["x_latent"].shape == (500, 2)
    x = samples["x"]
    assert x.shape == (500, 3)
    _check_moments(x, mean, cov)


def test_failed_solves_are_rejected_and_counted():
    gm = _mixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], 0.2 * np.tile(np.eye(2), (2, 1, 1)))
    good = _flow(gm, rtol=1e-5, atol=1e-5)
    z = jax.random.normal(jax.random.key(0), (200, 2))
    # a step limit below what some latent points need: those solves give up
    _, info = good.decode_with_info(z)
    tiny = good.replace(max_steps=int(np.percentile(np.asarray(info.num_steps), 70)))
    _, info = tiny.replace(throw=False).decode_with_info(z)
    failing = np.asarray(~info.success)
    assert 0.05 < failing.mean() < 0.9
    with pytest.raises(Exception, match="solve failed"):
        tiny.decode(z[failing][:1])  # the flow itself raises; the NumPyro objects do not

    obs = nif.LinearGaussianObservation(jnp.eye(2), 0.5)
    model = nif.inverse_problem(tiny, obs)
    with nif.SolveFailureCounter() as counter:  # shallow trees: failure handling, not mixing
        mcmc = _nuts(model, jnp.array([0.3, 0.2]), warmup=30, samples=40, max_tree_depth=4)
    samples = mcmc.get_samples()
    assert np.all(np.isfinite(samples["x"]))
    assert counter.count > 0
    diverging = int(mcmc.get_extra_fields()["diverging"].sum())
    assert diverging > 0
    # every kept latent decodes successfully: failed proposals were never accepted
    _, info = tiny.replace(throw=False).decode_with_info(samples["x_latent"])
    assert bool(jnp.all(info.success))


def test_failure_gives_minus_inf_log_prob():
    gm = _mixture([1.0], [[0.0, 0.0]], [np.eye(2)])
    flow = _flow(gm, max_steps=2)  # every solve fails
    with nif.SolveFailureCounter() as counter:
        lp = nif.InflationaryFlowDistribution(flow).log_prob(jnp.zeros((3, 2)))
        x = nif.InflationaryFlowDistribution(flow).sample(jax.random.key(0), (2,))
    assert np.all(np.isneginf(lp))
    assert np.all(np.isnan(x))
    assert counter.count == 5


# ---------------------------------------------------------------------- bad inputs
def test_bad_inputs_give_clear_errors():
    gm2 = _mixture([1.0], [[0.0, 0.0]], [np.eye(2)])
    gm3 = _mixture([1.0], [[0.0, 0.0, 0.0]], [np.diag([1.0, 1.0, 0.01])])
    flow2, flow3r = _flow(gm2), _flow(gm3, keep=2)
    obs2 = nif.LinearGaussianObservation(jnp.eye(2), 0.1)

    with pytest.raises(ValueError, match="flow: expected a flow of dimension 2"):
        nif.inverse_problem(flow3r, obs2)
    with pytest.raises(ValueError, match="x: expected points of dimension 2"):
        obs2.forward(jnp.zeros(3))

    model = nif.inverse_problem(flow2, obs2)
    with pytest.raises(ValueError, match="obs: expected finite values"):
        numpyro.handlers.seed(model, 0)(jnp.array([0.0, jnp.nan]))
    with pytest.raises(ValueError, match="obs: expected an array whose last dimension is 2"):
        numpyro.handlers.seed(model, 0)(jnp.zeros(3))

    # a PR-reducing flow where a full density is needed
    with pytest.raises(ValueError, match="PR-reducing"):
        nif.inverse_problem(flow3r, nif.LinearGaussianObservation(jnp.eye(3), 0.1), latent=False)

    def plain(y=None):
        x = numpyro.sample("x", nif.InflationaryFlowDistribution(flow3r))
        numpyro.sample("y", numpyro.distributions.Normal(x, 0.1).to_event(1), obs=y)

    with pytest.raises(ValueError, match="PR-reducing"):
        MCMC(NUTS(plain), num_warmup=1, num_samples=1, progress_bar=False).run(
            jax.random.key(0), jnp.zeros(3)
        )

    # LatentReparam on the wrong kind of site
    def observed(y):
        numpyro.sample("x", nif.InflationaryFlowDistribution(flow2), obs=y)

    with pytest.raises(ValueError, match="latent \\(unobserved\\) site"):
        numpyro.handlers.reparam(observed, config={"x": nif.LatentReparam()})(jnp.zeros(2))

    def normal_site():
        numpyro.sample("x", numpyro.distributions.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="InflationaryFlowDistribution"):
        numpyro.handlers.seed(
            numpyro.handlers.reparam(normal_site, config={"x": nif.LatentReparam()}), 0
        )()


def test_latent_reparam_plates_and_full_latent():
    gm3 = _mixture([1.0], [[0.0, 0.0, 0.0]], [np.diag([1.0, 0.5, 0.01])])
    flow = _flow(gm3, keep=2)

    def model():
        with numpyro.plate("n", 4):
            return numpyro.sample("x", nif.InflationaryFlowDistribution(flow))

    for reduced, k in ((True, 2), (False, 3)):
        rep = numpyro.handlers.reparam(model, config={"x": nif.LatentReparam(reduced=reduced)})
        tr = numpyro.handlers.trace(numpyro.handlers.seed(rep, 0)).get_trace()
        assert tr["x_latent"]["value"].shape == (4, k)
        assert tr["x"]["type"] == "deterministic"
        assert tr["x"]["value"].shape == (4, 3)
