"""Training: loss, EMA, determinism, no retracing, divergence, sharding, checkpoints/resume.

Every test here runs under ``jax.enable_x64`` (a context, not a process-wide switch) and
trains in float64: a training run amplifies rounding, so only in float64 are its numbers
the same, to far below the thresholds used, on any CPU and thread count.
"""

import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import numpyro_inflow as nif
from numpyro_inflow.checkpoint import Checkpoints
from numpyro_inflow.denoiser import denoising_loss_terms
from numpyro_inflow.train import adam_warmup_cosine, fit_with_history, init_flow, train_flow

TINY = dict(width=16, depth=1)
FAST = dict(batch_size=64, progress=False, network=TINY)


@pytest.fixture(autouse=True, scope="module")
def _x64_module():
    with jax.enable_x64(True):
        yield


def two_blobs(n=3000, seed=0, dtype=np.float64):
    """Two tight, well separated clusters: far from Gaussian, so training has work to do."""
    rng = np.random.default_rng(seed)
    centres = np.array([[-2.0, 0.5], [2.0, -0.5]])
    return (centres[rng.integers(0, 2, n)] + 0.15 * rng.normal(size=(n, 2))).astype(dtype)


def leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def counted(optimiser):
    """``optimiser`` whose update may be traced once: it runs inside the compiled chunk."""
    update = eqx.debug.assert_max_traces(optimiser.update, max_traces=1)
    return optax.GradientTransformation(optimiser.init, update), update


class TracedScore(nif.AbstractScore):
    """A learned denoiser whose ``denoise`` counts its traces (calls while jit traces)."""

    inner: nif.LearnedDenoiser
    denoise_fn: eqx.Module  # eqx.debug.assert_max_traces wrapper

    @property
    def dim(self):
        return self.inner.dim

    def denoise(self, w, t, schedule):
        return self.denoise_fn(self.inner, w, t, schedule)


@pytest.fixture(scope="module")
def trained():
    optimiser, update = counted(adam_warmup_cosine(250, 1e-2))
    flow, hist = fit_with_history(
        two_blobs(), steps=250, optimiser=optimiser, schedule=dict(t_end=8.0), **FAST
    )
    return flow, hist, eqx.debug.get_num_traces(update)


def test_loss_decreases_towards_the_oracle(trained):
    flow, hist, _ = trained
    assert hist.steps == 250 and len(hist.loss) == 250 and hist.stopped is None
    # The untrained net is the Wiener filter (loss ~ D = 2 on any data); the exact
    # mixture denoiser bounds the achievable loss from below.
    x = two_blobs(4000, seed=1)
    centres = jnp.array([[-2.0, 0.5], [2.0, -0.5]])
    oracle = nif.GaussianMixtureScore(
        jnp.ones(2) / 2, centres, jnp.tile(0.0225 * jnp.eye(2), (2, 1, 1))
    )
    sch = flow.schedule
    u0 = sch.to_eigen(jnp.asarray(x))
    kt, ke = jax.random.split(jax.random.key(5))
    t = jax.random.uniform(kt, (4000,), minval=1e-7, maxval=sch.t_end)
    eps = jax.random.normal(ke, u0.shape)
    best = float(jnp.mean(denoising_loss_terms(oracle, sch, u0, t, eps)))
    got = float(jnp.mean(denoising_loss_terms(flow.score, sch, u0, t, eps)))
    assert best < 1.6
    assert hist.val_loss[-1] < hist.val_loss[0] - 0.05
    assert np.mean(hist.loss[-50:]) < np.mean(hist.loss[:10]) - 0.2
    # At least 70 % of the way from the Wiener filter (loss ~2) to the oracle.
    assert best - 0.05 < got < best + 0.3 * (2.0 - best)


def test_ema_and_raw_weights_differ(trained):
    flow, hist, _ = trained
    ema, raw = leaves(flow.score.params), leaves(hist.raw_score.params)
    assert any(not np.allclose(a, b) for a, b in zip(ema, raw, strict=True))
    assert all(np.all(np.isfinite(a)) for a in ema)


def test_step_is_compiled_once(trained):
    # 250 steps = 3 compiled chunks of 100 (the last one partly masked), yet the chunk
    # (where the optimiser's update runs) is traced exactly once.
    _, hist, update_traces = trained
    assert len(hist.val_step) >= 3
    assert update_traces == 1


def test_validation_is_compiled_once():
    # The denoiser is traced once for the training chunk and once for the validation
    # loss, however many chunks and validations run (here 3 and 3).
    x = two_blobs(400)
    flow0 = init_flow(x, network=TINY)
    traced = eqx.debug.assert_max_traces(lambda d, w, t, s: d.denoise(w, t, s), max_traces=2)
    flow0 = eqx.tree_at(lambda f: f.score, flow0, TracedScore(flow0.score, traced))
    optimiser, update = counted(adam_warmup_cosine(30))
    _, hist = train_flow(
        flow0,
        x,
        optimiser,
        steps=30,
        batch_size=32,
        key=jax.random.key(0),
        validation=x[:50],
        eval_every=10,
        progress=False,
    )
    assert hist.val_step == [10, 20, 30]
    assert eqx.debug.get_num_traces(update) == 1
    assert eqx.debug.get_num_traces(traced) == 2


