"""InflationaryFlow mechanics in float32: NFE accounting, failures, transforms, settings,
validation.

Accuracy against closed forms lives in ``test_flow_oracle.py`` (float64). Comparisons
here are between runs of the *same* solve (same steps, same arithmetic) through
different plumbing: they agree bitwise on the CPUs we tried, and `_ulps` allows a few
ulp of the largest coordinate for rounding that depends on how XLA fuses each program.
Solves that take different steps differ by about 1e-4 at the default tolerances, far
above that allowance.
"""

import json

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_mixture, ring_mixture

import numpyro_inflow as nif
from numpyro_inflow.solvers import ExponentialMidpoint, ExponentialMultistep


def _ulps(a, n=16):
    """``n`` float32 ulp of the largest coordinate of ``a`` (see the module docstring)."""
    return n * np.finfo(np.float32).eps * float(np.abs(np.asarray(a)).max())


@pytest.fixture(scope="module")
def ring():
    gm = ring_mixture()
    sch = nif.InflationSchedule.from_moments(*gm.moments())
    return gm, sch, nif.InflationaryFlow(sch, gm)


@pytest.fixture(scope="module")
def ring_prr():
    gm = ring_mixture(dim=3)
    sch = nif.InflationSchedule.from_moments(*gm.moments(), keep=2)
    return gm, sch, nif.InflationaryFlow(sch, gm)


# ---------------------------------------------------------------- 7. NFE accounting
_CALLS = []


class CountingScore(nif.AbstractScore):
    """Wraps a score and records every denoiser evaluation that actually runs."""

    inner: nif.AbstractScore

    @property
    def dim(self):
        return self.inner.dim

    def denoise(self, w, t, schedule):
        jax.debug.callback(lambda: _CALLS.append(1))
        return self.inner.denoise(w, t, schedule)


@pytest.mark.parametrize(
    "options",
    [
        {},  # Tsit5 + PIDController, automatic first step
        {"dt0": 0.05},  # Tsit5 + PIDController, given first step
        {"solver": diffrax.Euler(), "dt0": 0.05},
        {"solver": diffrax.Heun()},  # adaptive Heun
        {"solver": diffrax.Dopri8(), "rtol": 1e-4, "atol": 1e-4},
        {"solver": ExponentialMultistep(), "dt0": 0.05},
        {"solver": ExponentialMidpoint()},
    ],
    ids=["tsit5-pid", "tsit5-pid-dt0", "euler", "heun-pid", "dopri8", "exp-multistep", "exp-mid"],
)
def test_reported_nfe_counts_real_evaluations(ring, options):
    gm, sch, _ = ring
    flow = nif.InflationaryFlow(sch, CountingScore(gm), **options)
    for x in ([[2.0, 0.1]], [[0.3, -1.2]]):
        _CALLS.clear()
        z, info = flow.encode_with_info(jnp.array(x))
        jax.block_until_ready(z)
        jax.effects_barrier()
        assert bool(info.success[0])
        assert int(info.nfe[0]) == len(_CALLS), (int(info.num_steps[0]), len(_CALLS))
    if not options:  # decoding runs the same solve backwards
        _CALLS.clear()
        x, info = flow.decode_with_info(jnp.array([[0.5, -0.5]]))
        jax.block_until_ready(x)
        jax.effects_barrier()
        assert int(info.nfe[0]) == len(_CALLS)


# ---------------------------------------------------------------- 8. solver failure
def test_step_limit_raises_with_advice(ring):
    _, _, flow = ring
    small = flow.replace(max_steps=3)
    with pytest.raises(eqx.EquinoxRuntimeError, match="max_steps") as err:
        small.encode(jnp.array([[2.0, 0.0]]))
    assert "throw=False" in str(err.value)  # says what to do


