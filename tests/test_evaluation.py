"""The evaluation helpers against closed forms computed independently of them.

float64 throughout: the helpers compute in NumPy float64, and every test runs under
``jax.enable_x64`` (a context, not a process-wide switch, so the float32 modules are
unaffected with or without xdist). Closed forms are compared to about 1e-10; Monte Carlo
checks use fixed NumPy seeds and tolerances of several standard errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from scipy import stats
from scipy.integrate import trapezoid

import numpyro_inflow as nif
from numpyro_inflow.evaluation import (
    GaussianMixture,
    LatentMixtureProblem,
    block_mask,
    energy_distance,
    psnr,
    random_mask,
)


@pytest.fixture(autouse=True, scope="module")
def _x64_module():
    with jax.enable_x64(True):
        yield


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.5 * np.eye(d)


# ----------------------------------------------------------------------------- mixture
def test_condition_one_gaussian_is_the_conjugate_posterior():
    rng = np.random.default_rng(0)
    m, s = rng.normal(size=3), _spd(rng, 3)
    a, noise, y = rng.normal(size=(2, 3)), np.array([0.3, 0.7]), rng.normal(size=2)
    post = GaussianMixture.from_arrays([1.0], m[None], s[None]).condition(a, noise, y)
    # information form: precision S^-1 + A^T R^-1 A, mean cov (S^-1 m + A^T R^-1 y)
    rinv = np.diag(noise**-2.0)
    cov = np.linalg.inv(np.linalg.inv(s) + a.T @ rinv @ a)
    mean = cov @ (np.linalg.solve(s, m) + a.T @ rinv @ y)
    np.testing.assert_allclose(post.weights, [1.0])
    np.testing.assert_allclose(post.means[0], mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(post.covariances[0], cov, rtol=1e-10, atol=1e-12)


def test_condition_mixture_matches_quadrature_in_1d():
    prior = GaussianMixture.from_arrays([0.3, 0.7], [[-2.0], [1.5]], [[[0.5]], [[1.2]]])
    post = prior.condition([[1.0]], 0.8, [0.4])
    x = np.linspace(-20, 20, 400_001)
    p = sum(
        w * stats.norm.pdf(x, m[0], np.sqrt(c[0, 0]))
        for w, m, c in zip(prior.weights, prior.means, prior.covariances, strict=True)
    ) * stats.norm.pdf(0.4, x, 0.8)
    p /= trapezoid(p, x)
    mean = trapezoid(x * p, x)
    var = trapezoid((x - mean) ** 2 * p, x)
    got_mean, got_cov = post.moments()
    np.testing.assert_allclose(got_mean, [mean], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(got_cov, [[var]], rtol=1e-9)
    np.testing.assert_allclose(np.exp(post.log_prob(x[:, None])), p, atol=1e-9)


def test_log_prob_and_sample_of_a_mixture():
    rng = np.random.default_rng(1)
    means, covs = rng.normal(size=(3, 2)), np.stack([_spd(rng, 2) for _ in range(3)])
    gm = GaussianMixture.from_arrays([1.0, 2.0, 1.0], means, covs)
    x = rng.normal(size=(5, 2))

    def pdf(m, c):  # the Gaussian density written out
        d = x - m
        q = np.einsum("ni,ij,nj->n", d, np.linalg.inv(c), d)
        return np.exp(-q / 2) / np.sqrt(np.linalg.det(2 * np.pi * c))

    dens = sum(w * pdf(m, c) for w, m, c in zip([0.25, 0.5, 0.25], means, covs, strict=True))
    np.testing.assert_allclose(gm.log_prob(x), np.log(dens), rtol=1e-12)
    n = 200_000
    draws = gm.sample(np.random.default_rng(2), n)
    mean, cov = gm.moments()
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(draws.mean(0) - mean) < 5 * se)
    # covariance entries: se of a sample variance ~ sd^2 sqrt(2 / n) (4 x that for the tails)
    assert np.all(np.abs(np.cov(draws.T) - cov) < 20 * np.diag(cov).max() / np.sqrt(n))


def test_of_flow_is_the_oracle_flows_density():
    gm = nif.GaussianMixtureScore(
        jnp.array([0.4, 0.6]),
        jnp.array([[-0.8, 0.0], [0.8, 0.3]]),
        jnp.array([[[0.4, 0.15], [0.15, 0.3]], [[0.3, -0.1], [-0.1, 0.5]]]),
    )
    sch = nif.InflationSchedule.from_moments(*gm.moments())
    flow = nif.InflationaryFlow(sch, gm)
    exact = GaussianMixture.of_flow(flow)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(6, 2)))
    # the score's own density of the t = 0 marginal, in eigen coordinates (|det W| = 1)
    np.testing.assert_allclose(
        exact.log_prob(x), gm.log_prob_t(sch.to_eigen(x), 0.0, sch), rtol=1e-10, atol=1e-10
    )
    with pytest.raises(TypeError, match="GaussianMixtureScore"):
        GaussianMixture.of_flow(flow.replace(score=nif.EmpiricalScore(x)))


def test_mixture_argument_errors():
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture.from_arrays([-1.0, 2.0], np.zeros((2, 1)), np.ones((2, 1, 1)))
    with pytest.raises(ValueError, match="covariances"):
        GaussianMixture.from_arrays([1.0], np.zeros((1, 2)), np.ones((1, 1, 1)))
    gm = GaussianMixture.from_arrays([1.0], np.zeros((1, 2)), np.eye(2)[None])
    with pytest.raises(ValueError, match="matrix"):
        gm.condition(np.ones((1, 3)), 1.0, [0.0])


# ----------------------------------------------------------------------------- energy
def _abs_normal_mean(mu, sd):
    """E|N(mu, sd^2)| (folded normal)."""
    return sd * np.sqrt(2 / np.pi) * np.exp(-(mu**2) / (2 * sd**2)) + mu * (
        1 - 2 * stats.norm.cdf(-mu / sd)
    )


def test_energy_distance_of_shifted_normals_matches_closed_form():
    # X ~ N(0, 1), Y ~ N(d, 1): 2 E|N(d, 2)| - 2 E|N(0, 2)|
    d, n = 1.0, 3000
    exact = 2 * _abs_normal_mean(d, np.sqrt(2)) - 2 * _abs_normal_mean(0.0, np.sqrt(2))
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=n), d + rng.normal(size=n)
    # standard error from 10 independent replicates of a tenth of the size
    reps = [
        energy_distance(rng.normal(size=n // 10), d + rng.normal(size=n // 10)) for _ in range(10)
    ]
    se = np.std(reps, ddof=1) / np.sqrt(10)  # the full-size estimate's se is about this
    assert abs(energy_distance(a, b) - exact) < 5 * se
    assert abs(np.mean(reps) - exact) < 5 * se  # unbiased: small samples agree on average


def test_energy_distance_same_law_is_zero_on_average_and_estimator_is_the_u_statistic():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(40, 3))
    # identical samples: 2 S / n^2 - 2 S / (n (n - 1)) with S the sum of all distances
    s = np.sum(np.linalg.norm(a[:, None] - a[None], axis=-1))
    n = len(a)
    np.testing.assert_allclose(energy_distance(a, a), 2 * s / n**2 - 2 * s / (n * (n - 1)))
    reps = [energy_distance(rng.normal(size=(30, 2)), rng.normal(size=(50, 2))) for _ in range(200)]
    assert abs(np.mean(reps)) < 4 * np.std(reps) / np.sqrt(len(reps))
    b = rng.normal(size=(25, 3))
    np.testing.assert_allclose(energy_distance(a, b), energy_distance(b, a), rtol=1e-12)
    np.testing.assert_allclose(energy_distance(a + 3.0, b + 3.0), energy_distance(a, b), rtol=1e-9)


def test_energy_distance_errors():
    with pytest.raises(ValueError, match="a: expected at least two points"):
        energy_distance(np.zeros((1, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="b: expected points of dimension 2"):
        energy_distance(np.zeros((3, 2)), np.zeros((3, 3)))


# ----------------------------------------------------------------------------- images
def test_psnr_of_a_known_error():
    # MSE 0.04 on a peak-to-peak range of 2: 10 log10(4 / 0.04) = 20 dB
    assert psnr(np.full(64, 0.2), np.zeros(64)) == pytest.approx(20.0, abs=1e-12)
    # range 1, MSE 0.01: 20 dB; halving the error adds 20 log10(2) dB
    assert psnr(np.full(4, 0.1), np.zeros(4), data_range=1.0) == pytest.approx(20.0, abs=1e-12)
    gain = psnr(np.full(4, 0.05), np.zeros(4)) - psnr(np.full(4, 0.1), np.zeros(4))
    assert gain == pytest.approx(20 * np.log10(2), abs=1e-12)
    assert psnr(np.ones(3), np.ones(3)) == float("inf")
    with pytest.raises(ValueError, match="estimate"):
        psnr(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="data_range"):
        psnr(np.zeros(3), np.zeros(3), data_range=0.0)


def test_masks():
    m = block_mask().reshape(8, 8)
    assert (~m).sum() == 16 and not m[2:6, 2:6].any() and m[:2].all()
    assert (~block_mask(0, 0, 2, (4, 4))).sum() == 4
    r = random_mask(0.25, seed=3)
    assert r.shape == (64,) and (~r).sum() == 16
    np.testing.assert_array_equal(r, random_mask(0.25, seed=3))
    assert not np.array_equal(r, random_mask(0.25, seed=4))
    with pytest.raises(ValueError, match="fraction"):
        random_mask(1.0, seed=0)


# ----------------------------------------------------------------------------- hierarchical
class _AffineDecoder:
    """Stands in for a flow: the problem only calls ``decode``."""

    @staticmethod
    def decode(z):
        return 2.0 * z + 1.0


def test_latent_mixture_problem_density_and_simulation():
    flow = _AffineDecoder()
    problem = LatentMixtureProblem()
    w = jnp.array([0.5, 0.3, 0.2])
    comp, z, x, y = problem.simulate(flow, 7, w, jax.random.key(0))
    assert comp.shape == (7,) and z.shape == x.shape == y.shape == (7, 2)
    np.testing.assert_allclose(x, flow.decode(z))
    tr = handlers.trace(handlers.substitute(problem.model, {"w": w, "z": z})).get_trace(flow, 7, y)
    assert tr["y"]["is_observed"] and tr["x"]["type"] == "deterministic"
    # the latent site's density is the mixture sum_k w_k N(mu_k, spread^2 I)
    ref = GaussianMixture.from_arrays(
        w, np.asarray(problem.means), np.tile(problem.spread**2 * np.eye(2), (3, 1, 1))
    )
    np.testing.assert_allclose(tr["z"]["fn"].log_prob(z), ref.log_prob(np.asarray(z)), rtol=1e-10)
    np.testing.assert_allclose(
        tr["y"]["fn"].log_prob(y), stats.norm.logpdf(y, x, problem.noise).sum(-1), rtol=1e-10
    )
