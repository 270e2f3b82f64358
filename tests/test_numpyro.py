"""NumPyro objects: the transform registry, the distribution, pytree and transform behaviour.

Every check is against something independent of the code under test: Jacobians by
automatic differentiation and finite differences, densities by grid integration and
the exact Gaussian-mixture oracle, samples by a chi-square test against ``log_prob``.
"""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from conftest import random_mixture
from scipy import stats

import numpyro_inflow as nif


def _flow(gm, keep=None, **kw):
    schedule = nif.InflationSchedule.from_moments(*gm.moments(), keep=keep)
    return nif.InflationaryFlow(schedule, gm, **kw)


def _thin_mixture(seed, dim):
    """A mixture whose last direction is thin, so a PR-reducing flow makes sense."""
    gm = random_mixture(seed, 2, dim)
    scale = jnp.ones(dim).at[-1].set(0.15)
    return nif.GaussianMixtureScore(
        gm.weights,
        gm.means * scale,
        gm.covariances * scale[:, None] * scale[None, :] + 0.01 * jnp.eye(dim),
    )


# One line per flow and one per transform: a new transform is covered by adding a line.
_FLOWS = {
    "prp2": lambda: _flow(random_mixture(1, 3, 2)),
    "prp3": lambda: _flow(random_mixture(2, 2, 3)),
    "prr3to2": lambda: _flow(_thin_mixture(3, 3), keep=2),
    "trained2": lambda: nif.fit(  # a tiny learned denoiser (seconds to train)
        nif.datasets.load("circles", n=500, seed=0),
        steps=20,
        batch_size=64,
        network_kwargs=dict(width=16, depth=1),
        progress=False,
        validation_fraction=0.0,
    ),
}
_REGISTRY = {
    "full-prp2": ("prp2", nif.InflationaryFlowTransform),
    "full-prp3": ("prp3", nif.InflationaryFlowTransform),
    "full-prr3to2": ("prr3to2", nif.InflationaryFlowTransform),
    "reduced-prr3to2": ("prr3to2", nif.ReducedLatentTransform),
    "full-trained2": ("trained2", nif.InflationaryFlowTransform),
}


@pytest.fixture(scope="module")
def flows():
    return {k: build() for k, build in _FLOWS.items()}


def _latents(t, n, seed=0):
    """Typical latent points: 0.8 base standard deviations (tiny along squeezed axes)."""
    flow = t.flow
    if isinstance(t, nif.ReducedLatentTransform):
        return 0.8 * jax.random.normal(jax.random.key(seed), (n, flow.latent_dim))
    return 0.8 * flow.sample_latent(jax.random.key(seed), (n,))


