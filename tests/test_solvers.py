"""Exponential integrators for the pfODE, checked against closed forms.

For a single Gaussian the denoiser in eigen coordinates is linear,
``D(w, t) = lam / (lam + gamma(t)) * w``, so ``dw/dt = (r/2) gamma/(lam + gamma) w`` and
``w(t) = u * sqrt((lam + gamma(t)) / (lam + gamma(0)))``. The encoder is then the
diagonal map ``z_i = c_i u_i`` with ``c_i = s_i(T) sqrt((lam_i + gamma_i(T)) /
(lam_i + gamma_i(0))) / A0`` and ``log|det dz/dx| = sum_i log c_i``.

Everything runs in float64, so rounding (about 1e-15) is far below every tolerance here:
the tolerances bound the discretisation error of the solves, which does not depend on
the CPU.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ring_mixture

import numpyro_inflow as nif
from numpyro_inflow import PFODEField


@pytest.fixture(autouse=True, scope="module")
def _x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def _gaussian(**schedule_kwargs):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(3, 3))
    cov = jnp.asarray(a @ a.T + 0.3 * np.eye(3))
    mean = jnp.asarray([0.5, -1.0, 2.0])
    gm = nif.GaussianMixtureScore(jnp.ones(1), mean[None], cov[None])
    sch = nif.InflationSchedule.from_moments(mean, cov, **schedule_kwargs)
    x = mean + 1.5 * jnp.asarray(rng.normal(size=(6, 3)))
    return gm, sch, x


def _encode_gain(sch):
    """Closed-form c_i with z_i = c_i u_i (see the module docstring)."""
    t = sch.t_end
    lam = sch.eigenvalues
    return sch.scale(t) * jnp.sqrt((lam + sch.gamma(t)) / (lam + sch.gamma(0.0))) / sch.A0


@eqx.filter_jit
def _solve_jit(solver, field, v0, t0, t1, n, ts):
    if ts is None:
        dt0, controller = (t1 - t0) / n, diffrax.ConstantStepSize()
    else:
        dt0, controller = None, diffrax.StepTo(ts)

    def one(v):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            solver,
            t0,
            t1,
            dt0,
            v,
            stepsize_controller=controller,
            max_steps=1024,
        )
        return jax.tree.map(lambda a: a[-1], sol.ys)

    return jax.vmap(one)(v0)


def _solve(solver, field, v0, t0, t1, n=None, ts=None):
    """Solve a batch from t0 to t1 in n equal steps or on the grid ts (both traced, so
    one compile per solver and grid length)."""
    n = None if n is None else jnp.asarray(n, v0.dtype)
    ts = None if ts is None else jnp.asarray(ts, v0.dtype)
    return _solve_jit(solver, field, v0, t0, t1, n, ts)


def _rmse(a, b):
    return float(jnp.sqrt(jnp.mean((a - b) ** 2)))


SOLVERS = [
    (nif.ExponentialEuler(), 1.0),
    (nif.ExponentialMultistep(), 2.0),
    (nif.ExponentialMultistep(order=3), 3.0),
    (nif.ExponentialMidpoint(), 2.0),
]


@pytest.mark.parametrize(("solver", "order"), SOLVERS, ids=lambda s: repr(s))
def test_convergence_order_on_gaussian(solver, order):
    gm, sch, x = _gaussian()
    field = PFODEField(sch, gm)
    u = sch.to_eigen(x)
    z_exact = _encode_gain(sch) * u
    errs = []
    for n in (16, 32, 64):
        v1 = _solve(solver, field, sch.scale(0.0) * u, 0.0, sch.t_end, n)
        errs.append(_rmse(v1 / sch.A0, z_exact))
    rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    # Halving h divides the error by about 2^order.
    # (3M converges faster than h^3 on this problem and uniform grid; "at least 3".)
    upper = order + (0.35 if order < 3 else 1.5)
    assert np.all((rates > order - 0.35) & (rates < upper)), (errs, rates)


@pytest.mark.parametrize(
    "kind", [{}, {"keep": 1}, {"keep": 1, "inflation_gap": 1.0}, {"proportional": True}]
)
def test_encode_decode_match_closed_form(kind):
    gm, sch, x = _gaussian(**kind)
    n = 96
    flow = nif.InflationaryFlow(sch, gm, solver=nif.ExponentialMultistep(3), dt0=sch.t_end / n)
    z_exact = _encode_gain(sch) * sch.to_eigen(x)
    z, info = flow.encode_with_info(x)
    np.testing.assert_allclose(z, z_exact, rtol=1e-4, atol=1e-5)
    assert np.all(info.nfe == n + 2)  # one evaluation per step, two to start
    x_back = flow.decode(z_exact)  # T -> 0: the solvers read the field's time off the term
    # (decoding amplifies errors in squeezed directions by 1 / c_i)
    np.testing.assert_allclose(x_back, x, rtol=1e-3, atol=1e-3)


def test_flow_walks_a_step_to_grid_backwards_when_decoding():
    gm, sch, x = _gaussian(keep=1)
    n = 96
    grid = diffrax.StepTo(sch.t_end * jnp.linspace(0.0, 1.0, n + 1) ** 0.8)
    flow = nif.InflationaryFlow(
        sch, gm, solver=nif.ExponentialMultistep(3), stepsize_controller=grid
    )
    z_exact = _encode_gain(sch) * sch.to_eigen(x)
    z, info = flow.encode_with_info(x)
    np.testing.assert_allclose(z, z_exact, rtol=1e-4, atol=1e-5)
    x_back, info_back = flow.decode_with_info(z_exact)
    np.testing.assert_allclose(x_back, x, rtol=1e-3, atol=1e-3)
    assert np.all(info.nfe == n + 2) and np.all(info_back.nfe == n + 2)


def test_zero_rate_direction():
    # keep=1 in D=2 with the "orig" exponents gives the squeezed direction rate 0: no
    # denoiser term there, and the closed form still holds.
    cov = jnp.array([[2.0, 0.3], [0.3, 0.5]])
    gm = nif.GaussianMixtureScore(jnp.ones(1), jnp.zeros((1, 2)), cov[None])
    sch = nif.InflationSchedule.from_moments(jnp.zeros(2), cov, keep=1)
    assert float(sch.rates[1]) == 0.0
    x = jnp.array([[0.5, -1.0], [1.0, 2.0]])
    z = (
        _solve(
            nif.ExponentialMultistep(3),
            PFODEField(sch, gm),
            sch.scale(0.0) * sch.to_eigen(x),
            0.0,
            sch.t_end,
            n=64,
        )
        / sch.A0
    )
    np.testing.assert_allclose(z, _encode_gain(sch) * sch.to_eigen(x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("solver", "order"), SOLVERS[1:3], ids=lambda s: repr(s))
def test_step_to_grid_nonuniform(solver, order):
    # Variable steps: the multistep divided differences must keep the order.
    gm, sch, x = _gaussian()
    field = PFODEField(sch, gm)
    u = sch.to_eigen(x)
    z_exact = _encode_gain(sch) * u
    t_end = sch.t_end
    errs = []
    for n in (32, 64):
        ts = t_end * np.linspace(0, 1, n + 1) ** 0.8  # steps shrink towards t_end
        z = _solve(solver, field, sch.scale(0.0) * u, 0.0, t_end, ts=ts) / sch.A0
        errs.append(_rmse(z, z_exact))
    assert np.log2(errs[0] / errs[1]) > order - 0.35, errs
    v0 = _solve(solver, field, sch.A0 * z_exact, t_end, 0.0, ts=ts[::-1])  # decode
    np.testing.assert_allclose(v0 / sch.scale(0.0), u, rtol=1e-2, atol=1e-2)


def test_log_det_exact_and_hutchinson(key):
    gm, sch, x = _gaussian(keep=1)
    expected = jnp.sum(jnp.log(_encode_gain(sch)))
    flow = nif.InflationaryFlow(sch, gm, solver=nif.ExponentialMultistep(), dt0=sch.t_end / 100)
    _, ld = flow.encode_with_log_det(x)
    np.testing.assert_allclose(ld, expected, rtol=1e-4, atol=1e-4)
    # The Jacobian of D is diagonal in eigen coordinates, so Rademacher probes are exact.
    flow = flow.replace(solver=nif.ExponentialMidpoint(), trace="hutchinson")
    _, ld = flow.encode_with_log_det(x, key)
    np.testing.assert_allclose(ld, expected, rtol=1e-4, atol=1e-4)


def test_adaptive_midpoint_with_pid():
    gm, sch, x = _gaussian()
    flow = nif.InflationaryFlow(sch, gm, solver=nif.ExponentialMidpoint(), rtol=1e-7, atol=1e-7)
    assert isinstance(flow.stepsize_controller, diffrax.PIDController)
    z, info = flow.encode_with_info(x)
    np.testing.assert_allclose(z, _encode_gain(sch) * sch.to_eigen(x), rtol=1e-5, atol=1e-5)
    assert np.all(info.nfe >= 2 * info.num_steps)  # two evaluations per step


def test_grad_and_jit():
    gm, sch, x = _gaussian()
    flow = nif.InflationaryFlow(sch, gm, solver=nif.ExponentialMultistep(3), dt0=sch.t_end / 64)
    # z = c * W^T (x - mu), so d sum(z) / dx = W c for every point.
    grad = jax.jit(jax.grad(lambda p: jnp.sum(flow.encode(p))))(x)
    expected = sch.eigenvectors @ _encode_gain(sch)
    np.testing.assert_allclose(grad, jnp.broadcast_to(expected, x.shape), rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(grad))


def test_beats_euler_at_equal_nfe_on_mixture():
    gm = ring_mixture(dtype=jnp.float64)
    sch = nif.InflationSchedule.from_moments(*gm.moments(), end_ratio=1e3)
    x = gm.sample(jax.random.key(1), 8)
    field = PFODEField(sch, gm)
    v0 = sch.scale(0.0) * sch.to_eigen(x)
    ref = nif.InflationaryFlow(sch, gm, rtol=1e-9, atol=1e-9, max_steps=20000)
    z_ref = ref.encode(x)
    nfe = 64

    def err(solver):
        n = nfe // solver.evals_per_step if hasattr(solver, "evals_per_step") else nfe
        return _rmse(_solve(solver, field, v0, 0.0, sch.t_end, n) / sch.A0, z_ref)

    e_euler = err(diffrax.Euler())
    assert err(nif.ExponentialMultistep()) < e_euler / 5
    assert err(nif.ExponentialMultistep(3)) < e_euler / 20


def test_rejects_other_terms_and_options():
    assert all(
        s.term_structure is diffrax.ODETerm
        for s in (nif.ExponentialEuler(), nif.ExponentialMultistep(), nif.ExponentialMidpoint())
    )
    with pytest.raises(ValueError, match="order: expected 2 or 3"):
        nif.ExponentialMultistep(order=4)
    term = diffrax.ODETerm(lambda t, y, args: -y)
    with pytest.raises(ValueError, match=r"terms: expected diffrax\.ODETerm"):
        diffrax.diffeqsolve(term, nif.ExponentialEuler(), 0.0, 1.0, 0.1, jnp.ones(2))
