r"""Scores (denoisers) of the noised data distribution, in eigen coordinates.

A score object gives the posterior mean $D(w, t) = E[u_0 \mid w_t = w]$ of the clean point
given unscaled eigen coordinates ``w`` at time ``t`` (Tweedie: $\nabla \log p_t(w) =
(D(w, t) - w)/\gamma(t)$). Here: the exact oracles `GaussianMixtureScore` and `EmpiricalScore`.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import as_float_array, check_finite, check_positive
from .schedule import InflationSchedule

__all__ = ["AbstractScore", "EmpiricalScore", "GaussianMixtureScore"]


class AbstractScore(eqx.Module):
    """Interface of every score/denoiser used by `InflationaryFlow`."""

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Dimension ``D`` of the points it denoises."""

    @abc.abstractmethod
    def denoise(self, w: jax.Array, t, schedule: InflationSchedule) -> jax.Array:
        """Posterior mean of the clean eigen coordinates given ``w`` ``(D,)`` at time ``t``."""

    def score(self, w: jax.Array, t, schedule: InflationSchedule) -> jax.Array:
        r"""Score $\nabla_w \log p_t(w) = (D(w,t) - w)/\gamma(t)$ (Tweedie)."""
        return (self.denoise(w, t, schedule) - w) / schedule.gamma(t)


