"""NumPyro's generic contract on our transforms and distributions, in float64.

Modelled on NumPyro's own suite (``test/test_transforms.py``, ``test/test_flows.py``,
``test/test_distributions.py``): pytrees through ``jit``/``vmap``, shapes, constraints,
``expand``, ``infer_shapes``, validation, Jacobians against ``slogdet(jacfwd)``, and the
inference machinery (handlers, ``TransformReparam``, ``initialize_model``,
``Predictive``, forward-mode differentiation). Every object is one line of a registry.

Everything runs under ``jax.enable_x64`` (a context, so the float32 modules are
unaffected) with oracle flows solved at rtol = atol = ``TOL``, so tolerances are about
exactness, not about a CPU's rounding:

* ``SOLVE``: two *different* numerical solves (a round trip, the augmented ODE's log-det
  against ``slogdet`` of the discrete Jacobian, a solve compiled in another program).
  Each is within the solver's global error of the exact value, a small multiple of
  ``TOL`` for these short smooth solves (at most 1e-8 here); 1e-6 keeps a margin of
  100 on any CPU and still fails for any real error (a missing term is O(1e-2) or more).
* ``SAME``: the same computation twice (bitwise equal in practice); 1e-12 allows for
  float64 rounding only.
"""

import functools
import typing

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import random_mixture
from numpyro.distributions import constraints
from numpyro.distributions.transforms import ComposeTransform
from numpyro.infer import MCMC, NUTS, Predictive
from numpyro.infer.reparam import TransformReparam
from numpyro.infer.util import initialize_model, log_density

import numpyro_inflow as nif

TOL, SOLVE, SAME = 1e-10, 1e-6, 1e-12


@pytest.fixture(autouse=True, scope="module")
def _x64_module():
    with jax.enable_x64(True):
        yield


def _oracle(gm, keep=None):
    schedule = nif.InflationSchedule.from_moments(*gm.moments(), keep=keep)
    return nif.InflationaryFlow(schedule, gm, rtol=TOL, atol=TOL, throw=False)


def _thin_mixture(seed, dim):
    """A mixture whose last direction is thin, so a PR-reducing flow makes sense."""
    gm = random_mixture(seed, 2, dim, jnp.float64)
    scale = jnp.ones(dim).at[-1].set(0.15)
    covs = gm.covariances * scale[:, None] * scale[None, :] + 0.01 * jnp.eye(dim)
    return nif.GaussianMixtureScore(gm.weights, gm.means * scale, covs)


def _trained():
    """A tiny learned denoiser (seconds to train): a score that is no closed form."""
    x = np.asarray(nif.datasets.load("circles", n=500, seed=0), np.float64)
    flow = nif.fit(x, steps=20, batch_size=64, progress=False, network=dict(width=16, depth=1),
                   validation_fraction=0.0)  # fmt: skip
    return flow.replace(rtol=TOL, atol=TOL, throw=False)


# One line per flow, per transform and per distribution: a new object is one more line.
# The flows are built with throw=False, as the distributions rebuild them, so that a
# transform and a distribution of one flow share their compiled solves (points come in
# batches of 3 throughout for the same reason).
FLOWS = {
    "prp2": lambda: _oracle(random_mixture(1, 3, 2, jnp.float64)),
    "prr3to2": lambda: _oracle(_thin_mixture(3, 3), keep=2),
    "trained2": _trained,
}
TRANSFORMS = {
    "full-prp2": ("prp2", nif.InflationaryFlowTransform),
    "full-prr3to2": ("prr3to2", nif.InflationaryFlowTransform),
    "reduced-prr3to2": ("prr3to2", nif.ReducedLatentTransform),
    "full-trained2": ("trained2", nif.InflationaryFlowTransform),
}
DISTRIBUTIONS = {
    "prp2": ("prp2", {}),
    "prr3to2-regularized": ("prr3to2", {"regularized_density": True}),
}


@functools.cache
def _flow(name):
    with jax.enable_x64(True):
        return FLOWS[name]()


def _transform(name):
    flow_name, cls = TRANSFORMS[name]
    return cls(_flow(flow_name))


def _distribution(name, **extra):
    flow_name, kwargs = DISTRIBUTIONS[name]
    return nif.InflationaryFlowDistribution(_flow(flow_name), **kwargs, **extra)


def _dims(t):
    reduced = isinstance(t, nif.ReducedLatentTransform)
    return t.flow.dim, t.flow.latent_dim if reduced else t.flow.dim, reduced


