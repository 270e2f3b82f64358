"""The flow distribution's semantics: its density, its samples, its errors, in float64.

Every check is against something independent of the code under test: densities by the
exact Gaussian-mixture oracle, samples by a chi-square test against ``log_prob``. The
generic NumPyro contract (pytrees, shapes, Jacobians, handlers) is in
``test_numpyro_contract.py``.

Everything runs under ``jax.enable_x64`` (a context, so the float32 modules are
unaffected). Where a comparison is about exactness the oracle flow is solved at
rtol = atol = 1e-10 and compared at ``SOLVE`` = 1e-6: each side is within the solver's
global error of the exact value, a small multiple of the tolerance for these short
smooth solves, so the margin is about 100 on any CPU, while a real error (a missing
log-det term) is O(1e-2) or more.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import random_mixture
from scipy import stats

import numpyro_inflow as nif

SOLVE = 1e-6


@pytest.fixture(autouse=True, scope="module")
def _x64_module():
    with jax.enable_x64(True):
        yield


def _flow(gm, keep=None, **kw):
    schedule = nif.InflationSchedule.from_moments(*gm.moments(), keep=keep)
    return nif.InflationaryFlow(schedule, gm, **kw)


@pytest.fixture(scope="module")
def mix2(_x64_module):
    return random_mixture(1, 3, 2, jnp.float64)


@pytest.fixture(scope="module")
def exact_flow(mix2):
    return _flow(mix2, rtol=1e-10, atol=1e-10)


def _close(actual, desired, tol=SOLVE):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), rtol=tol, atol=tol)


def test_log_prob_is_the_oracle_density_and_integrates_to_one(mix2):
    # rtol = atol = 1e-8: the solver's error (below 1e-6) is far below the bound below
    d = nif.InflationaryFlowDistribution(_flow(mix2, rtol=1e-8, atol=1e-8))
    gm, sch = mix2, d.flow.schedule
    lo, hi = gm.means.min(0) - 3.5, gm.means.max(0) + 3.5
    g0, g1 = jnp.linspace(lo[0], hi[0], 50), jnp.linspace(lo[1], hi[1], 50)
    grid = jnp.stack(jnp.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 2)
    pts = jnp.concatenate([gm.sample(jax.random.key(2), 20), grid])
    lp, z = d.log_prob(pts), d.flow.encode(pts)
    # The exact density is the mixture convolved with N(0, gamma(0)) (rotation invariant).
    # The base N(0, I) is the law of the latent only as gamma(T) / lambda_1 -> infinity:
    # at the schedule's end time the latent variances are 1 - O(lambda_1 / gamma(T)) and
    # the components' latent means are O(sqrt(lambda_1 / gamma(T))) apart, so log q is
    # off by O(lambda_1 / gamma(T)) (1 + z_i^2) per direction (0.25-0.35 of this bound
    # for the mixtures of this suite).
    ratio = jnp.max(sch.eigenvalues) / jnp.min(sch.gamma(sch.t_end))
    bound = ratio * jnp.sum(1 + z**2, axis=-1) + SOLVE
    exact = gm.log_prob_t(sch.to_eigen(pts), 0.0, sch)
    np.testing.assert_array_less(np.abs(lp - exact), bound)
    # normalisation on the grid, which covers the mass: the bound is the grid's
    # truncation and quadrature error (tail mass beyond 3.5 component widths)
    cell = (g0[1] - g0[0]) * (g1[1] - g1[0])
    assert abs(float(jnp.sum(jnp.exp(lp[20:])) * cell) - 1.0) < 1e-2


def test_samples_agree_with_log_prob(mix2):
    """Chi-square goodness of fit: sample counts in cells vs cell masses from log_prob.

    A statistical test at the default solver tolerances (their density error, ~1e-4, is
    far below what 3000 samples resolve); the seeds are fixed.
    """
    flow = _flow(mix2)
    d = nif.InflationaryFlowDistribution(flow)
    n = 3000
    xs = np.asarray(jax.jit(lambda k: d.sample(k, (n,)))(jax.random.key(3)))
    assert np.all(np.isfinite(xs))
    # midpoint grid; 5 x 5 cells whose edges lie on grid-cell boundaries (placed at
    # quantiles of independent oracle draws), so cell masses are midpoint-rule accurate
    lo, hi, m = xs.min(0) - 2.0, xs.max(0) + 2.0, 120
    h = (hi - lo) / m
    g0, g1 = (lo[i] + (np.arange(m) + 0.5) * h[i] for i in range(2))
    grid = np.stack(np.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 2)
    ref = np.asarray(flow.score.sample(jax.random.key(99), 1000))
    q = [0.2, 0.4, 0.6, 0.8]
    edges = [lo[i] + np.round((np.quantile(ref[:, i], q) - lo[i]) / h[i]) * h[i] for i in range(2)]

    def cells(pts):
        return np.digitize(pts[:, 0], edges[0]) * 5 + np.digitize(pts[:, 1], edges[1])

    counts = np.bincount(cells(xs), minlength=25)
    p = np.asarray(jnp.exp(jax.jit(d.log_prob)(jnp.asarray(grid))))
    probs = np.bincount(cells(grid), weights=p / p.sum(), minlength=25)
    keep = probs * n > 5
    expected = probs[keep] / probs[keep].sum() * counts[keep].sum()
    chi2 = np.sum((counts[keep] - expected) ** 2 / expected)
    pval = stats.chi2.sf(chi2, keep.sum() - 1)
    assert pval > 1e-3, (chi2, pval)


def test_generic_transformed_distribution_of_the_transform(exact_flow):
    """NumPyro's own TransformedDistribution with the transform: the same density, from
    the sampling solve's intermediates or from a recomputed inverse and log-det."""
    base = dist.Normal(jnp.zeros(()), 1.0).expand([2]).to_event(1)
    td = dist.TransformedDistribution(base, nif.InflationaryFlowTransform(exact_flow))
    x, inter = td.sample_with_intermediates(jax.random.key(0), (4,))
    exact = exact_flow.log_prob(x)  # the prior's base is N(0, I): PR-preserving flow
    _close(td.log_prob(x, inter), exact)
    _close(td.log_prob(x), exact)


