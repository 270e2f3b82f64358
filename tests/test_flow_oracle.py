"""The flow against exact oracles, in float64: closed forms, base law, density, log-det.

Every module-level fixture and test here runs under ``jax.enable_x64`` (a context,
not a process-wide switch, so the float32 modules are unaffected with or without xdist).
"""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import gaussian_oracle, random_mixture, ring_mixture
from scipy import stats

import numpyro_inflow as nif


@pytest.fixture(autouse=True, scope="module")
def _x64_module():
    with jax.enable_x64(True):
        yield


# ---------------------------------------------------------------- 1. single Gaussian
# For p_0 = N(mu, Sigma) the denoiser is D(w, t) = lam / (lam + gamma(t)) * w in eigen
# coordinates, so the unscaled pfODE dw/dt = (r/2)(w - D) = (1/2) d/dt log(lam + gamma) * w
# integrates to w(t) = w(0) sqrt((lam + gamma(t)) / (lam + gamma(0))). With v = s w,
# v(0) = s(0) u and z = v(T)/A0:  z_i = s_i(T) sqrt((lam_i + gamma_i(T))/(lam_i + gamma_i(0))) u_i / A0.
GAUSSIAN_VARIANTS = {
    "prp": {},
    "prr-orig": {"keep": 1},
    "prr-gap": {"keep": 2, "inflation_gap": 1.0, "rho": 0.7, "gamma0": 1e-3, "A0": 2.0},
    "proportional": {"proportional": True},
}


def _gaussian_closed_form(sch, variant):
    """Per-direction gain c with z = c * u, from the paper's definitions (not the schedule's)."""
    kw = GAUSSIAN_VARIANTS[variant]
    lam = np.asarray(sch.eigenvalues)
    d = lam.size
    rho, gamma0, a0 = kw.get("rho", 1.0), kw.get("gamma0", 5e-4), kw.get("A0", 1.0)
    g = np.zeros(d)
    if "keep" in kw:
        k = kw["keep"]
        g[:k] = 1.0
        g[k:] = 1.0 - kw["inflation_gap"] if "inflation_gap" in kw else -k / (d - k)
    g0 = gamma0 * lam / lam[0] if kw.get("proportional") else np.full(d, gamma0)
    t_end = sch.t_end
    gam = lambda t: g0 * np.exp(rho * (1 + g) * t)  # noqa: E731
    if kw.get("proportional"):
        s_end = a0 / np.sqrt(lam + gam(t_end))
    else:
        s_end = a0 / np.sqrt(lam[0] + gamma0 * np.exp(rho * (1 + g.max()) * t_end))
    return s_end * np.sqrt((lam + gam(t_end)) / (lam + g0)) / a0


def _gaussian_case(variant):
    gm = gaussian_oracle(7, 3, dtype=jnp.float64)
    sch = nif.InflationSchedule.from_moments(*gm.moments(), **GAUSSIAN_VARIANTS[variant])
    flow = nif.InflationaryFlow(sch, gm, rtol=1e-8, atol=1e-8)
    x = np.asarray(gm.sample(jax.random.key(1), 16)) * 1.5  # some points in the tails too
    u = (x - np.asarray(sch.mean)) @ np.asarray(sch.eigenvectors)
    return flow, x, _gaussian_closed_form(sch, variant), u