@pytest.mark.parametrize("name", sorted(_REGISTRY))
def test_transform_contract(name, flows):
    flow_id, cls = _REGISTRY[name]
    t = cls(flows[flow_id])
    reduced = isinstance(t, nif.ReducedLatentTransform)
    d = t.flow.dim
    k = t.flow.latent_dim if reduced else d
    z = _latents(t, 3)

    # shapes
    assert t.forward_shape((7, k)) == (7, d)
    assert t.inverse_shape((7, d)) == (7, k)
    with pytest.raises(ValueError, match="shape"):
        t.forward_shape((7, k + 1))
    assert t.domain is dist.constraints.real_vector
    assert t.codomain is dist.constraints.real_vector

    # bijection round trips (the reduced map: on its image)
    x, inter = t.call_with_intermediates(z)
    assert x.shape == (3, d)
    x_plain = t(z)  # plain solve; the fused one controls the error of the log-det too
    np.testing.assert_allclose(x_plain, x, atol=2e-3)
    np.testing.assert_allclose(t.inv(x), z, atol=2e-3)
    if not reduced:
        xd = t(_latents(t, 3, seed=1))
        if not t.flow.schedule.is_reducing:
            xd = xd + 0.05  # arbitrary points, not only decoded ones
        np.testing.assert_allclose(t(t.inv(xd)), xd, atol=2e-3)

    # Jacobian by reverse-mode AD vs central finite differences (this is the grad check),
    # then log-det vs slogdet of that Jacobian
    # Jacobian by forward-mode AD (diffrax ForwardMode adjoint) and, independently, the
    # reverse-mode gradient of a projection through the default adjoint: they must agree;
    # then log-det vs slogdet(jacfwd)
    t_fwd = cls(t.flow.replace(adjoint=diffrax.ForwardMode()))
    jac = jax.vmap(jax.jacfwd(lambda zi: t_fwd(zi)))(z)
    assert jac.shape == (3, d, k)
    w = jnp.linspace(-1.0, 1.0, d)
    grad = jax.grad(lambda zi: jnp.vdot(w, t(zi)))(z[0])
    np.testing.assert_allclose(grad, w @ jac[0], rtol=1e-3, atol=1e-3 * jnp.abs(jac[0]).max())
    if reduced:
        with pytest.raises(ValueError, match="bijection"):
            t.log_abs_det_jacobian(z, x)
    else:
        ref = jnp.linalg.slogdet(jac)[1]
        fused = t.log_abs_det_jacobian(z, x, inter)
        assert fused.shape == (3,)
        np.testing.assert_allclose(fused, ref, atol=6e-3)
        np.testing.assert_allclose(t.log_abs_det_jacobian(z, x), ref, atol=6e-3)
        np.testing.assert_allclose(t.inv.log_abs_det_jacobian(x, z), -ref, atol=6e-3)

    # pytree round trip; argument and return value of a jitted function; no retrace
    leaves, treedef = jax.tree.flatten(t)
    assert leaves and all(isinstance(a, jax.Array | np.ndarray) for a in leaves)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert type(rebuilt) is cls
    np.testing.assert_allclose(rebuilt(z), x_plain, atol=5e-4)
    traces = []

    @jax.jit
    def through(tt, zz):
        traces.append(1)
        return tt(zz), tt

    y, returned = through(t, z)
    assert type(returned) is cls
    np.testing.assert_allclose(y, x_plain, atol=5e-4)
    through(jax.tree.unflatten(treedef, [a + 0.0 for a in leaves]), z)
    assert len(traces) == 1

    # vmap over points
    np.testing.assert_allclose(jax.vmap(t)(z), x_plain, atol=5e-4)


# ---------------------------------------------------------------------- distribution
def test_distribution_shapes_and_expand(flows):
    flow = flows["prp2"]
    d = nif.InflationaryFlowDistribution(flow)
    assert isinstance(d, nif.InflationaryFlowDistribution)
    assert d.event_shape == (2,) and d.batch_shape == ()
    assert d.support is dist.constraints.real_vector
    assert not d.flow.throw  # rebuilt robust
    key = jax.random.key(0)
    assert d.sample(key, (3,)).shape == (3, 2)
    e = d.expand([4])
    assert e.batch_shape == (4,)
    s = e.sample(key, (3,))
    assert s.shape == (3, 4, 2)
    assert e.log_prob(s).shape == (3, 4)
    np.testing.assert_allclose(e.log_prob(s), flow.log_prob(s), atol=1e-4)
    with pytest.raises(ValueError, match="value"):
        d.log_prob(jnp.zeros((3, 3)))


def test_distribution_log_prob_matches_oracle_and_integrates(flows):
    flow = flows["prp2"]
    d = nif.InflationaryFlowDistribution(flow)
    gm, sch = flow.score, flow.schedule
    # exact density of the mixture convolved with N(0, gamma(0)) (rotation invariant)
    x = gm.sample(jax.random.key(2), 20)
    exact = gm.log_prob_t(sch.to_eigen(x), 0.0, sch)
    np.testing.assert_allclose(d.log_prob(x), exact, atol=5e-3)
    # normalisation on a grid covering the mass
    lo, hi = gm.means.min(0) - 3.5, gm.means.max(0) + 3.5
    n = 90
    g0, g1 = jnp.linspace(lo[0], hi[0], n), jnp.linspace(lo[1], hi[1], n)
    grid = jnp.stack(jnp.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 2)
    cell = (g0[1] - g0[0]) * (g1[1] - g1[0])
    mass = float(jnp.sum(jnp.exp(jax.jit(d.log_prob)(grid))) * cell)
    assert abs(mass - 1.0) < 1e-2