def test_robust_flow_and_value_errors(exact_flow):
    d = nif.InflationaryFlowDistribution(exact_flow)
    assert d.robust and not d.flow.throw and exact_flow.throw  # rebuilt with throw=False
    assert nif.InflationaryFlowDistribution(exact_flow, robust=False).flow.throw
    x = d.sample(jax.random.key(1), (3, 4))
    lp = d.expand([4]).log_prob(x)
    _close(lp, d.flow.log_prob(x), 1e-12)  # the same solve: the base is the flow's
    with pytest.raises(ValueError, match="value"):
        d.log_prob(jnp.zeros((3, 3)))
    # NumPyro's validation (on by default): out-of-support values warn and get -inf
    bad = x.at[0, 1, 0].set(jnp.nan)
    with pytest.warns(UserWarning, match="Out-of-support"):
        lp_bad = d.expand([4]).log_prob(bad)
    assert np.isneginf(lp_bad[0, 1]) and np.sum(np.isneginf(lp_bad)) == 1
    _close(jnp.where(jnp.isinf(lp_bad), lp, lp_bad), lp, 1e-12)
    with pytest.raises(ValueError, match="finite"):  # without validation: a clear error
        nif.InflationaryFlowDistribution(exact_flow, validate_args=False).log_prob(bad)
    with pytest.raises(ValueError, match="InflationaryFlow"):
        nif.InflationaryFlowDistribution("not a flow")
    with pytest.raises(ValueError, match="InflationaryFlow"):
        nif.InflationaryFlowTransform(None)


def test_reducing_flow_samples_but_needs_regularized_density():
    gm = random_mixture(3, 2, 3, jnp.float64)
    scale = jnp.ones(3).at[-1].set(0.15)
    covs = gm.covariances * scale[:, None] * scale[None, :] + 0.01 * jnp.eye(3)
    flow = _flow(nif.GaussianMixtureScore(gm.weights, gm.means * scale, covs), keep=2,
                 rtol=1e-10, atol=1e-10)  # fmt: skip
    d = nif.InflationaryFlowDistribution(flow)
    assert d.is_reducing
    x, inter = d.sample_with_intermediates(jax.random.key(0), (3,))
    assert x.shape == (3, 3) and inter == []  # no density, so no log-det to carry
    with pytest.raises(ValueError, match="PR-reducing"):
        d.log_prob(x)
    reg = nif.InflationaryFlowDistribution(flow, regularized_density=True)
    # the same solve: the base is the flow's, with the squeezed variances epsilon_i
    _close(reg.log_prob(x), reg.flow.log_prob(x), 1e-12)


def test_hutchinson_flow_needs_a_trace_key_for_its_density(exact_flow):
    flow = exact_flow.replace(trace="hutchinson", num_probes=2)
    assert flow.needs_trace_key
    d = nif.InflationaryFlowDistribution(flow)
    x = d.sample(jax.random.key(0), (3,))
    with pytest.raises(ValueError, match="trace_key"):
        d.log_prob(x)
    # sampling through NumPyro needs no key: no log-det is carried without a density
    tr = numpyro.handlers.trace(numpyro.handlers.seed(lambda: numpyro.sample("x", d), 0))
    assert tr.get_trace()["x"]["intermediates"] == []
    key = jax.random.key(7)
    keyed = nif.InflationaryFlowDistribution(flow, trace_key=key)
    assert keyed.transforms[0].trace_key is key
    _close(keyed.log_prob(x), keyed.flow.log_prob(x, key), 1e-12)  # the same probes
    s, inter = keyed.sample_with_intermediates(jax.random.key(1), (3,))
    assert len(inter) == 1 and bool(jnp.all(jnp.isfinite(keyed.log_prob(s, inter))))