@pytest.mark.parametrize("variant", list(GAUSSIAN_VARIANTS))
def test_single_gaussian_matches_closed_form(variant):
    flow, x, c, u = _gaussian_case(variant)
    z_exact = c * u
    z = flow.encode(jnp.asarray(x))
    assert z.dtype == jnp.float64
    np.testing.assert_allclose(z, z_exact, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(flow.decode(jnp.asarray(z_exact)), x, rtol=1e-6, atol=1e-6)


def test_single_gaussian_log_det_and_gradient_match_closed_form():
    # z = diag(c) W^T (x - mu): log|det dz/dx| = sum log c, and d/dx sum_i a_i z_i = W (c a)
    flow, x, c, u = _gaussian_case("prr-gap")
    z, log_det = flow.encode_with_log_det(jnp.asarray(x))
    np.testing.assert_allclose(z, c * u, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(log_det, np.full(len(x), np.log(c).sum()), rtol=1e-6, atol=1e-6)
    wts = jnp.array([1.0, -2.0, 0.5])
    grad = jax.grad(lambda a: jnp.sum(flow.encode(a) * wts))(jnp.asarray(x))
    expected = np.asarray(flow.schedule.eigenvectors) @ (c * np.asarray(wts))
    np.testing.assert_allclose(grad, np.tile(expected, (len(x), 1)), rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- 2. mixture -> base law
MIXTURES = {
    "ring2-prp": (lambda: ring_mixture(dtype=jnp.float64), None),
    "ring2-prr": (lambda: ring_mixture(dtype=jnp.float64), 1),
    "rand5-prp": (lambda: random_mixture(1, 4, 5, dtype=jnp.float64), None),
    "rand5-prr": (lambda: random_mixture(1, 4, 5, dtype=jnp.float64), 2),
}
N_ENCODE = 4000


@pytest.fixture(scope="module", params=list(MIXTURES))
def encoded(request):
    make, keep = MIXTURES[request.param]
    gm = make()
    sch = nif.InflationSchedule.from_moments(*gm.moments(), keep=keep)
    # Moments and KS need ~1e-4 accuracy only; the round trip uses a tight copy.
    flow = nif.InflationaryFlow(sch, gm, rtol=1e-6, atol=1e-6)
    k1, k2 = jax.random.split(jax.random.key(11))
    # The flow transports p_0 * N(0, gamma(0)) (the t = 0 marginal), so add that noise.
    x = gm.sample(k1, N_ENCODE) + jnp.sqrt(sch.gamma0) * jax.random.normal(k2, (N_ENCODE, gm.dim))
    z, info = flow.encode_with_info(x)
    assert bool(jnp.all(info.success))
    return flow, np.asarray(x), np.asarray(z)


def test_encoded_mixture_has_base_moments(encoded):
    flow, _, z = encoded
    # whiten by the base variances: the result should have mean 0 and covariance I
    y = z / np.sqrt(np.asarray(flow.base_variance))
    n, d = y.shape
    mean_z = y.mean(0) / (y.std(0) / np.sqrt(n))
    assert np.all(np.abs(mean_z) < 4.5), mean_z
    yc = y - y.mean(0)
    prods = yc[:, :, None] * yc[:, None, :]
    cov_z = (prods.mean(0) - np.eye(d)) / (prods.std(0) / np.sqrt(n))
    assert np.all(np.abs(cov_z) < 5.0), cov_z


def test_encoded_mixture_kept_coordinates_pass_ks(encoded):
    flow, _, z = encoded
    pvalues = [stats.kstest(z[:, i], "norm").pvalue for i in range(flow.latent_dim)]
    assert min(pvalues) > 1e-3, pvalues


def test_encoded_mixture_squeezed_variances_match_schedule(encoded):
    flow, _, z = encoded
    if not flow.schedule.is_reducing:
        pytest.skip("PR-preserving: no squeezed directions")
    k = flow.latent_dim
    sq = z[:, k:]
    predicted = np.asarray(flow.schedule.base_variance)[k:]
    assert np.all(predicted < 1e-3)
    # standard error of a sample variance: sqrt((m4 - var^2) / n)
    var = sq.var(0)
    se = np.sqrt(((sq - sq.mean(0)) ** 4).mean(0) - var**2) / np.sqrt(len(sq))
    assert np.all(np.abs(var - predicted) < 4.5 * se), (var, predicted, se)


def test_mixture_round_trip(encoded):
    flow, x, _ = encoded
    tight = flow.replace(rtol=1e-8, atol=1e-10)  # PR-reducing decoding amplifies ~1/sqrt(eps)
    x_back = tight.decode(tight.encode(jnp.asarray(x[:200])))
    err = np.abs(np.asarray(x_back) - x[:200]).max()
    assert err <= 1e-5, err


# ---------------------------------------------------------------- 3. log-density
@pytest.fixture(scope="module")
def ring_flow():
    gm = ring_mixture(dtype=jnp.float64)
    sch = nif.InflationSchedule.from_moments(*gm.moments())
    return gm, nif.InflationaryFlow(sch, gm, rtol=1e-6, atol=1e-6)


def test_log_prob_matches_analytic_density_and_integrates_to_one(ring_flow):
    gm, flow = ring_flow
    sch = flow.schedule
    samples = np.asarray(gm.sample(jax.random.key(3), 300))
    g = np.linspace(-3.3, 3.3, 45)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    pts = jnp.asarray(np.concatenate([samples, grid]))
    lp = np.asarray(flow.log_prob(pts))  # one call, one compilation
    exact = np.asarray(gm.log_prob_t(sch.to_eigen(pts), 0.0, sch))
    mae = np.abs(lp - exact)[:300].mean()
    assert mae <= 1e-3, mae
    # the grid covers the mass (ring radius 2, component sd 0.22): trapezoid ~ exact
    integral = np.exp(lp[300:]).sum() * (g[1] - g[0]) ** 2
    assert abs(integral - 1.0) <= 1e-2, integral
    assert np.abs(lp - exact)[300:].max() < 1e-2


@pytest.fixture(scope="module")
def mix5_flow():
    gm = random_mixture(4, 3, 5, dtype=jnp.float64)
    sch = nif.InflationSchedule.from_moments(*gm.moments())
    flow = nif.InflationaryFlow(sch, gm, rtol=1e-8, atol=1e-8)
    x = gm.sample(jax.random.key(5), 4)
    z, log_det = flow.encode_with_log_det(x)
    return flow, x, z, log_det


@pytest.fixture(scope="module")
def mix5_jacobian(mix5_flow):
    """Forward-mode Jacobians dz/dx (diffrax.ForwardMode), one per point."""
    flow, x, _, _ = mix5_flow
    fwd = flow.replace(adjoint=diffrax.ForwardMode())
    return jax.vmap(jax.jacfwd(fwd.encode))(x)


def test_log_det_matches_slogdet_of_jacobian(mix5_flow, mix5_jacobian):
    _, _, _, log_det = mix5_flow
    sign, ref = jnp.linalg.slogdet(mix5_jacobian)
    assert np.all(np.asarray(sign) > 0)
    np.testing.assert_allclose(log_det, ref, rtol=1e-6, atol=1e-6)


def test_decode_log_det_is_minus_encode_log_det(mix5_flow):
    flow, x, z, log_det = mix5_flow
    x_back, log_det_dec = flow.decode_with_log_det(z)
    np.testing.assert_allclose(x_back, x, atol=1e-6)
    np.testing.assert_allclose(log_det_dec, -log_det, rtol=1e-6, atol=1e-6)


def test_hutchinson_log_det_is_unbiased(mix5_flow):
    flow, x, _, log_det = mix5_flow
    n_keys = 400
    hutch = flow.replace(trace="hutchinson", rtol=1e-6, atol=1e-6)
    reps = jnp.repeat(x[:2], n_keys, axis=0)  # one independent probe per row
    _, est = hutch.encode_with_log_det(reps, key=jax.random.key(8))
    est = np.asarray(est).reshape(2, n_keys)
    sd = est.std(1, ddof=1)
    assert np.all(sd > 1e-3)  # it is a random estimate ...
    zscore = (est.mean(1) - np.asarray(log_det[:2])) / (sd / np.sqrt(n_keys))
    assert np.all(np.abs(zscore) < 4.5), zscore  # ... centred on the exact log-det
    # randomness only through the key: the same key gives the same estimate
    _, a = hutch.encode_with_log_det(x[:1], key=jax.random.key(1))
    _, b = hutch.encode_with_log_det(x[:1], key=jax.random.key(1))
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- 9. gradients
def test_reverse_jacobian_matches_forward_jacobian(mix5_flow, mix5_jacobian):
    # jacrev (the default RecursiveCheckpointAdjoint) vs jacfwd (diffrax.ForwardMode):
    # independent differentiation paths through the same discrete solve (the step sizes
    # carry no gradient in either), so they agree to float64 rounding; the Gaussian case
    # above checks the values themselves.
    flow, x, _, _ = mix5_flow
    rev = jax.vmap(jax.jacrev(flow.encode))(x)
    assert np.all(np.isfinite(np.asarray(rev)))
    np.testing.assert_allclose(rev, mix5_jacobian, rtol=1e-9, atol=1e-11)


def test_plain_and_log_det_solves_agree(mix5_flow):
    # Two different solves (the log-det solve also controls the accumulator's error, so
    # it takes its own steps): each is within its global error of the exact map, a few
    # times rtol = atol = 1e-8 here (3e-8 measured), so 1e-6 leaves a margin of 30.
    flow, x, z, _ = mix5_flow
    np.testing.assert_allclose(flow.decode_with_log_det(z)[0], flow.decode(z), atol=1e-6)
    np.testing.assert_allclose(flow.encode(x), z, atol=1e-6)
