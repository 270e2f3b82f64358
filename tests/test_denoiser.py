"""Preconditioning, the denoising loss and the learned denoiser, against closed forms."""

import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import numpyro_inflow as nif
from numpyro_inflow.denoiser import (
    LearnedDenoiser,
    denoising_loss,
    denoising_loss_terms,
    preconditioning,
)

COV = np.array([[2.0, 0.6, 0.1], [0.6, 0.8, 0.0], [0.1, 0.0, 0.3]])
MEAN = np.array([0.5, -1.0, 0.2])


def gaussian(dtype=jnp.float32):
    """A one-component Gaussian oracle and the schedule of its exact moments."""
    gm = nif.GaussianMixtureScore(
        jnp.ones(1, dtype), jnp.asarray(MEAN[None], dtype), jnp.asarray(COV[None], dtype)
    )
    return gm, nif.InflationSchedule.from_moments(*gm.moments(), t_end=9.0)


class Identity(nif.AbstractScore):
    """The do-nothing denoiser D(w, t) = w."""

    d: int = eqx.field(static=True)

    @property
    def dim(self):
        return self.d

    def denoise(self, w, t, schedule):
        return w


def test_preconditioning_is_the_wiener_filter(x64):
    # For Gaussian data the exact posterior mean is c_skip * w and the posterior variance
    # is c_out^2 (1-D Gaussian conditioning, computed here from scratch). In float64 the
    # closed forms agree to rounding; the worst case is the cancellation in
    # lam - lam^2 / (lam + gamma), about eps * lam / gamma = 1e-12 at t = 0.
    gm, sch = gaussian(jnp.float64)
    lam = np.asarray(sch.eigenvalues, np.float64)
    for t in (0.0, 3.0, 8.5):
        gam = 5e-4 * np.exp(t)
        c_in, c_skip, c_out, c_noise = preconditioning(sch, t)
        np.testing.assert_allclose(c_in, 1 / np.sqrt(lam + gam), rtol=1e-12)
        np.testing.assert_allclose(c_skip, lam / (lam + gam), rtol=1e-12)
        np.testing.assert_allclose(c_out**2, lam - lam**2 / (lam + gam), rtol=1e-10)
        assert float(c_noise) == pytest.approx(t / 9.0, rel=1e-15)
        w = jnp.asarray([0.7, -0.3, 1.1])
        np.testing.assert_allclose(gm.denoise(w, t, sch), c_skip * w, rtol=1e-10, atol=1e-12)


def test_loss_minimum_for_gaussian_data_is_the_dimension():
    # E[((D* - u0)/c_out)^2] = posterior variance / c_out^2 = 1 per direction, any t.
    gm, sch = gaussian()
    u0 = sch.to_eigen(gm.sample(jax.random.key(1), 100_000))
    loss = float(denoising_loss(gm, sch, u0, jax.random.key(2)))
    # Per-example terms are chi^2_3: sd of the mean = sqrt(6 / 1e5) ~ 0.008.
    assert loss == pytest.approx(3.0, abs=0.04)


def test_untrained_zero_output_network_is_the_wiener_filter(x64):
    # The zero output layer makes F = 0 exactly, so D = c_skip * w: the exact (float64)
    # mixture denoiser of Gaussian data, up to its linear-algebra rounding.
    gm, sch = gaussian(jnp.float64)
    den = LearnedDenoiser.init(jax.random.key(0), 3, sch.t_end, width=8, depth=1, dtype="float64")
    w = jax.random.normal(jax.random.key(3), (5, 3), jnp.float64)
    for t in (0.1, 5.0):
        got = jax.vmap(den.denoise, (0, None, None))(w, t, sch)
        want = jax.vmap(gm.denoise, (0, None, None))(w, t, sch)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_loss_draws_uniform_times_and_schedule_noise():
    # With D(w) = w the loss is sum_i gamma_i / c_out_i^2 * eps_i^2, whose mean over
    # t ~ U[t_min, T] is sum_i [1 + gamma0 (e^{rT} - e^{r t_min}) / (r lam_i (T - t_min))].
    _, sch = gaussian()
    lam = np.asarray(sch.eigenvalues, np.float64)
    t_min, t_end, r = 0.5, 9.0, 1.0
    want = np.sum(
        1 + 5e-4 * (math.exp(r * t_end) - math.exp(r * t_min)) / (r * lam * (t_end - t_min))
    )
    u0 = jnp.zeros((200_000, 3))
    got = float(denoising_loss(Identity(3), sch, u0, jax.random.key(4), t_min=t_min))
    assert got == pytest.approx(want, rel=0.03)