def test_step_limit_without_throw_gives_nan_and_flags(ring):
    _, _, flow = ring
    # points with different step counts, from the converged solve
    x = jnp.array([[0.0, 0.0], [2.0, 0.0], [1.4, 1.4], [4.0, 4.0], [0.1, 2.0]])
    z_ok, info_ok = flow.encode_with_info(x)
    steps = np.asarray(info_ok.num_steps)
    assert steps.min() < steps.max()
    limit = int(steps.min())
    z, info = flow.replace(max_steps=limit, throw=False).encode_with_info(x)
    expected_ok = steps <= limit
    np.testing.assert_array_equal(np.asarray(info.success), expected_ok)
    z = np.asarray(z)
    assert np.all(np.isnan(z[~expected_ok]))
    np.testing.assert_allclose(z[expected_ok], np.asarray(z_ok)[expected_ok], atol=_ulps(z_ok))
    # the log-density path flags failures the same way
    _, ld = flow.replace(max_steps=1, throw=False).encode_with_log_det(x[:2])
    assert np.all(np.isnan(np.asarray(ld)))


# ---------------------------------------------------------------- 9. jit / vmap / grad
def test_encode_under_jit_with_flow_as_argument(ring):
    _, _, flow = ring
    x = jnp.array([[2.0, 0.1], [-0.5, 1.0], [0.0, -2.0]])
    expected = flow.encode(x)

    @jax.jit
    def f(fl, a):
        return fl.encode(a), fl

    z, returned = f(flow, x)
    tol = _ulps(expected)
    np.testing.assert_allclose(z, expected, rtol=0, atol=tol)
    np.testing.assert_allclose(returned.encode(x), expected, rtol=0, atol=tol)
    # vmapping the single-point API and leading batch dimensions agree with the batch
    np.testing.assert_allclose(jax.vmap(flow.encode)(x), expected, rtol=0, atol=tol)
    batched = flow.encode(x[:, None, :])
    assert batched.shape == (3, 1, 2)
    np.testing.assert_allclose(batched[:, 0], expected, rtol=0, atol=tol)


def test_grad_of_encode_is_finite(ring):
    _, _, flow = ring
    x = jnp.array([[2.0, 0.1], [-0.5, 1.0]])
    g = jax.grad(lambda a: jnp.sum(flow.encode(a)))(x)
    assert g.shape == x.shape and np.all(np.isfinite(np.asarray(g)))


# ---------------------------------------------------------------- forward mode
def test_forward_mode_with_default_adjoint_says_what_to_do(ring):
    _, _, flow = ring
    x = jnp.array([[2.0, 0.1]])
    # (test_flow_oracle.py checks that ForwardMode's jacfwd equals jacrev)
    for fn in (
        lambda: jax.jacfwd(flow.encode)(x),
        lambda: jax.jvp(lambda a: flow.log_prob(a), (x,), (x,)),
    ):
        with pytest.raises(TypeError, match=r"flow\.replace\(adjoint=diffrax\.ForwardMode\(\)\)"):
            fn()


# ---------------------------------------------------------------- settings
class _MySolver(diffrax.Euler):
    pass


def _settings_cases(sch):
    t_end = sch.t_end
    return {
        "default": {},
        "euler": {"solver": diffrax.Euler(), "dt0": 0.05, "throw": False},
        "3m-stepto": {
            "solver": ExponentialMultistep(3),
            "stepsize_controller": diffrax.StepTo(t_end * jnp.linspace(0.0, 1.0, 41) ** 0.9),
        },
        "mid-pid-fwd": {
            "solver": ExponentialMidpoint(),
            "stepsize_controller": diffrax.PIDController(
                rtol=1e-4, atol=1e-6, pcoeff=0.2, icoeff=0.4, dtmax=0.5, safety=0.8
            ),
            "adjoint": diffrax.ForwardMode(),
        },
        "dopri5-hutch": {
            "solver": diffrax.Dopri5(),
            "adjoint": diffrax.RecursiveCheckpointAdjoint(checkpoints=64),
            "max_steps": 500,
            "trace": "hutchinson",
            "num_probes": 3,
        },
        "direct": {"rtol": 1e-4, "atol": 1e-6, "adjoint": diffrax.DirectAdjoint()},
    }