def test_deterministic_for_a_seed():
    x = two_blobs(500)
    kw = dict(steps=30, **FAST)
    f1, h1 = fit_with_history(x, seed=3, **kw)
    f2, h2 = fit_with_history(x, seed=3, **kw)
    _, h3 = fit_with_history(x, seed=4, **kw)
    np.testing.assert_array_equal(h1.loss, h2.loss)
    for a, b in zip(leaves(f1.score), leaves(f2.score), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(h1.loss, h3.loss)


def test_schedule_arguments_pass_through():
    x = two_blobs(300)
    flow = nif.fit(
        x,
        keep=1,
        steps=2,
        schedule=dict(inflation_gap=1.5, rho=2.0, gamma0=1e-3, t_end=6.0),
        batch_size=32,
        progress=False,
        network=TINY,
    )
    sch = flow.schedule
    assert (sch.keep, sch.rho, sch.gamma0, sch.t_end) == (1, 2.0, 1e-3, 6.0)
    np.testing.assert_allclose(sch.g, [1.0, -0.5])
    assert flow.score.t_ref == 6.0


def test_gaussian_data_trained_net_approaches_the_analytic_minimum():
    # For Gaussian data the exact denoiser is the linear Wiener filter and the optimal
    # loss is D = 2. A randomly initialised output layer starts far above it; a
    # briefly trained net must come back to the exact oracle's loss on fresh draws.
    a = np.array([[1.0, 0.0], [0.8, 0.5]])
    cov = a @ a.T
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2)) @ a.T
    flow, hist = fit_with_history(
        x,
        steps=300,
        optimiser=dict(learning_rate=3e-3),
        batch_size=128,
        progress=False,
        network=dict(width=16, depth=1, output_scale=3.0),
    )
    oracle = nif.GaussianMixtureScore(jnp.ones(1), jnp.zeros((1, 2)), jnp.asarray(cov[None]))
    sch = flow.schedule
    u0 = sch.to_eigen(oracle.sample(jax.random.key(1), 50_000))
    kt, ke = jax.random.split(jax.random.key(2))
    t = jax.random.uniform(kt, (50_000,), minval=1e-7, maxval=sch.t_end)
    eps = jax.random.normal(ke, u0.shape)
    best = float(jnp.mean(denoising_loss_terms(oracle, sch, u0, t, eps)))
    got = float(jnp.mean(denoising_loss_terms(flow.score, sch, u0, t, eps)))
    assert best == pytest.approx(2.0, abs=0.05)  # the analytic minimum, by Monte Carlo
    assert hist.loss[0] > 4.0
    assert best - 0.02 < got < best + 0.05


def test_non_finite_loss_stops_and_keeps_last_good_state():
    x = two_blobs(300, dtype=np.float32)  # float32 overflows within a few steps
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        flow, hist = fit_with_history(
            x,
            steps=200,
            optimiser=dict(learning_rate=1e30, grad_clip=1e30),
            batch_size=32,
            progress=False,
            network=TINY,
        )
    assert hist.stopped is not None and "non-finite" in hist.stopped
    assert hist.steps < 200 and len(hist.loss) == hist.steps
    assert np.all(np.isfinite(hist.loss))
    assert all(np.all(np.isfinite(a)) for a in leaves(flow.score))


def test_progress_bar_shows_loss_and_throughput(capsys):
    nif.fit(two_blobs(300), steps=20, batch_size=32, network=TINY, progress=True)
    err = capsys.readouterr().err
    assert "loss=" in err and "samples/s=" in err and "20/20" in err


def test_checkpoint_resume_equals_uninterrupted_run(tmp_path):
    x = two_blobs(400)
    kw = dict(steps=120, **FAST)

    def ckpt(name, **options):
        return Checkpoints(tmp_path / name, every=40, **options)

    class Interrupt(Exception):
        pass

    def stop_at_80(step, metrics):
        if step >= 80:
            raise Interrupt

    with pytest.raises(Interrupt):
        nif.fit(x, checkpoints=ckpt("a"), callback=stop_at_80, **kw)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "step_000000040",
        "step_000000080",
    ]
    resumed, h_res = fit_with_history(x, checkpoints=ckpt("a", resume=True), **kw)
    full, h_full = fit_with_history(x, checkpoints=ckpt("b"), **kw)
    np.testing.assert_array_equal(h_res.loss, h_full.loss)
    assert h_res.val_loss == h_full.val_loss and h_res.val_step == h_full.val_step
    for a, b in zip(leaves(resumed.score), leaves(full.score), strict=True):
        np.testing.assert_array_equal(a, b)
    # A finished run resumes to itself without training; other settings are refused.
    again, h_again = fit_with_history(x, checkpoints=ckpt("b", resume=True), **kw)
    assert h_again.steps == 120
    for a, b in zip(leaves(again.score), leaves(full.score), strict=True):
        np.testing.assert_array_equal(a, b)
    for change in ({"seed": 1}, {"optimiser": {"learning_rate": 1e-3}}):
        with pytest.raises(ValueError, match="different data or training settings"):
            nif.fit(x, checkpoints=ckpt("b", resume=True), **{**kw, **change})
    # a path to one snapshot is a valid source too
    snapshot = Checkpoints(tmp_path / "c", resume=tmp_path / "b" / "step_000000120")
    _, h_one = fit_with_history(x, checkpoints=snapshot, **kw)
    np.testing.assert_array_equal(h_one.loss, h_full.loss)
    with pytest.raises(ValueError, match="resume: expected a checkpoint"):
        nif.fit(x, checkpoints=ckpt("c", resume=tmp_path / "nothing-here"), **kw)


