r"""Inflation schedules: the data's eigenbasis and the noise/scale functions of time.

Per eigen-direction ``i`` of the data covariance $\Sigma = W \operatorname{diag}(\lambda)
W^\top$ (descending), the noise variance is $\gamma_i(t) = \gamma_{0,i}\, e^{r_i t}$ with
rate $r_i = \rho(1 + g_i)$, and the scaled state is $v = s(t)\, w$ (de Albuquerque &
Pearson, "Inflationary Flows", NeurIPS 2024, section 3 and appendix B).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import as_float_array, check_finite, check_positive

__all__ = ["InflationSchedule", "participation_ratio"]


def participation_ratio(eigenvalues_or_covariance) -> jax.Array:
    r"""Participation ratio $(\sum_i \lambda_i)^2 / \sum_i \lambda_i^2$.

    A soft count of the dimensions the data occupy (1 for rank one, ``D`` for isotropic).

    Args:
        eigenvalues_or_covariance: eigenvalues ``(..., D)`` or a covariance ``(..., D, D)``
            (read as one when the last two axes are equal).

    Returns:
        The participation ratio, with the leading batch shape.

    Raises:
        ValueError: if the input is not floating point.

    Examples:
        >>> import jax.numpy as jnp
        >>> float(participation_ratio(jnp.ones(4)))
        4.0
    """
    a = as_float_array(eigenvalues_or_covariance, "eigenvalues_or_covariance", min_ndim=1)
    if a.ndim >= 2 and a.shape[-1] == a.shape[-2]:  # tr(S)^2 / tr(S S)
        return jnp.trace(a, axis1=-2, axis2=-1) ** 2 / jnp.sum(a * a.mT, axis=(-2, -1))
    return jnp.sum(a, -1) ** 2 / jnp.sum(a**2, -1)


def _g_vector(dim: int, keep: int | None, inflation_gap, g) -> np.ndarray:
    if g is not None:
        g = np.asarray(g, dtype=np.float64)
        if g.shape != (dim,):
            raise ValueError(f"g: expected a vector of length {dim}; got shape {g.shape}")
        if not np.all(np.isfinite(g)) or np.any(1 + g <= 0):
            raise ValueError("g: expected finite entries with 1 + g > 0 (positive rates)")
        return g
    if keep is None:
        if inflation_gap is not None:
            raise ValueError(
                "inflation_gap: only meaningful with keep=k (PR-reducing); got keep=None"
            )
        return np.zeros(dim)
    g = np.ones(dim)
    if inflation_gap is None:  # the authors' "orig" choice, IG = D / (D - k)
        g[keep:] = -keep / (dim - keep)
    else:
        ig = check_positive(inflation_gap, "inflation_gap")
        if ig >= 2:
            raise ValueError(
                f"inflation_gap: expected 0 < IG < 2 (squeezed rate rho*(2 - IG) must stay "
                f"positive); got {inflation_gap!r}"
            )
        g[keep:] = 1.0 - ig  # IG = g* - g_i with g* = 1
    return g


class InflationSchedule(eqx.Module):
    r"""Noise and scale schedule of an inflationary flow, in the data's eigenbasis.

    Build one with `from_data` or `from_moments`. The default is the authors' schedule:
    isotropic starting noise $\gamma_0$, one scale $s(t) = A_0/\sqrt{\lambda_1 + \gamma_*(t)}$.
    ``proportional=True`` (PR-preserving) is the paper's variant $\gamma_{0,i} = \gamma_0
    \lambda_i/\lambda_1$, $s_i(t) = A_0/\sqrt{\lambda_i + \gamma_i(t)}$.

    Attributes:
        mean: data mean ``(D,)``.
        eigenvectors: orthogonal ``(D, D)``, eigenvectors as columns (descending order).
        eigenvalues: floored eigenvalues ``(D,)``, descending.
        g: inflation exponents ``(D,)``; rates are ``rho * (1 + g)``.
        gamma0: starting noise variance.
        rho: base rate.
        A0: latent scale.
        t_end: end time ``T`` of the inflation.
        keep: number of kept directions ``k`` (``D`` for PR-preserving).
        proportional: whether the paper's proportional variant is used.
    """

    mean: jax.Array
    eigenvectors: jax.Array
    eigenvalues: jax.Array
    g: jax.Array
    gamma0: float = eqx.field(static=True)
    rho: float = eqx.field(static=True)
    A0: float = eqx.field(static=True)
    t_end: float = eqx.field(static=True)
    keep: int = eqx.field(static=True)
    proportional: bool = eqx.field(static=True)

    @classmethod
    def from_data(
        cls,
        x,
        keep: int | None = None,
        inflation_gap: float | None = None,
        rho: float = 1.0,
        gamma0: float = 5e-4,
        t_end: float | None = None,
        *,
        g=None,
        A0: float = 1.0,
        end_ratio: float = 1e4,
        eig_floor: float = 1e-6,
        proportional: bool = False,
    ) -> InflationSchedule:
        """Schedule from samples ``x`` of shape ``(N, D)`` (their mean and covariance).

        Args:
            x: data, floating point, ``N >= 2`` finite rows.
            keep: ``None`` for PR-preserving; ``k`` in ``1..D-1`` to keep the top ``k``
                principal directions and squeeze the rest (PR-reducing).
            inflation_gap: PR-reducing only. ``None``: the authors' "orig" exponents
                ``g_i = -k/(D-k)``; ``IG`` in ``(0, 2)``: ``g_i = 1 - IG`` when squeezed.
            rho: base rate, > 0.
            gamma0: starting noise variance, > 0.
            t_end: end time; ``None``: when the fastest noise variance reaches
                ``end_ratio`` times the top eigenvalue.
            g: explicit exponents ``(D,)`` (``keep`` still counts the kept directions).
            A0: latent scale, > 0.
            end_ratio: see ``t_end``.
            eig_floor: eigenvalues are floored at ``eig_floor * lambda_1``.
            proportional: the paper's proportional PR-preserving variant.

        Returns:
            The schedule.

        Raises:
            ValueError: for non-float, non-finite or too few samples, or a bad argument.
        """
        options = {k: v for k, v in locals().items() if k not in ("cls", "x")}
        x = as_float_array(x, "x")
        if x.ndim != 2:
            raise ValueError(f"x: expected a 2-D array (N, D); got shape {tuple(x.shape)}")
        check_finite(x, "x")
        if x.shape[0] < 2:
            raise ValueError(f"x: expected at least 2 samples for a covariance; got {x.shape[0]}")
        xn = np.asarray(x, dtype=np.float64)
        mean, cov = xn.mean(0), np.atleast_2d(np.cov(xn, rowvar=False))
        return cls.from_moments(mean.astype(x.dtype), cov.astype(x.dtype), **options)

    @classmethod
    def from_moments(
        cls,
        mean,
        covariance,
        keep: int | None = None,
        inflation_gap: float | None = None,
        rho: float = 1.0,
        gamma0: float = 5e-4,
        t_end: float | None = None,
        *,
        g=None,
        A0: float = 1.0,
        end_ratio: float = 1e4,
        eig_floor: float = 1e-6,
        proportional: bool = False,
    ) -> InflationSchedule:
        """Schedule from a mean ``(D,)`` and covariance ``(D, D)``.

        Same arguments as `from_data`; e.g. with `GaussianMixtureScore.moments`.
        """
        mean = as_float_array(mean, "mean", min_ndim=1)
        cov = as_float_array(covariance, "covariance")
        if mean.ndim != 1:
            raise ValueError(f"mean: expected shape (D,); got {tuple(mean.shape)}")
        d = mean.shape[0]
        if cov.shape != (d, d):
            raise ValueError(f"covariance: expected shape ({d}, {d}); got {tuple(cov.shape)}")
        check_finite(mean, "mean")
        check_finite(cov, "covariance")
        rho = check_positive(rho, "rho")
        gamma0 = check_positive(gamma0, "gamma0")
        A0 = check_positive(A0, "A0")
        end_ratio = check_positive(end_ratio, "end_ratio")
        eig_floor = check_positive(eig_floor, "eig_floor")
        if keep is not None:
            if isinstance(keep, bool) or not isinstance(keep, int | np.integer) or not 0 < keep < d:
                raise ValueError(
                    f"keep: expected None (PR-preserving) or an integer in 1..{d - 1}; got {keep!r}"
                )
            keep = int(keep)
        if proportional and keep is not None:
            raise ValueError("proportional: only available for PR-preserving schedules (keep=None)")

        c = np.asarray(cov, dtype=np.float64)
        lam, w = np.linalg.eigh(0.5 * (c + c.T))
        lam, w = lam[::-1], w[:, ::-1]  # descending
        if lam[0] <= 0:
            raise ValueError("covariance: expected a non-zero covariance; got all eigenvalues <= 0")
        lam = np.maximum(lam, eig_floor * lam[0])
        # Deterministic signs: the largest-magnitude entry of each column is positive.
        signs = np.sign(w[np.argmax(np.abs(w), axis=0), np.arange(d)])
        w = w * np.where(signs == 0, 1.0, signs)

        gvec = _g_vector(d, keep, inflation_gap, g)
        if t_end is None:
            rate_star = rho * (1 + gvec.max())
            t_end = math.log(end_ratio * lam[0] / gamma0) / rate_star
            if t_end <= 0:
                raise ValueError(
                    "t_end: the automatic end time is not positive (gamma0 already exceeds "
                    "end_ratio * lambda_1); pass t_end or a smaller gamma0"
                )
        else:
            t_end = check_positive(t_end, "t_end")
        arrays = (jnp.asarray(a, mean.dtype) for a in (mean, w, lam, gvec))
        keep = d if keep is None else keep
        return cls(*arrays, gamma0, rho, A0, float(t_end), keep, bool(proportional))

    @property
    def dim(self) -> int:
        """Data dimension ``D``."""
        return self.eigenvalues.shape[-1]

    @property
    def is_reducing(self) -> bool:
        """True for a PR-reducing schedule (``keep < D``)."""
        return self.keep < self.dim

    @property
    def rates(self) -> jax.Array:
        r"""Per-direction rates $r_i = \rho(1+g_i) = \frac{d}{dt}\log\gamma_i$."""
        return self.rho * (1.0 + self.g)

    @property
    def gamma_start(self) -> jax.Array:
        r"""$\gamma_i(0)$: ``gamma0`` everywhere, or ``gamma0 * lam / lam_1`` if proportional."""
        if self.proportional:
            return self.gamma0 * self.eigenvalues / self.eigenvalues[0]
        return jnp.full_like(self.eigenvalues, self.gamma0)

    def to_eigen(self, x: jax.Array) -> jax.Array:
        """Eigen coordinates ``u = W^T (x - mean)`` of data points ``(..., D)``."""
        return (x - self.mean) @ self.eigenvectors

    def from_eigen(self, u: jax.Array) -> jax.Array:
        """Data points ``x = mean + W u`` from eigen coordinates ``(..., D)``."""
        return u @ self.eigenvectors.T + self.mean

    def gamma(self, t) -> jax.Array:
        r"""Noise variances $\gamma_i(t)$, shape ``(D,)``."""
        return self.gamma_start * jnp.exp(self.rates * t)

    def dgamma(self, t) -> jax.Array:
        r"""$\dot\gamma_i(t) = r_i \gamma_i(t)$."""
        return self.rates * self.gamma(t)

    def _scale_variance(self, t) -> tuple[jax.Array, jax.Array]:
        # V_i = lam_ref + gamma_ref(t), the variance the scale divides by, and dV_i/dt.
        if self.proportional:
            gamma = self.gamma(t)
            return self.eigenvalues + gamma, self.rates * gamma
        rate_star = self.rho * (1.0 + jnp.max(self.g))
        gstar = jnp.broadcast_to(self.gamma0 * jnp.exp(rate_star * t), self.eigenvalues.shape)
        return self.eigenvalues[0] + gstar, rate_star * gstar

    def scale(self, t) -> jax.Array:
        r"""Scale $s_i(t)$ (the same for every ``i`` unless proportional), shape ``(D,)``."""
        return self.A0 / jnp.sqrt(self._scale_variance(t)[0])

    def dlog_scale(self, t) -> jax.Array:
        r"""$\dot s_i / s_i = -\tfrac12 \dot V_i / V_i$ with $V_i = s_i^{-2} A_0^2$."""
        var, rate = self._scale_variance(t)
        return -0.5 * rate / var

    def dscale(self, t) -> jax.Array:
        r"""$\dot s_i(t)$."""
        return self.scale(t) * self.dlog_scale(t)

    @property
    def base_variance(self) -> jax.Array:
        r"""Variances of the latent ``z = v(T)/A0``: 1 on kept directions, and the squeezed
        $\epsilon_i = s_i(T)^2(\lambda_i + \gamma_i(T))/A_0^2$ on the others."""
        return jnp.where(jnp.arange(self.dim) < self.keep, 1.0, self.predicted_latent_variance())

    def predicted_latent_variance(self, t=None) -> jax.Array:
        r"""Per-direction variance of the scaled state at ``t`` for Gaussian-like data,
        $s_i(t)^2(\lambda_i + \gamma_i(t))/A_0^2$ (defaults to ``t_end``)."""
        t = self.t_end if t is None else t
        return self.scale(t) ** 2 * (self.eigenvalues + self.gamma(t)) / self.A0**2