@pytest.mark.parametrize("case", ["default", "3m-stepto", "mid-pid-fwd", "dopri5-hutch"])
def test_settings_round_trip_reproduces_the_flow(ring, case):
    gm, sch, _ = ring
    flow = nif.InflationaryFlow(sch, gm, **_settings_cases(sch)[case])
    settings = flow.settings()
    text = json.dumps(settings)  # plain JSON data
    assert json.loads(text) == settings
    back = nif.InflationaryFlow.from_settings(sch, gm, json.loads(text))
    assert back.settings() == settings
    assert bool(eqx.tree_equal(back, flow))
    x = jnp.array([[2.0, 0.1]])
    z = flow.encode(x)
    np.testing.assert_array_equal(back.encode(x), z)  # bit for bit
    np.testing.assert_array_equal(back.decode(z), flow.decode(z))


def test_settings_vocabulary(ring):
    gm, sch, _ = ring
    for case in _settings_cases(sch).values():  # round trips (solves: the test above)
        flow = nif.InflationaryFlow(sch, gm, **case)
        back = nif.InflationaryFlow.from_settings(sch, gm, json.loads(json.dumps(flow.settings())))
        assert bool(eqx.tree_equal(back, flow))
    s = nif.InflationaryFlow(sch, gm, solver=ExponentialMultistep(3), dt0=0.1).settings()
    assert s["solver"] == {"name": "ExponentialMultistep", "order": 3}
    assert s["stepsize_controller"] == {"name": "ConstantStepSize"}
    assert s["adjoint"] == {"name": "RecursiveCheckpointAdjoint"}
    s = nif.InflationaryFlow(sch, gm, rtol=1e-6, atol=1e-7).settings()
    assert s["stepsize_controller"] == {"name": "PIDController", "rtol": 1e-6, "atol": 1e-7}
    ctrl = diffrax.PIDController(rtol=1e-5, atol=1e-5, dtmin=1e-4)
    s = nif.InflationaryFlow(sch, gm, stepsize_controller=ctrl).settings()
    assert s["stepsize_controller"] == {
        "name": "PIDController",
        "rtol": 1e-5,
        "atol": 1e-5,
        "dtmin": 1e-4,
    }


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"solver": _MySolver(), "dt0": 0.1}, "solver"),
        (
            {"stepsize_controller": diffrax.PIDController(1e-5, 1e-5, step_ts=[0.5])},
            "stepsize_controller",
        ),
        (
            {"stepsize_controller": diffrax.PIDController(1e-5, 1e-5, error_order=3)},
            "stepsize_controller",
        ),
        (
            {"stepsize_controller": diffrax.PIDController(1e-5, 1e-5, norm=jnp.linalg.norm)},
            "stepsize_controller",
        ),
        ({"adjoint": diffrax.BacksolveAdjoint()}, "adjoint"),
    ],
)
def test_settings_refuse_what_they_cannot_record(ring, kwargs, name):
    gm, sch, _ = ring
    flow = nif.InflationaryFlow(sch, gm, **kwargs)
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        flow.settings()


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"solver": None}, "solver"),  # deleted below
        ({"extra": 1}, "extra"),
        ({"solver": {"name": "Foo"}}, "solver"),
        ({"solver": "Tsit5"}, "solver"),
        ({"solver": {"name": "ExponentialMultistep", "order": 4}}, "solver"),
        ({"solver": {"name": "Tsit5", "order": 4}}, "solver"),
        ({"stepsize_controller": {"name": "PIDController", "rtol": 1e-5}}, "stepsize_controller"),
        ({"adjoint": {"name": "BacksolveAdjoint"}}, "adjoint"),
        (
            {"stepsize_controller": {"name": "PIDController", "rtol": 1, "atol": 1, "norm": "max"}},
            "stepsize_controller",
        ),
        ({"rtol": -1.0}, "rtol"),
        ({"dt0": "small"}, "dt0"),
        ({"max_steps": 10.5}, "max_steps"),
        ({"throw": "yes"}, "throw"),
        ({"trace": "approximate"}, "trace"),
        ({"num_probes": 0}, "num_probes"),
    ],
)
def test_from_settings_names_the_bad_key(ring, change, key):
    gm, sch, flow = ring
    settings = {**flow.settings(), **change}
    if change == {"solver": None}:
        del settings["solver"]
    with pytest.raises(ValueError, match=rf"^settings\['{key}'\]"):
        nif.InflationaryFlow.from_settings(sch, gm, settings)