_SHARDING_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)  # a separate process: switched on for it only
    import numpyro_inflow as nif
    from numpyro_inflow.train import fit_with_history
    assert len(jax.devices()) == 2, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 2)) * [2.0, 0.5]  # float64: the whole run is float64
    kw = dict(steps=60, batch_size=64, progress=False, network=dict(width=16, depth=1))
    f1, h1 = fit_with_history(x, devices=jax.devices()[:1], **kw)
    f2, h2 = fit_with_history(x, **kw)
    # The runs differ only in how the batch sums are split between the devices: a
    # rounding of ~1e-16 per step, which 60 steps cannot grow anywhere near 1e-9.
    np.testing.assert_allclose(h1.loss, h2.loss, rtol=1e-9)
    np.testing.assert_allclose(h1.val_loss, h2.val_loss, rtol=1e-9)
    for a, b in zip(jax.tree.leaves(f1.score), jax.tree.leaves(f2.score)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    try:
        nif.fit(x, batch_size=63, steps=2, progress=False)
    except ValueError as e:
        assert "multiple of the number of devices (2)" in str(e)
    else:
        raise AssertionError("odd batch accepted")
    print("SHARDING-OK")
    """
)


def test_two_forced_cpu_devices_give_the_same_loss_curve():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    res = subprocess.run(
        [sys.executable, "-c", _SHARDING_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "SHARDING-OK" in res.stdout


@pytest.mark.parametrize(
    ("x", "kwargs", "match"),
    [
        (np.array([[0.0, 1.0], [np.nan, 1.0]] * 10, np.float32), {}, r"row\(s\) with NaN"),
        (np.zeros(20, np.float32), {}, r"expected a 2-D array \(N, D\)"),
        (np.zeros((4, 5, 2), np.float32), {}, r"expected a 2-D array \(N, D\)"),
        (np.ones((20, 2), np.int64), {}, "floating-point"),
        (
            np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32),
            {},
            "at least D \\+ 1 = 4 training samples",
        ),
        (None, {"steps": 0}, "steps: expected an integer >= 1"),
        (None, {"batch_size": 0}, "batch_size: expected an integer >= 1"),
        (None, {"batch_size": 2.5}, "batch_size: expected an integer"),
        (None, {"validation_fraction": 1.0}, "validation_fraction"),
        (None, {"optimiser": {"learning_rate": -1.0}}, "learning_rate"),
        (None, {"optimiser": {"grad_clip": 0.0}}, "grad_clip"),
        (None, {"optimiser": "adam"}, "optimiser: expected a dict"),
        (None, {"checkpoints": "ckpt"}, "checkpoints: expected a Checkpoints"),
        (None, {"network": {"widht": 3}}, "hyperparameters"),
        (None, {"keep": 2}, "keep: expected None"),
        (None, {"schedule": {"inflation_gap": 1.0}}, "inflation_gap: only meaningful"),
        (None, {"ema_half_life": 0}, "ema_half_life: expected an integer >= 1"),
        (None, {"devices": []}, "devices: expected at least one device"),
    ],
)
def test_bad_inputs(x, kwargs, match):
    x = two_blobs(50) if x is None else x
    with pytest.raises(ValueError, match=match):
        nif.fit(x, progress=False, **kwargs)


def test_bad_checkpoint_settings_and_data_for_train_flow():
    with pytest.raises(ValueError, match="every: expected a positive integer"):
        Checkpoints("ckpt", every=0)
    with pytest.raises(ValueError, match="keep: expected a positive integer"):
        Checkpoints("ckpt", keep=0)
    flow = init_flow(two_blobs(50), network=TINY)
    opt = adam_warmup_cosine(5)
    with pytest.raises(ValueError, match=r"x: expected a 2-D array \(N, 2\)"):
        train_flow(
            flow, np.zeros((10, 3), np.float32), opt, steps=5, batch_size=8, key=jax.random.key(0)
        )
    with pytest.raises(ValueError, match="flow: expected an InflationaryFlow"):
        train_flow(flow.score, two_blobs(50), opt, steps=5, batch_size=8, key=jax.random.key(0))