def test_distribution_sample_agrees_with_log_prob(flows):
    """Chi-square goodness of fit: sample counts in cells vs cell masses from log_prob."""
    flow = flows["prp2"]
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
    p = np.asarray(jnp.exp(jax.jit(d.log_prob)(jnp.asarray(grid, jnp.float32))))
    probs = np.bincount(cells(grid), weights=p / p.sum(), minlength=25)
    keep = probs * n > 5
    expected = probs[keep] / probs[keep].sum() * counts[keep].sum()
    chi2 = np.sum((counts[keep] - expected) ** 2 / expected)
    pval = stats.chi2.sf(chi2, keep.sum() - 1)
    assert pval > 1e-3, (chi2, pval)


def test_distribution_pytree_and_jit(flows):
    d = nif.InflationaryFlowDistribution(flows["prp3"])
    x = d.sample(jax.random.key(0), (2,))
    leaves, treedef = jax.tree.flatten(d)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    np.testing.assert_allclose(rebuilt.log_prob(x), d.log_prob(x), atol=1e-5)
    out = jax.jit(lambda dd, xx: (dd.log_prob(xx), dd))(d, x)
    np.testing.assert_allclose(out[0], d.log_prob(x), atol=1e-4)
    assert isinstance(out[1], nif.InflationaryFlowDistribution)
    g = jax.grad(lambda xx: d.log_prob(xx).sum())(x)
    assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g)))


def test_transformed_distribution_uses_one_solve(flows):
    """TransformedDistribution with the transform: sample intermediates give the same log-density."""
    flow = flows["prp2"]
    base = dist.Normal(0.0, 1.0).expand([2]).to_event(1)
    td = dist.TransformedDistribution(base, nif.InflationaryFlowTransform(flow))
    x, inter = td.sample_with_intermediates(jax.random.key(0), (4,))
    np.testing.assert_allclose(td.log_prob(x, inter), flow.log_prob(x), atol=2e-3)
    np.testing.assert_allclose(td.log_prob(x), flow.log_prob(x), atol=2e-3)


def test_reducing_flow_density_errors(flows):
    flow = flows["prr3to2"]
    d = nif.InflationaryFlowDistribution(flow)
    assert d.is_reducing
    x = d.sample(jax.random.key(0), (3,))
    assert x.shape == (3, 3)
    with pytest.raises(ValueError, match="PR-reducing"):
        d.log_prob(x)
    reg = nif.InflationaryFlowDistribution(flow, regularized_density=True)
    np.testing.assert_allclose(reg.log_prob(x), flow.log_prob(x), atol=1e-3)


def test_validate_args_and_bad_flow(flows):
    d = nif.InflationaryFlowDistribution(flows["prp2"], validate_args=True)
    with pytest.warns(UserWarning, match="Out-of-support"):
        lp = d.log_prob(jnp.array([[jnp.nan, 0.0], [0.1, 0.2]]))
    assert np.isneginf(lp[0]) and np.isfinite(lp[1])
    with pytest.raises(ValueError, match="finite"):  # without validation: a clear error
        nif.InflationaryFlowDistribution(flows["prp2"], validate_args=False).log_prob(jnp.array([jnp.nan, 0.0]))
    with pytest.raises(ValueError, match="InflationaryFlow"):
        nif.InflationaryFlowDistribution("not a flow")
    with pytest.raises(ValueError, match="InflationaryFlow"):
        nif.InflationaryFlowTransform(None)
