"""PFODEField and SolveConfig: one evaluation against the closed form, validation, no retrace.

For a single Gaussian the denoiser in eigen coordinates is ``D(w, t) = lam / (lam +
gamma(t)) * w``, with the diagonal Jacobian ``lam / (lam + gamma)``: the field's value
and divergence are known exactly. Compared in float64, where exactness is the point.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import gaussian_oracle, ring_mixture

import numpyro_inflow as nif
from numpyro_inflow.field import SolveConfig


@pytest.fixture(autouse=True, scope="module")
def _x64_module():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def gaussian():
    gm = gaussian_oracle(2, 3, dtype=jnp.float64)
    sch = nif.InflationSchedule.from_moments(*gm.moments(), keep=2)
    v = jnp.asarray([0.3, -1.2, 0.05])
    return gm, sch, v


def _close(actual, expected):
    # float64 linear algebra in the mixture denoiser: a few ulp of the largest component
    # (terms of dv/dt nearly cancel at t = 0, so relative per-entry tolerances don't fit).
    scale = max(float(np.abs(expected).max()), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("t_frac", [0.0, 0.4, 1.0])
def test_evaluate_and_vector_field_match_closed_form(gaussian, t_frac, key):
    gm, sch, v = gaussian
    t = t_frac * sch.t_end
    lam, gam = np.asarray(sch.eigenvalues), np.asarray(sch.gamma(t))
    s, half_r = np.asarray(sch.scale(t)), 0.5 * np.asarray(sch.rates)
    w = np.asarray(v) / s
    d_exact = lam / (lam + gam) * w
    div_exact = -np.sum(half_r * lam / (lam + gam))
    dv_exact = (np.asarray(sch.dlog_scale(t)) + half_r) * np.asarray(v) - half_r * s * d_exact

    d, div = nif.PFODEField(sch, gm).evaluate(t, v)
    assert div is None
    _close(d, d_exact)
    _close(nif.PFODEField(sch, gm)(t, v, None), dv_exact)
    # Rademacher probes are exact for a diagonal Jacobian, so both estimators agree.
    probes = jax.random.rademacher(key, (4, 3), jnp.float64)
    for field in (nif.PFODEField(sch, gm, "exact"), nif.PFODEField(sch, gm, probes)):
        d, div = field.evaluate(t, v)
        _close(d, d_exact)
        _close(div, div_exact)
        dv, ddiv = field(t, (v, jnp.zeros(())), None)
        _close(dv, dv_exact)
        _close(ddiv, div_exact)


def test_solve_config_defaults():
    cfg = SolveConfig()
    assert isinstance(cfg.solver, diffrax.Tsit5)
    ctrl = cfg.stepsize_controller
    assert isinstance(ctrl, diffrax.PIDController) and (ctrl.rtol, ctrl.atol) == (1e-5, 1e-5)
    assert isinstance(cfg.adjoint, diffrax.RecursiveCheckpointAdjoint)
    cfg = SolveConfig(solver=nif.ExponentialMultistep())  # not adaptive: fixed steps
    assert isinstance(cfg.stepsize_controller, diffrax.ConstantStepSize) and cfg.dt0 == 0.01


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rtol": 0.0}, "rtol"),
        ({"atol": -1.0}, "atol"),
        ({"solver": "tsit5"}, "solver"),
        ({"stepsize_controller": "pid"}, "stepsize_controller"),
        ({"adjoint": diffrax.Tsit5()}, "adjoint"),
        ({"dt0": 0.0}, "dt0"),
        ({"max_steps": 0}, "max_steps"),
        ({"max_steps": 10.5}, "max_steps"),
        ({"max_steps": True}, "max_steps"),
        ({"throw": "yes"}, "throw"),
    ],
)
def test_solve_config_rejects_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        SolveConfig(**kwargs)


def test_jit_does_not_retrace_for_new_weights_or_grid():
    # Floats and the norm of the controller are static, the StepTo grid and the
    # score's arrays are leaves: new values reuse the compiled function.
    gm = ring_mixture(dtype=jnp.float64)
    sch = nif.InflationSchedule.from_moments(*gm.moments())
    t_end = sch.t_end
    x = jnp.array([[2.0, 0.1]])

    @jax.jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def encode(flow, a):
        return flow.encode(a)

    grid = diffrax.StepTo(t_end * jnp.linspace(0.0, 1.0, 33))
    other = nif.GaussianMixtureScore(gm.weights, 1.1 * gm.means, gm.covariances)
    flows = [
        nif.InflationaryFlow(sch, gm, solver=nif.ExponentialMultistep(), stepsize_controller=grid),
        nif.InflationaryFlow(
            sch,
            other,
            solver=nif.ExponentialMultistep(),
            stepsize_controller=diffrax.StepTo(t_end * jnp.linspace(0.0, 1.0, 33) ** 0.9),
        ),
    ]
    zs = [encode(f, x) for f in flows]
    assert not np.allclose(zs[0], zs[1])
    pid = nif.InflationaryFlow(sch, gm)

    @jax.jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def encode_pid(flow, a):
        return flow.encode(a)

    encode_pid(pid, x)
    encode_pid(eqx.tree_at(lambda f: f.score, pid, other), x)
