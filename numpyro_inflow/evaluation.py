r"""Reference answers and scores for checking flows and posteriors.

Shared by tests, demo, examples and benchmarks: `GaussianMixture` (closed forms, also of
oracle flows), `energy_distance`, `psnr`, `block_mask`/`random_mask`, `LatentMixtureProblem`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from scipy.spatial.distance import cdist
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from .scores import GaussianMixtureScore

__all__ = [
    "GaussianMixture",
    "LatentMixtureProblem",
    "block_mask",
    "energy_distance",
    "psnr",
    "random_mask",
]


def _gaussian_logpdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """$\\log N(x; \\text{mean}, \\text{cov})$ for ``x`` of shape ``(..., D)``."""
    lp = multivariate_normal(mean, cov).logpdf(np.reshape(x, (-1, mean.shape[-1])))
    return np.reshape(lp, np.shape(x)[:-1])


class GaussianMixture(NamedTuple):
    r"""A Gaussian mixture $\sum_m \pi_m N(m_m, S_m)$: closed forms in float64 NumPy.

    Attributes:
        weights: ``(M,)`` mixture weights, summing to one.
        means: ``(M, D)`` component means.
        covariances: ``(M, D, D)`` component covariances.

    Examples:
        >>> import numpy as np
        >>> gm = GaussianMixture.from_arrays([1.0, 1.0], [[-1.0], [1.0]], np.ones((2, 1, 1)))
        >>> mean, cov = gm.moments()
        >>> float(mean[0]), float(cov[0, 0])
        (0.0, 2.0)
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    @classmethod
    def from_arrays(cls, weights, means, covariances) -> GaussianMixture:
        """Validate, convert to float64 and normalise the weights.

        Raises:
            ValueError: on inconsistent shapes or weights that are negative or sum to 0.
        """
        w = np.asarray(weights, np.float64)
        m = np.asarray(means, np.float64)
        c = np.asarray(covariances, np.float64)
        if w.ndim != 1 or m.shape[:1] != w.shape or m.ndim != 2:
            raise ValueError(
                f"weights, means: expected shapes (M,) and (M, D); got {w.shape} and {m.shape}"
            )
        if c.shape != (*m.shape, m.shape[1]):
            raise ValueError(f"covariances: expected shape {(*m.shape, m.shape[1])}; got {c.shape}")
        if np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights: expected non-negative numbers with a positive sum; got {w}")
        return cls(w / w.sum(), m, 0.5 * (c + np.swapaxes(c, -1, -2)))

    @classmethod
    def of_flow(cls, flow) -> GaussianMixture:
        r"""The exact data-space density of an oracle flow (`GaussianMixtureScore`).

        The flow starts at inflation $\gamma(0) > 0$: component covariances are
        $S_m + W \operatorname{diag}\gamma(0) W^\top$.

        Args:
            flow: an `InflationaryFlow` whose score is a `GaussianMixtureScore`.

        Returns:
            The mixture that ``flow.log_prob`` and ``flow.sample`` approximate.

        Raises:
            TypeError: if the flow's score is not a `GaussianMixtureScore`.

        Examples:
            >>> import jax.numpy as jnp
            >>> import numpyro_inflow as nif
            >>> gm = nif.GaussianMixtureScore(jnp.ones(1), jnp.zeros((1, 2)), jnp.eye(2)[None])
            >>> sch = nif.InflationSchedule.from_moments(*gm.moments())
            >>> exact = GaussianMixture.of_flow(nif.InflationaryFlow(sch, gm))
            >>> bool(exact.covariances[0, 0, 0] > 1.0)
            True
        """
        score = getattr(flow, "score", None)
        if not isinstance(score, GaussianMixtureScore):
            raise TypeError(
                f"flow: expected a flow with a GaussianMixtureScore; got score {type(score).__name__}"
            )
        w = np.asarray(flow.schedule.eigenvectors, np.float64)
        g0 = (w * np.asarray(flow.schedule.gamma_start, np.float64)) @ w.T
        return cls.from_arrays(score.weights, score.means, np.asarray(score.covariances) + g0)

    @property
    def dim(self) -> int:
        """The dimension ``D``."""
        return self.means.shape[-1]

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``(D,)`` and covariance ``(D, D)`` (law of total covariance)."""
        mean = self.weights @ self.means
        d = self.means - mean
        cov = np.einsum("m,mij->ij", self.weights, self.covariances + np.einsum("mi,mj->mij", d, d))
        return mean, cov

    def log_prob(self, x) -> np.ndarray:
        """Log-density at points ``x`` of shape ``(..., D)``; returns shape ``(...)``."""
        pairs = zip(self.means, self.covariances, strict=True)
        terms = np.stack([_gaussian_logpdf(np.asarray(x, np.float64), m, c) for m, c in pairs], -1)
        return logsumexp(terms, axis=-1, b=self.weights)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` exact draws ``(n, D)`` with the NumPy generator ``rng``."""
        comp = rng.choice(len(self.weights), size=n, p=self.weights)
        chol = np.linalg.cholesky(self.covariances)
        eps = rng.standard_normal((n, self.dim))
        return self.means[comp] + np.einsum("nij,nj->ni", chol[comp], eps)

    def condition(self, matrix, noise_std, y) -> GaussianMixture:
        r"""The posterior given $y = A x + n$, $n \sim N(0, \operatorname{diag}\sigma^2)$.

        Each component takes a Kalman step, $K = S A^\top (A S A^\top + R)^{-1}$, and its
        weight is multiplied by the evidence $N(y; A m, A S A^\top + R)$.

        Args:
            matrix: ``(K, D)`` observation matrix $A$.
            noise_std: noise standard deviation $\sigma$, a scalar or ``(K,)``.
            y: ``(K,)`` observation.

        Returns:
            The posterior mixture (same number of components).

        Raises:
            ValueError: on shapes that do not match.

        Examples:
            >>> import numpy as np
            >>> prior = GaussianMixture.from_arrays([1.0], [[0.0]], [[[1.0]]])
            >>> post = prior.condition([[1.0]], 1.0, [2.0])  # conjugate: mean y/2, var 1/2
            >>> float(post.means[0, 0]), float(post.covariances[0, 0, 0])
            (1.0, 0.5)
        """
        a = np.atleast_2d(np.asarray(matrix, np.float64))
        y = np.asarray(y, np.float64)
        if a.shape[1] != self.dim or y.shape != (a.shape[0],):
            raise ValueError(
                f"matrix, y: expected shapes (K, {self.dim}) and (K,); got {a.shape} and {y.shape}"
            )
        r = np.diag(np.broadcast_to(np.asarray(noise_std, np.float64) ** 2, y.shape))
        s = self.covariances
        sy = a @ s @ a.T + r  # (M, K, K)
        gain = np.swapaxes(np.linalg.solve(sy, a @ s), -1, -2)  # (M, D, K)
        means = self.means + np.einsum("mdk,mk->md", gain, y - self.means @ a.T)
        loglik = np.array(
            [_gaussian_logpdf(y, a @ m, c) for m, c in zip(self.means, sy, strict=True)]
        )
        weights = self.weights * np.exp(loglik - loglik[self.weights > 0].max())
        return GaussianMixture.from_arrays(weights, means, s - gain @ a @ s)