class GaussianMixtureScore(AbstractScore):
    r"""Exact denoiser of a Gaussian mixture $\sum_m \pi_m N(m_m, S_m)$ (data space).

    In eigen coordinates the noised marginal has means $a_m = W^\top(m_m - \mu)$ and
    covariances $B_m + \operatorname{diag}\gamma(t)$, $B_m = W^\top S_m W$, so

    $$D(w, t) = \sum_m r_m(w)\,[a_m + B_m (B_m + G)^{-1}(w - a_m)],$$

    with responsibilities $r_m$: an exact flow.

    Args:
        weights: mixture weights ``(M,)``, non-negative, normalised here.
        means: component means ``(M, D)``.
        covariances: component covariances ``(M, D, D)``, symmetric positive definite.

    Raises:
        ValueError: on inconsistent shapes, negative weights or non-SPD covariances.

    Examples:
        >>> import jax.numpy as jnp
        >>> gm = GaussianMixtureScore(jnp.array([1.0]), jnp.zeros((1, 2)), jnp.eye(2)[None])
        >>> gm.dim
        2
    """

    weights: jax.Array
    means: jax.Array
    covariances: jax.Array

    def __init__(self, weights, means, covariances):
        w = as_float_array(weights, "weights", min_ndim=1)
        m = as_float_array(means, "means")
        c = as_float_array(covariances, "covariances")
        if w.ndim != 1:
            raise ValueError(f"weights: expected shape (M,); got {tuple(w.shape)}")
        n_comp = w.shape[0]
        if m.ndim != 2 or m.shape[0] != n_comp:
            raise ValueError(f"means: expected shape ({n_comp}, D); got {tuple(m.shape)}")
        d = m.shape[1]
        if c.shape != (n_comp, d, d):
            raise ValueError(
                f"covariances: expected shape ({n_comp}, {d}, {d}); got {tuple(c.shape)}"
            )
        for name, a in (("weights", w), ("means", m), ("covariances", c)):
            check_finite(a, name)
        wn = np.asarray(w)
        if np.any(wn < 0) or wn.sum() <= 0:
            raise ValueError("weights: expected non-negative weights with a positive sum")
        cn = np.asarray(c, dtype=np.float64)
        if not np.allclose(cn, np.swapaxes(cn, -1, -2), rtol=1e-5, atol=1e-8):
            raise ValueError("covariances: expected symmetric matrices")
        if np.any(np.linalg.eigvalsh(cn) <= 0):
            raise ValueError("covariances: expected positive-definite matrices")
        self.weights = w / jnp.sum(w)
        self.means = m
        self.covariances = 0.5 * (c + jnp.swapaxes(c, -1, -2))

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    def moments(self) -> tuple[jax.Array, jax.Array]:
        """Exact mean ``(D,)`` and covariance ``(D, D)`` of the mixture."""
        mu = self.weights @ self.means
        dm = self.means - mu
        cov = jnp.einsum("m,mij->ij", self.weights, self.covariances) + jnp.einsum(
            "m,mi,mj->ij", self.weights, dm, dm
        )
        return mu, cov

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` exact draws ``(n, D)`` from the (noise-free) mixture."""
        k1, k2 = jax.random.split(key)
        comp = jax.random.choice(k1, self.weights.shape[0], (n,), p=self.weights)
        chol = jnp.linalg.cholesky(self.covariances)
        eps = jax.random.normal(k2, (n, self.dim), self.means.dtype)
        return self.means[comp] + jnp.einsum("nij,nj->ni", chol[comp], eps)

    def _noised(self, t, schedule):
        # Component means a_m, covariances B_m and Cholesky factors of B_m + diag(gamma(t)).
        wmat = schedule.eigenvectors
        a = (self.means - schedule.mean) @ wmat
        b = jnp.einsum("ji,mjk,kl->mil", wmat, self.covariances, wmat)
        return a, b, jnp.linalg.cholesky(b + jnp.diag(schedule.gamma(t)))

    def _log_joint(self, w, a, chol):
        # log(pi_m N(w; a_m, L_m L_m^T)) for every component m.
        def one(am, cm):
            sol = jax.scipy.linalg.solve_triangular(cm, w - am, lower=True)
            half_logdet = jnp.sum(jnp.log(jnp.diagonal(cm)))
            return -0.5 * jnp.sum(sol**2) - half_logdet - 0.5 * w.shape[-1] * jnp.log(2 * jnp.pi)

        return jax.vmap(one)(a, chol) + jnp.log(self.weights)

    def log_prob_t(self, w: jax.Array, t, schedule: InflationSchedule) -> jax.Array:
        r"""Exact $\log p_t(w)$ of unscaled eigen coordinates ``w`` ``(..., D)``.

        At ``t = 0`` this is the flow's density (the mixture convolved with
        $N(0, \operatorname{diag}\gamma(0))$), also in data space with ``w = W^T(x - mu)``.
        """
        a, _, chol = self._noised(t, schedule)
        one = lambda wi: jax.nn.logsumexp(self._log_joint(wi, a, chol))  # noqa: E731
        return jax.vmap(one)(w.reshape(-1, w.shape[-1])).reshape(w.shape[:-1])

    def denoise(self, w, t, schedule):
        a, b, chol = self._noised(t, schedule)

        def post_mean(am, bm, cm):
            return am + bm @ jax.scipy.linalg.cho_solve((cm, True), w - am)

        return jax.nn.softmax(self._log_joint(w, a, chol)) @ jax.vmap(post_mean)(a, b, chol)


class EmpiricalScore(AbstractScore):
    r"""Kernel denoiser of a finite data set, $p_0 = \frac1N\sum_j \delta(x_j)$.

    A softmax-weighted average of the projected data $a_j$, streamed in chunks with a
    running log-sum-exp (memory ``O(chunk_size * D)``).

    Args:
        x: data ``(N, D)``.
        chunk_size: data points processed at once.

    Raises:
        ValueError: for non-float, non-finite or empty data.
    """

    data: jax.Array
    chunk_size: int = eqx.field(static=True)
    n_data: int = eqx.field(static=True)

    def __init__(self, x, chunk_size: int = 4096):
        x = as_float_array(x, "x")
        if x.ndim != 2 or x.shape[0] < 1:
            raise ValueError(f"x: expected a non-empty 2-D array (N, D); got shape {x.shape}")
        check_finite(x, "x")
        chunk_size = int(check_positive(chunk_size, "chunk_size"))
        n = x.shape[0]
        chunk = min(chunk_size, n)
        pad = (-n) % chunk
        # Pad to whole chunks; padded rows are masked out of the softmax.
        self.data = jnp.concatenate([x, jnp.zeros((pad, x.shape[1]), x.dtype)])
        self.chunk_size = chunk
        self.n_data = n

    @property
    def dim(self) -> int:
        return self.data.shape[-1]

    def denoise(self, w, t, schedule):
        gamma = schedule.gamma(t)
        chunks = self.data.reshape(-1, self.chunk_size, self.dim)
        valid = (jnp.arange(self.data.shape[0]) < self.n_data).reshape(-1, self.chunk_size)

        def step(carry, inp):
            m_run, s_run, acc = carry
            xc, vc = inp
            a = schedule.to_eigen(xc)
            logits = -0.5 * jnp.sum((w - a) ** 2 / gamma, axis=-1)
            logits = jnp.where(vc, logits, -jnp.inf)
            m_new = jnp.maximum(m_run, jnp.max(logits))
            scale_old = jnp.exp(m_run - m_new)
            p = jnp.exp(logits - m_new)
            return (m_new, s_run * scale_old + jnp.sum(p), acc * scale_old + p @ a), None

        init = (jnp.array(-jnp.inf, w.dtype), jnp.zeros((), w.dtype), jnp.zeros_like(w))
        (_, s, acc), _ = jax.lax.scan(step, init, (chunks, valid))
        return acc / s