def test_replace_rejects_unknown_arguments(ring):
    with pytest.raises(ValueError, match=r"^replace: unknown"):
        ring[2].replace(tolerance=1e-3)


# ---------------------------------------------------------------- latents and sampling
def test_reduced_latent_shapes_and_round_trip(ring_prr):
    gm, _, flow = ring_prr
    assert flow.latent_dim == 2
    x = gm.sample(jax.random.key(0), 5)
    zk = flow.to_latent(x)
    assert zk.shape == (5, 2)
    np.testing.assert_array_equal(zk, flow.encode(x)[:, :2])  # the same compiled solve
    xs = flow.sample(jax.random.key(1), (5,))  # same batch size: shares the decode compile
    assert xs.shape == (5, 3) and np.all(np.isfinite(np.asarray(xs)))
    back = flow.from_latent(zk)
    assert back.shape == (5, 3)
    # dropping the squeezed coordinates moves points only along the small directions
    lam = np.asarray(flow.schedule.eigenvalues)
    du = np.asarray(flow.schedule.to_eigen(back) - flow.schedule.to_eigen(x))
    assert np.abs(du[:, :2]).max() < 0.1 * np.sqrt(lam[0])


# ---------------------------------------------------------------- 5. bad input
@pytest.mark.parametrize(
    ("method", "arg", "name"),
    [
        ("encode", np.zeros((4, 3), np.float32), "x"),
        ("encode", np.zeros((4,), np.float32), "x"),
        ("encode", np.zeros((4, 2), np.int32), "x"),
        ("encode", np.array([[0.0, np.nan]], np.float32), "x"),
        ("encode", np.array([[np.inf, 0.0]], np.float32), "x"),
        ("decode", np.zeros((4, 3), np.float32), "z"),
        ("decode", np.array([[1, 2]]), "z"),
        ("decode", np.array([[0.0, np.nan]], np.float32), "z"),
        ("log_prob", np.zeros((4, 1), np.float32), "x"),
        ("log_prob", np.array([[1, 2]]), "x"),
        ("log_prob", np.array([[-np.inf, 0.0]], np.float32), "x"),
        ("encode_with_log_det", np.zeros((1, 5), np.float32), "x"),
        ("decode_with_log_det", np.array([[1, 2]]), "z"),
        ("to_latent", np.zeros((2, 3), np.float32), "x"),
    ],
)
def test_flow_methods_reject_bad_input(ring, method, arg, name):
    _, _, flow = ring
    with pytest.raises(ValueError, match=rf"^{name}:"):
        getattr(flow, method)(arg)


def test_from_latent_rejects_wrong_latent_dimension(ring_prr):
    _, _, flow = ring_prr
    with pytest.raises(ValueError, match=r"^z_k:"):
        flow.from_latent(np.zeros((2, 3), np.float32))


def test_constructor_rejects_bad_options(ring):
    gm, sch, _ = ring
    other = random_mixture(0, 2, 3)
    with pytest.raises(ValueError, match=r"^score:"):
        nif.InflationaryFlow(sch, other)
    with pytest.raises(ValueError, match=r"^schedule:"):
        nif.InflationaryFlow(gm, gm)
    with pytest.raises(ValueError, match=r"^trace:"):
        nif.InflationaryFlow(sch, gm, trace="approximate")
    with pytest.raises(ValueError, match=r"^rtol:"):
        nif.InflationaryFlow(sch, gm, rtol=0.0)
    with pytest.raises(ValueError, match=r"^max_steps:"):
        nif.InflationaryFlow(sch, gm, max_steps=0)
    with pytest.raises(ValueError, match=r"^solver:"):
        nif.InflationaryFlow(sch, gm, solver="tsit5")


def test_hutchinson_requires_a_key(ring):
    gm, sch, _ = ring
    flow = nif.InflationaryFlow(sch, gm, trace="hutchinson")
    x = jnp.array([[1.0, 0.0]])
    with pytest.raises(ValueError, match=r"^key:"):
        flow.log_prob(x)
    with pytest.raises(ValueError, match=r"^key:"):
        flow.encode_with_log_det(x)
    with pytest.raises(ValueError, match=r"^key:"):
        flow.decode_with_log_det(x)