def _latents(t, n, seed=0):
    """Typical latent points: 0.8 base standard deviations (tiny along squeezed axes)."""
    _, k, reduced = _dims(t)
    if reduced:
        return 0.8 * jax.random.normal(jax.random.key(seed), (n, k))
    return 0.8 * t.flow.sample_latent(jax.random.key(seed), (n,))


def _close(actual, desired, tol):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), rtol=tol, atol=tol)


# ---------------------------------------------------------------------- transforms
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_pytree_jit_vmap_and_eq(name):
    t = _transform(name)
    # in and out of jit, its inverse too; vmap with the transform unbatched
    assert jax.jit(lambda tt, x: x**2)(t, 1.0) == 1.0
    out = jax.jit(lambda tt: tt)(t)
    assert type(out) is type(t) and out.eq(t)
    assert jax.jit(lambda tt: tt)(t.inv).eq(t.inv)
    assert jax.vmap(lambda tt, x: tt, in_axes=(None, 0), out_axes=None)(t, jnp.ones(3)).eq(t)
    # equality: same flow (also under jit), not another class, flow or trace key
    twin = type(t)(t.flow)
    assert t.eq(twin) and bool(jax.jit(lambda a, b: a.eq(b))(t, twin))
    assert t != 1.0
    other = nif.ReducedLatentTransform if type(t) is nif.InflationaryFlowTransform else None
    if other is not None:
        assert not t.eq(other(t.flow))
        assert not t.eq(type(t)(t.flow, trace_key=jax.random.key(0)))
    assert not bool(
        t.eq(type(t)(eqx.tree_at(lambda f: f.schedule.mean, t.flow, t.flow.schedule.mean + 1)))
    )
    # flatten / unflatten: the flow's arrays are leaves; new leaves never retrace
    leaves, treedef = jax.tree.flatten(t)
    assert leaves and all(isinstance(a, jax.Array | np.ndarray) for a in leaves)
    assert jax.tree.unflatten(treedef, leaves).eq(t)

    @jax.jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def through(tt, zz):
        return jax.vmap(tt)(zz), tt  # jit and vmap of the call

    z = _latents(t, 3)
    y, returned = through(t, z)
    assert type(returned) is type(t) and returned.eq(t)
    y_new, _ = through(jax.tree.unflatten(treedef, [a + 0.0 for a in leaves]), z)
    _close(y_new, y, SAME)
    _close(y, t(z), SOLVE)  # one solve compiled inside the caller's jit, one on its own


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_shapes_and_constraints(name):
    t = _transform(name)
    d, k, _ = _dims(t)
    for batch in [(), (7,), (2, 3)]:
        assert t.forward_shape((*batch, k)) == (*batch, d)
        assert t.inverse_shape((*batch, d)) == (*batch, k)
        assert t.inv.forward_shape((*batch, d)) == (*batch, k)
    with pytest.raises(ValueError, match="shape"):
        t.forward_shape((7, k + 1))
    with pytest.raises(ValueError, match="shape"):
        t.inverse_shape(())
    for c in (t.domain, t.codomain, t.inv.domain, t.inv.codomain):
        assert c is constraints.real_vector
    composed = ComposeTransform([t])
    assert composed.domain.event_dim == composed.codomain.event_dim == 1
    base = dist.Normal(jnp.zeros(()), 1.0).expand([k]).to_event(1)
    td = dist.TransformedDistribution(base, t)
    assert (td.batch_shape, td.event_shape) == ((), (d,))
    assert td.support is constraints.real_vector


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_bijection_jacobian_and_log_det(name):
    t = _transform(name)
    d, k, reduced = _dims(t)
    z = _latents(t, 3)
    x = t(z)
    assert x.shape == t.forward_shape(z.shape)
    z_back = t.inv(x)
    assert z_back.shape == t.inverse_shape(x.shape)
    _close(z_back, z, SOLVE)  # the reduced map: on its image
    if not reduced:  # arbitrary points, not only decoded ones (on the surface for PRR)
        xd = t(_latents(t, 3, seed=1))
        xd = xd if t.flow.schedule.is_reducing else xd + 0.05
        _close(t(t.inv(xd)), xd, SOLVE)

    # Jacobian by forward mode (ForwardMode adjoint) and by reverse mode (the default
    # adjoint): both differentiate the same discrete solve
    t_fwd = type(t)(t.flow.replace(adjoint=diffrax.ForwardMode()))
    jac = jax.vmap(jax.jacfwd(t_fwd))(z)
    assert jac.shape == (3, d, k)
    _close(jax.vmap(jax.jacrev(t))(z), jac, SOLVE)
    if reduced:
        with pytest.raises(ValueError, match="bijection"):
            t.log_abs_det_jacobian(z, x)
        return
    ref = jnp.linalg.slogdet(jac)[1]
    x_fused, log_det = t.call_with_intermediates(z)
    _close(x_fused, x, SOLVE)
    assert t.log_abs_det_jacobian(z, x_fused, log_det) is log_det and log_det.shape == (3,)
    _close(log_det, ref, SOLVE)
    _close(t.log_abs_det_jacobian(z, x), ref, SOLVE)
    _close(t.inv.log_abs_det_jacobian(x, z), -ref, SOLVE)