def test_loss_terms_are_per_example_and_deterministic(x64):
    gm, sch = gaussian(jnp.float64)
    u0 = sch.to_eigen(gm.sample(jax.random.key(1), 4))
    t = jnp.array([0.1, 1.0, 4.0, 8.0])
    eps = jnp.zeros((4, 3))
    # Zero noise: the Wiener filter shrinks u0 by c_skip, so the loss is
    # sum ((c_skip - 1) u0 / c_out)^2 = sum u0^2 gamma / (lam (lam + gamma)).
    lam = sch.eigenvalues
    gam = jax.vmap(sch.gamma)(t)
    want = jnp.sum(u0**2 * gam / (lam * (lam + gam)), axis=-1)
    got = denoising_loss_terms(gm, sch, u0, t, eps)
    # float64: the residual (c_skip - 1) u0 is ~1e-4 u0 at t = 0.1, so rounding of the
    # denoiser (~1e-16 relative) shows at ~1e-12 in the loss, far below rtol.
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_learned_denoiser_is_a_traced_pytree_and_plugs_into_the_flow(x64):
    # With its zero output layer the untrained denoiser is the exact one of Gaussian data,
    # so its flow is the oracle's: equal to rounding (float64, rtol = atol = 1e-10), and its
    # round trip is accurate to the solver tolerance accumulated over ~1000 steps (1e-7).
    gm, sch = gaussian(jnp.float64)
    den = LearnedDenoiser.init(jax.random.key(0), 3, sch.t_end, width=8, depth=1, dtype="float64")
    leaves = jax.tree.leaves(den)
    assert all(isinstance(a, jax.Array) for a in leaves)
    assert sum(a.size for a in leaves) == den.num_parameters
    flow = nif.InflationaryFlow(sch, den, rtol=1e-10, atol=1e-10)
    x = jnp.asarray([[0.5, -1.0, 0.2], [1.0, 0.0, 0.0]])
    z = jax.jit(lambda f, a: f.encode(a))(flow, x)
    oracle = nif.InflationaryFlow(sch, gm, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(z, oracle.encode(x), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(flow.decode(z), x, atol=1e-7)
    # Gradients with respect to the weights flow through the loss.
    g = jax.grad(lambda d: denoising_loss(d, sch, x, jax.random.key(0)))(den)
    assert float(optax.tree.norm(g.params)) > 0


@pytest.mark.parametrize(
    "kwargs",
    [dict(architecture="mlp", width=8, depth=2), dict(architecture="unet", channels=(4, 8))],
)
def test_config_round_trip(tmp_path, kwargs):
    dim = 64 if kwargs["architecture"] == "unet" else 3
    den = LearnedDenoiser.init(jax.random.key(1), dim, 7.5, output_scale=0.5, **kwargs)
    cfg = json.loads(json.dumps(den.config()))
    skeleton = LearnedDenoiser.from_config(cfg)
    assert jax.tree.structure(skeleton) == jax.tree.structure(den)
    assert skeleton.config() == den.config()
    eqx.tree_serialise_leaves(tmp_path / "w.eqx", den)
    loaded = eqx.tree_deserialise_leaves(tmp_path / "w.eqx", skeleton)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(den), strict=True):
        np.testing.assert_array_equal(a, b)


def test_unet_shapes_and_one_training_step():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 64)).astype(np.float32)
    sch = nif.InflationSchedule.from_data(x)
    den = LearnedDenoiser.init(
        jax.random.key(0), 64, sch.t_end, architecture="unet", channels=(4, 8), output_scale=1.0
    )
    assert den.space == "data"
    out = den.apply(jnp.zeros((2, 5, 64)), jnp.zeros((2, 5)))
    assert out.shape == (2, 5, 64)
    assert den.denoise(jnp.asarray(x[0]), 1.0, sch).shape == (64,)
    u0 = sch.to_eigen(jnp.asarray(x[:8]))
    opt = optax.sgd(1e-4)

    @eqx.filter_jit
    def step(d):
        loss, g = eqx.filter_value_and_grad(denoising_loss)(d, sch, u0, jax.random.key(1))
        updates, _ = opt.update(g, opt.init(eqx.filter(d, eqx.is_array)))
        new = eqx.apply_updates(d, updates)
        return loss, denoising_loss(new, sch, u0, jax.random.key(1))

    loss, new_loss = step(den)
    assert np.isfinite(float(loss)) and np.isfinite(float(new_loss))
    # One small gradient step on the same draws: the loss (~71) drops by about
    # lr * |grad|^2 (~1.6), four orders of magnitude above float32 rounding of the loss.
    assert float(new_loss) < float(loss)


def test_bad_arguments():
    with pytest.raises(ValueError, match="architecture: expected one of"):
        LearnedDenoiser.init(jax.random.key(0), 2, 5.0, architecture="resnet")
    with pytest.raises(ValueError, match="space: expected one of"):
        LearnedDenoiser.init(jax.random.key(0), 2, 5.0, space="pixels")
    with pytest.raises(ValueError, match="image_shape"):
        LearnedDenoiser.init(jax.random.key(0), 10, 5.0, architecture="unet")
    with pytest.raises(ValueError, match="hyperparameters"):
        LearnedDenoiser.init(jax.random.key(0), 2, 5.0, widht=3)
    with pytest.raises(ValueError, match="t_ref"):
        LearnedDenoiser.init(jax.random.key(0), 2, -1.0)
    with pytest.raises(ValueError, match="config: expected the keys"):
        LearnedDenoiser.from_config({"architecture": "mlp"})