def _points(x, name: str) -> np.ndarray:
    a = np.asarray(x, np.float64)
    a = a[:, None] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"{name}: expected at least two points, shape (n, d); got {np.shape(x)}")
    return a


def _distance_sum(p: np.ndarray, q: np.ndarray) -> float:
    """Sum of Euclidean distances over all pairs, in chunks of about 2^22 distances."""
    rows = max(1, 2**22 // len(q))
    return float(sum(cdist(p[i : i + rows], q).sum() for i in range(0, len(p), rows)))


def energy_distance(a, b) -> float:
    r"""Energy distance $2 E\lVert X - Y\rVert - E\lVert X - X'\rVert - E\lVert Y - Y'\rVert$.

    The unbiased U-statistic (Székely & Rizzo 2013) of draws $a_1..a_n$, $b_1..b_m$:

    $$
    \hat E = \frac{2}{nm}\sum_{i,j}\lVert a_i - b_j\rVert
      - \frac{1}{n(n-1)}\sum_{i \ne i'}\lVert a_i - a_{i'}\rVert
      - \frac{1}{m(m-1)}\sum_{j \ne j'}\lVert b_j - b_{j'}\rVert .
    $$

    Zero on average (possibly negative) for two samples of one law, whatever their sizes;
    computed in float64, in chunks.

    Args:
        a: ``(n, d)`` draws (``(n,)`` for ``d = 1``), ``n >= 2``.
        b: ``(m, d)`` draws, ``m >= 2``.

    Returns:
        The estimate, a float.

    Raises:
        ValueError: on fewer than two points or different dimensions.

    Examples:
        >>> round(energy_distance([0.0, 0.0], [1.0, 1.0]), 12)  # 2*1 - 0 - 0
        2.0
    """
    a, b = _points(a, "a"), _points(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"b: expected points of dimension {a.shape[1]}; got {b.shape[1]}")
    n, m = len(a), len(b)
    cross = _distance_sum(a, b) / (n * m)
    return 2 * cross - _distance_sum(a, a) / (n * (n - 1)) - _distance_sum(b, b) / (m * (m - 1))


def psnr(estimate, truth, data_range: float = 2.0) -> float:
    r"""Peak signal-to-noise ratio $10 \log_{10}(\text{range}^2 / \text{MSE})$ in dB.

    Args:
        estimate: an image (any shape).
        truth: the true image, same shape.
        data_range: peak-to-peak range of the pixels (2 for pixels in ``[-1, 1]``).

    Returns:
        The PSNR (``inf`` for a perfect estimate).

    Raises:
        ValueError: on different shapes or a non-positive ``data_range``.

    Examples:
        >>> round(psnr([0.2, 0.2], [0.0, 0.0]), 9)  # MSE 0.04: 10 log10(4 / 0.04)
        20.0
    """
    e, t = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)
    if e.shape != t.shape:
        raise ValueError(f"estimate: expected the shape of truth {t.shape}; got {e.shape}")
    if not data_range > 0:
        raise ValueError(f"data_range: expected a positive number; got {data_range}")
    mse = float(np.mean((e - t) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def block_mask(top: int = 2, left: int = 2, size: int = 4, shape=(8, 8)) -> np.ndarray:
    """Observed pixels of an image with a ``size`` x ``size`` block missing.

    Args:
        top: first missing row.
        left: first missing column.
        size: side of the missing block.
        shape: image shape.

    Returns:
        A flat boolean array (``True``: observed), for `LinearGaussianObservation.mask`.

    Examples:
        >>> int((~block_mask()).sum())
        16
    """
    m = np.ones(shape, bool)
    m[top : top + size, left : left + size] = False
    return m.ravel()


def random_mask(fraction: float, seed: int, size: int = 64) -> np.ndarray:
    """Observed pixels with a random ``fraction`` of the ``size`` pixels missing.

    Args:
        fraction: share of missing pixels, in ``(0, 1)``.
        seed: NumPy seed of the permutation.
        size: number of pixels.

    Returns:
        A flat boolean array (``True``: observed).

    Raises:
        ValueError: if ``fraction`` is not in ``(0, 1)``.

    Examples:
        >>> int((~random_mask(0.5, seed=0)).sum())
        32
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction: expected a number in (0, 1); got {fraction}")
    m = np.ones(size, bool)
    m[np.random.default_rng(seed).permutation(size)[: round(fraction * size)]] = False
    return m


class LatentMixtureProblem(NamedTuple):
    r"""Hierarchical inference through a flow (de Albuquerque & Pearson 2024, sec. 5).

    The model, with $K$ latent component means $\mu_k$::

        w ~ Dirichlet(1)                               (K weights)
        z_i ~ sum_k w_k N(mu_k, spread^2 I),  i = 1..N (assignments summed out)
        x_i = flow.decode(z_i)                         (one batched solve)
        y_i ~ N(x_i, noise^2 I)

    Attributes:
        means: ``(K, D)`` latent component means.
        spread: standard deviation of each latent component.
        noise: observation noise standard deviation.

    Examples:
        >>> len(LatentMixtureProblem().means)  # the paper's three components
        3
    """

    means: tuple = ((-1.2, 0.0), (1.2, 0.0), (0.0, 1.2))
    spread: float = 0.3
    noise: float = 0.1

    def model(self, flow, n_points: int, y=None) -> None:
        """The NumPyro model: sites ``w``, ``z`` (``(N, D)``), ``x`` (deterministic), ``y``."""
        means = jnp.asarray(self.means)
        w = numpyro.sample("w", dist.Dirichlet(jnp.ones(means.shape[0])))
        comp = dist.Normal(means, self.spread).to_event(1)
        with numpyro.plate("points", n_points):
            z = numpyro.sample("z", dist.MixtureSameFamily(dist.Categorical(w), comp))
            x = numpyro.deterministic("x", flow.decode(z))
            numpyro.sample("y", dist.Normal(x, self.noise).to_event(1), obs=y)

    def simulate(self, flow, n_points: int, weights, key: jax.Array) -> tuple:
        """True assignments, latents, decoded points and observations ``(comp, z, x, y)``."""
        means = jnp.asarray(self.means)
        key_c, key_z, key_y = jax.random.split(key, 3)
        comp = jax.random.choice(key_c, means.shape[0], (n_points,), p=jnp.asarray(weights))
        z = means[comp] + self.spread * jax.random.normal(key_z, (n_points, means.shape[1]))
        x = flow.decode(z)
        return comp, z, x, x + self.noise * jax.random.normal(key_y, x.shape)