@pytest.mark.parametrize("name", [n for n in sorted(TRANSFORMS) if n.startswith("full")])
def test_sample_and_sample_with_intermediates_agree(name):
    """The plain and the augmented decode are two solves whose adaptive steps differ (the
    log-det accumulator enters the error norm), so they agree to the solver's accuracy:
    at rtol = atol = 1e-10 within SOLVE = 1e-6, on any CPU (float64 rounding is ~1e-16)."""
    t = _transform(name)
    z = _latents(t, 3)
    _close(t.call_with_intermediates(z)[0], t(z), SOLVE)
    d = nif.InflationaryFlowDistribution(t.flow, regularized_density=True)
    key = jax.random.key(5)
    _close(d.sample_with_intermediates(key, (3,))[0], d.sample(key, (3,)), SOLVE)


def test_annotations():
    hints = typing.get_type_hints
    for fn in (nif.InflationaryFlowDistribution.sample, nif.InflationaryFlowDistribution.log_prob,
               nif.InflationaryFlowTransform.__call__, nif.ReducedLatentTransform.__call__):  # fmt: skip
        assert hints(fn)["return"] is jax.Array, fn


# ---------------------------------------------------------------------- distributions
@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_distribution_shapes_expand_and_support(name):
    d = _distribution(name)
    dim = d.flow.dim
    assert (d.batch_shape, d.event_shape) == ((), (dim,))
    assert type(d).infer_shapes(d.flow) == (d.batch_shape, d.event_shape)
    with pytest.raises(NotImplementedError):  # what NumPyro's generic call passes: shape ()
        type(d).infer_shapes(())
    assert d.support is constraints.real_vector
    assert type(d).support.event_dim == 1  # class level, as NumPyro's class checks read it
    key = jax.random.key(1)
    assert d.has_rsample and d.rsample(key, (3,)).shape == (3, dim)
    s = d.sample(key, (3,))
    assert isinstance(s, jax.Array) and s.shape == (3, dim)
    lp = d.log_prob(s)
    assert lp.shape == (3,) and bool(jnp.all(jnp.isfinite(lp)))
    # expand: a (2, 3) batch of points; Independent
    e = d.expand((3,))
    s = e.sample(key, (2,))
    assert e.batch_shape == (3,) and s.shape == (2, 3, dim) and e.log_prob(s).shape == (2, 3)
    assert e.expand((2, 3)).batch_shape == (2, 3)
    with pytest.raises(ValueError, match="Cannot broadcast distribution of shape"):
        e.expand((2,))
    ind = e.to_event(1)
    assert ind.event_shape == (3, dim) and ind.log_prob(s).shape == (2,)


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_distribution_pytree_jit_and_intermediates(name):
    flow_name, kwargs = DISTRIBUTIONS[name]

    def make(_):
        return nif.InflationaryFlowDistribution(_flow(flow_name), **kwargs)

    jax.lax.map(make, jnp.ones(3))  # flatten/unflatten inside a scan
    expected, actual = make(0), jax.jit(make)(0)
    assert type(actual) is type(expected) and actual.flow.throw is False
    assert actual.robust and actual._regularized == expected._regularized
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        _close(a, b, SAME)
    key = jax.random.key(2)
    s = expected.sample(key, (3,))
    _close(actual.sample(key, (3,)), s, SAME)
    _close(actual.log_prob(s), expected.log_prob(s), SAME)
    # the log-det of the sampling solve, reused, equals the one of an encode solve
    s, inter = expected.sample_with_intermediates(key, (3,))
    _close(expected.log_prob(s, inter), expected.log_prob(s), SOLVE)


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_validate_args_warns_for_out_of_support_values(name):
    dim = _distribution(name).flow.dim
    oob = np.zeros((3, dim))
    oob[0, 0], oob[1, -1], oob[2] = np.nan, np.inf, -np.inf
    d = _distribution(name, validate_args=True)
    with pytest.warns(UserWarning, match="Out-of-support"):
        lp = d.log_prob(oob)
    assert np.all(np.isneginf(lp))
    with pytest.warns(UserWarning, match="Out-of-support"):  # a concrete value under jit
        lp = jax.jit(lambda: _distribution(name, validate_args=True).log_prob(oob))()
    assert np.all(np.isneginf(lp))


# ---------------------------------------------------------------------- inference machinery
def _model(prior):
    def model(y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x.sum(), 0.5), obs=y)

    return model


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_transform_reparam_and_latent_reparam(name):
    d = _distribution(name)
    flow = d.flow

    def run(reparam):
        model = numpyro.handlers.reparam(_model(d), config={"x": reparam})
        return numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace()

    tr = run(TransformReparam())  # NumPyro's own: the base N(0, diag(base variance))
    assert tr["x_base"]["value"].shape == (flow.dim,) and tr["x"]["type"] == "deterministic"
    _close(tr["x"]["value"], flow.decode(tr["x_base"]["value"]), SAME)
    for reduced in (False, True):
        tr = run(nif.LatentReparam(reduced=reduced))
        xi = tr["x_latent"]["value"]
        assert xi.shape == (flow.latent_dim if reduced else flow.dim,)
        assert tr["x"]["type"] == "deterministic"
        _close(tr["x"]["value"], flow.decode_standardized(xi, reduced=reduced), SAME)
        assert tr["x_solve_failed"]["fn"].log_factor == 0.0


def test_handlers_and_log_density():
    d = _distribution("prp2")
    model, v, y = _model(d), jnp.array([0.3, -0.2]), 0.1
    tr = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(y)
    assert tr["x"]["value"].shape == (2,) and tr["y"]["is_observed"]
    tr = numpyro.handlers.trace(
        numpyro.handlers.substitute(numpyro.handlers.seed(model, 0), {"x": v})
    ).get_trace(y)
    assert tr["x"]["value"] is v and not tr["x"]["is_observed"]
    tr = numpyro.handlers.trace(
        numpyro.handlers.condition(numpyro.handlers.seed(model, 0), {"x": v})
    ).get_trace(y)
    assert tr["x"]["is_observed"] and tr["x"]["value"] is v
    log_joint, _ = log_density(model, (y,), {}, {"x": v})
    _close(log_joint, d.log_prob(v) + dist.Normal(v.sum(), 0.5).log_prob(y), SAME)


def test_initialize_model_and_predictive():
    d = _distribution("prp2")
    model, y = _model(d), 0.1
    init = initialize_model(jax.random.key(0), model, model_args=(y,))
    x0 = init.param_info.z["x"]  # support real_vector: the identity transform
    assert x0.shape == (2,)
    _close(init.param_info.potential_energy, -log_density(model, (y,), {}, {"x": x0})[0], SAME)
    latent = numpyro.handlers.reparam(model, config={"x": nif.LatentReparam()})
    init = initialize_model(jax.random.key(0), latent, model_args=(y,))
    assert set(init.param_info.z) == {"x_latent"} and init.param_info.z["x_latent"].shape == (2,)
    prior = Predictive(model, num_samples=4)(jax.random.key(1))
    assert prior["x"].shape == (4, 2) and prior["y"].shape == (4,)
    post = Predictive(model, {"x": prior["x"]}, return_sites=["y"])(jax.random.key(2))
    assert post["y"].shape == (4,) and bool(jnp.all(jnp.isfinite(post["y"])))


def test_forward_mode_differentiation():
    flow = _flow("prp2")
    fwd = flow.replace(adjoint=diffrax.ForwardMode())
    y, key = 0.1, jax.random.key(0)
    plain = _model(nif.InflationaryFlowDistribution(fwd))
    latent = numpyro.handlers.reparam(plain, config={"x": nif.LatentReparam()})
    for model in (plain, latent):
        init = initialize_model(key, model, model_args=(y,), forward_mode_differentiation=True)
        grads = jax.tree.leaves(init.param_info.z_grad)
        assert grads and all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    mcmc = MCMC(NUTS(latent, forward_mode_differentiation=True), num_warmup=10, num_samples=10,
                progress_bar=False)  # fmt: skip
    mcmc.run(key, y)
    assert bool(jnp.all(jnp.isfinite(mcmc.get_samples()["x"])))
    with pytest.raises(TypeError, match="ForwardMode"):  # the default adjoint: reverse mode only
        initialize_model(key, _model(nif.InflationaryFlowDistribution(flow)), model_args=(y,),
                         forward_mode_differentiation=True)  # fmt: skip
