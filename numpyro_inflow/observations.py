r"""Observation models for inverse problems: a forward operator plus Gaussian noise.

Each model describes $y = F(x) + n$, $n \sim N(0, \operatorname{diag}\sigma^2)$,
for data points ``x`` of dimension ``D`` (images are flattened row-major). Use one
inside any NumPyro model::

    obs = nif.LinearGaussianObservation.mask(mask, noise_std=0.1)
    def model(y=None):
        x = numpyro.sample("x", nif.InflationaryFlowDistribution(flow))
        obs("y", x, obs=y)

or let `inverse_problem` build that model (with `LatentReparam`
and all checks) for you. Linear operators are stored as explicit matrices
``(M, D)``, which keeps them exact, differentiable and cheap for the dimensions a
pfODE prior handles; they also give closed-form Gaussian posteriors
(`LinearGaussianObservation.gaussian_posterior`) for checking samplers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from ._checks import as_float_array, check_event_dim, check_positive, is_concrete
from .numpyro import InflationaryFlowDistribution, LatentReparam, reject_failed_solves

__all__ = [
    "LinearGaussianObservation",
    "NonlinearGaussianObservation",
    "inverse_problem",
]


def check_finite(x, name: str) -> None:
    # NumPy on concrete values: under a trace (NUTS runs the model inside jit), jnp ops on
    # a concrete array would return tracers that cannot be converted to bool.
    if is_concrete(x):
        bad = int(np.sum(~np.isfinite(np.asarray(x))))
        if bad:
            raise ValueError(f"{name}: expected finite values; got {bad} NaN/inf entries")


def _noise_vector(noise_std, m: int) -> jax.Array:
    s = as_float_array(noise_std, "noise_std")
    if s.ndim > 1 or (s.ndim == 1 and s.shape[0] not in (1, m)):
        raise ValueError(
            f"noise_std: expected a scalar or a vector of length {m}; got shape {s.shape}"
        )
    check_finite(s, "noise_std")
    if is_concrete(s) and np.any(np.asarray(s) <= 0):
        raise ValueError(f"noise_std: expected positive values; got {np.asarray(s)}")
    return jnp.broadcast_to(s, (m,))


class _GaussianObservation(eqx.Module):
    """Shared behaviour: ``y = forward(x) + N(0, diag(noise_std**2))``."""

    noise_std: eqx.AbstractVar[jax.Array]

    @property
    def input_dim(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def output_dim(self) -> int:
        """Number of observed values ``M``."""
        return self.noise_std.shape[-1]

    def _forward(self, x):  # pragma: no cover - overridden
        raise NotImplementedError

    def forward(self, x) -> jax.Array:
        """Noise-free observation ``F(x)`` of points ``(..., D)``, shape ``(..., M)``.

        Raises:
            ValueError: if the last axis of ``x`` is not ``D``.
        """
        x = as_float_array(x, "x", min_ndim=1)
        if x.shape[-1] != self.input_dim:
            raise ValueError(
                f"x: expected points of dimension {self.input_dim} for this observation "
                f"operator (shape (..., {self.input_dim})); got shape {tuple(x.shape)}"
            )
        return self._forward(x)

    def distribution(self, x) -> dist.Distribution:
        """The likelihood ``N(F(x), diag(noise_std**2))`` as a NumPyro distribution (event ``(M,)``)."""
        return dist.Normal(self.forward(x), self.noise_std).to_event(1)

    def check_flow(self, flow):
        """Return ``flow`` unchanged, raising unless its dimension equals the operator's input.

        Raises:
            ValueError: "flow: expected a flow of dimension D ...; got dimension D'".
        """
        dim = getattr(flow, "dim", None)
        if dim != self.input_dim:
            raise ValueError(
                f"flow: expected a flow of dimension {self.input_dim} to match the observation "
                f"operator's input; got dimension {dim}"
            )
        return flow

    def check_observation(self, y, name: str = "y") -> jax.Array:
        """Validate observations ``(..., M)``: floating point, right length, finite values."""
        y = as_float_array(y, name, min_ndim=1)
        check_event_dim(y, name, self.output_dim)
        check_finite(y, name)
        return y

    def simulate(self, key: jax.Array, x) -> jax.Array:
        """Noisy observations of points ``x`` ``(..., D)`` (a draw from the likelihood)."""
        mean = self.forward(x)
        return mean + self.noise_std * jax.random.normal(key, mean.shape, mean.dtype)

    def log_likelihood(self, x, y) -> jax.Array:
        """$\\log p(y \\mid x)$, shape ``broadcast(x.shape[:-1], y.shape[:-1])``."""
        y = self.check_observation(y)
        return self.distribution(x).log_prob(y)

    def __call__(self, name: str, x, obs=None):
        """The NumPyro observation site ``numpyro.sample(name, self.distribution(x), obs=obs)``.

        Args:
            name: site name.
            x: data points ``(..., D)`` (for example the prior site's value).
            obs: observations ``(..., M)`` or ``None`` (then ``y`` is simulated).

        Returns:
            The site value.

        Raises:
            ValueError: for ``x`` of the wrong dimension or invalid/non-finite ``obs``.
        """
        if obs is not None:
            obs = self.check_observation(obs, "obs")
        return numpyro.sample(name, self.distribution(x), obs=obs)


class LinearGaussianObservation(_GaussianObservation):
    r"""Linear forward operator with Gaussian noise, $y = A x + n$.

    Build one directly from a matrix or with the constructors `mask`
    (inpainting), `blur` (convolution), `random_projection` (compressed
    sensing) and `downsample` (block averaging).

    Args:
        matrix: the operator ``A`` ``(M, D)``.
        noise_std: noise standard deviation, a scalar or ``(M,)``.
        kind: a label used in ``repr`` and messages.

    Raises:
        ValueError: for a non-2-D or non-finite matrix, or non-positive noise.

    Example:
        >>> import jax.numpy as jnp
        >>> obs = LinearGaussianObservation(jnp.array([[1.0, 0.0]]), 0.1)
        >>> obs.forward(jnp.array([2.0, 3.0]))
        Array([2.], dtype=float32)
    """

    matrix: jax.Array
    noise_std: jax.Array
    kind: str = eqx.field(static=True)

    def __init__(self, matrix, noise_std, kind: str = "linear"):
        a = as_float_array(matrix, "matrix")
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f"matrix: expected a non-empty 2-D array (M, D); got shape {a.shape}")
        check_finite(a, "matrix")
        self.matrix = a
        self.noise_std = _noise_vector(noise_std, a.shape[0]).astype(a.dtype)
        self.kind = str(kind)

    @property
    def input_dim(self) -> int:
        """Dimension ``D`` of the points observed."""
        return self.matrix.shape[1]

    def _forward(self, x):
        return x @ self.matrix.T

    def gaussian_posterior(self, prior_mean, prior_cov, y) -> tuple[jax.Array, jax.Array]:
        r"""Closed-form posterior of ``x`` under a Gaussian prior $N(m, S)$.

        $\Sigma' = (S^{-1} + A^\top R^{-1} A)^{-1}$,
        $\mu' = m + S A^\top (A S A^\top + R)^{-1} (y - A m)$, with
        $R = \operatorname{diag}\sigma^2$. Useful to check samplers (a Gaussian
        mixture prior gives a mixture of such posteriors).

        Returns:
            ``(mean (D,), covariance (D, D))``.
        """
        y = self.check_observation(y)
        a, r = self.matrix, jnp.diag(self.noise_std**2)
        s = jnp.asarray(prior_cov)
        gain = jnp.linalg.solve(a @ s @ a.T + r, a @ s).T  # S A^T (A S A^T + R)^{-1}
        mean = prior_mean + gain @ (y - a @ prior_mean)
        cov = s - gain @ a @ s
        return mean, 0.5 * (cov + cov.T)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def mask(cls, mask, noise_std) -> LinearGaussianObservation:
        """Inpainting: observe the entries where ``mask`` is true (any shape, flattened).

        Args:
            mask: boolean array, one entry per data coordinate.
            noise_std: noise standard deviation.

        Raises:
            ValueError: if ``mask`` observes nothing.
        """
        m = np.asarray(mask).reshape(-1)
        if m.dtype != bool:
            raise ValueError(f"mask: expected a boolean array; got dtype {m.dtype}")
        if not m.any():
            raise ValueError("mask: expected at least one observed entry; got an all-False mask")
        return cls(np.eye(m.size, dtype=np.float32)[m], noise_std, kind="mask")

    @classmethod
    def blur(cls, kernel, shape, noise_std) -> LinearGaussianObservation:
        """Convolution with ``kernel`` (zero padding, output the size of the input).

        Args:
            kernel: 1-D or 2-D filter, applied as a true convolution (flipped, as in
                ``jax.scipy.signal.convolve``; irrelevant for symmetric kernels). It is
                not normalised here.
            shape: the signal/image shape, ``(D,)`` or ``(H, W)``, whose size is ``D``.
            noise_std: noise standard deviation.

        Raises:
            ValueError: if ``kernel`` and ``shape`` do not have the same number of axes.
        """
        k = as_float_array(kernel, "kernel", min_ndim=1)
        check_finite(k, "kernel")
        shape = tuple(int(s) for s in np.atleast_1d(shape))
        if k.ndim != len(shape):
            raise ValueError(
                f"kernel: expected {len(shape)} axes to match shape {shape}; got shape {k.shape}"
            )
        d = math.prod(shape)
        basis = jnp.eye(d, dtype=k.dtype).reshape(d, *shape)
        cols = jax.vmap(lambda e: jax.scipy.signal.convolve(e, k, mode="same"))(basis)
        return cls(cols.reshape(d, d).T, noise_std, kind="blur")

    @classmethod
    def random_projection(
        cls, key: jax.Array, num_obs: int, dim: int, noise_std
    ) -> LinearGaussianObservation:
        """Compressed sensing: ``A`` with i.i.d. ``N(0, 1/num_obs)`` entries, shape ``(num_obs, dim)``."""
        m = int(check_positive(num_obs, "num_obs"))
        d = int(check_positive(dim, "dim"))
        a = jax.random.normal(key, (m, d)) / math.sqrt(m)
        return cls(a, noise_std, kind="random_projection")

    @classmethod
    def downsample(cls, shape, factor: int, noise_std) -> LinearGaussianObservation:
        """Block averaging by ``factor`` along every axis of a signal/image of ``shape``.

        Raises:
            ValueError: if ``factor`` does not divide every axis.
        """
        shape = tuple(int(s) for s in np.atleast_1d(shape))
        f = int(check_positive(factor, "factor"))
        if any(s % f for s in shape):
            raise ValueError(f"factor: expected a divisor of every axis of {shape}; got {factor}")
        mats = []
        for s in shape:  # 1-D averaging matrix per axis, combined by Kronecker products
            mats.append(np.kron(np.eye(s // f), np.full((1, f), 1.0 / f)))
        a = mats[0]
        for m in mats[1:]:
            a = np.kron(a, m)
        return cls(a.astype(np.float32), noise_std, kind="downsample")


class NonlinearGaussianObservation(_GaussianObservation):
    r"""A differentiable nonlinear forward map with Gaussian noise, $y = F(x) + n$.

    Args:
        fn: ``F``, mapping one point ``(D,)`` to ``(M,)``; it is vmapped over batches.
        input_dim: ``D``.
        output_dim: ``M``.
        noise_std: noise standard deviation, scalar or ``(M,)``.

    Example (phase-retrieval-like magnitudes, which make posteriors multi-modal):
        >>> import jax.numpy as jnp
        >>> obs = NonlinearGaussianObservation.magnitude(jnp.eye(2), 0.1)
        >>> obs.forward(jnp.array([-2.0, 3.0]))
        Array([2., 3.], dtype=float32)
    """

    fn: Callable
    noise_std: jax.Array
    dim_in: int = eqx.field(static=True)

    def __init__(self, fn: Callable, input_dim: int, output_dim: int, noise_std):
        if not callable(fn):
            raise ValueError(f"fn: expected a callable (D,) -> (M,); got {type(fn).__name__}")
        self.fn = fn
        self.dim_in = int(check_positive(input_dim, "input_dim"))
        self.noise_std = _noise_vector(noise_std, int(check_positive(output_dim, "output_dim")))

    @property
    def input_dim(self) -> int:
        """Dimension ``D`` of the points observed."""
        return self.dim_in

    def _forward(self, x):
        flat = x.reshape(-1, self.dim_in)
        out = jax.vmap(self.fn)(flat)
        return out.reshape(*x.shape[:-1], self.output_dim)

    @classmethod
    def magnitude(cls, matrix, noise_std) -> NonlinearGaussianObservation:
        """Magnitudes of linear measurements, $F(x) = |A x|$ (sign-blind)."""
        a = as_float_array(matrix, "matrix")
        if a.ndim != 2:
            raise ValueError(f"matrix: expected a 2-D array (M, D); got shape {a.shape}")
        check_finite(a, "matrix")
        return cls(_Magnitude(a), a.shape[1], a.shape[0], noise_std)


class _Magnitude(eqx.Module):
    matrix: jax.Array

    def __call__(self, x):
        # sqrt(u^2 + tiny) keeps the gradient finite at u = 0.
        u = self.matrix @ x
        return jnp.sqrt(u**2 + 1e-12)


def inverse_problem(
    flow,
    observation: _GaussianObservation,
    *,
    latent: bool = True,
    reduced: bool = True,
    name: str = "x",
    obs_name: str = "y",
) -> Callable:
    """A NumPyro model ``model(y=None)``: flow prior on ``x``, ``observation`` of ``x``.

    Args:
        flow: an `InflationaryFlow`.
        observation: a `LinearGaussianObservation` or
            `NonlinearGaussianObservation` whose input dimension is ``flow.dim``.
        latent: sample ``x`` through `LatentReparam` (the fast
            path; site ``name + "_latent"``); ``False`` samples ``x`` in data space
            with the flow's density (PR-preserving flows only).
        reduced: passed to `LatentReparam`.
        name: the prior site's name.
        obs_name: the observation site's name.

    Returns:
        The model ``model(y=None, laplace=None)``; call it with ``y`` (finite, shape
        ``(M,)``) to condition, or ``None`` to simulate. With ``laplace`` (a
        `LatentLaplace` from `laplace_approximation`, latent path only) the model
        samples a whitened site ``name + "_white"`` $w$ with latent
        $\\xi = \\text{loc} + L w$ and a ``numpyro.factor`` ``name + "_prior"`` that
        restores the prior $N(0, I)$ on $\\xi$: the same posterior, in coordinates
        where NUTS needs far fewer steps. ``name + "_latent"`` ($\\xi$) and ``name``
        are then deterministic sites. A batched approximation (``loc`` ``(B, n)``,
        from a batch ``y`` ``(B, M)``) samples ``B`` independent problems in one run.
        Pass it as a model argument
        (``mcmc.run(key, y, laplace=approx)``; with ``jit_model_args=True`` new
        problems reuse the compiled sampler).

    Raises:
        ValueError: if the dimensions of ``flow`` and ``observation`` differ, if
            ``latent=False`` with a PR-reducing flow, or (when the model runs) if ``y``
            has the wrong shape or non-finite values.
    """
    observation.check_flow(flow)
    prior = InflationaryFlowDistribution(flow)
    if not latent and prior.is_reducing:
        raise ValueError(
            "latent: expected True for a PR-reducing flow, whose data-space density is "
            "degenerate; got latent=False"
        )

    n_latent = flow.latent_dim if reduced else flow.dim

    def plain(y=None):
        x = numpyro.sample(name, prior)
        return observation(obs_name, x, obs=y)

    base = (
        numpyro.handlers.reparam(plain, config={name: LatentReparam(reduced=reduced)})
        if latent
        else plain
    )

    def model(y=None, laplace=None):
        if laplace is None:
            return base(y)
        if not latent:
            raise ValueError(
                "laplace: expected None with latent=False (it preconditions the latent)"
            )
        loc, scale = jnp.asarray(laplace.loc), jnp.asarray(laplace.scale_tril)
        expected = (*loc.shape[:-1], n_latent)
        if loc.ndim not in (1, 2) or loc.shape != expected or scale.shape != (*expected, n_latent):
            raise ValueError(
                f"laplace: expected loc (n,) or (B, n) and scale_tril (..., n, n) with "
                f"n = {n_latent}; got {loc.shape} and {scale.shape}"
            )
        white = dist.Normal(jnp.zeros((), loc.dtype), 1.0).expand(loc.shape)
        w = numpyro.sample(name + "_white", white.to_event(loc.ndim))
        xi = loc + jnp.einsum("...ij,...j->...i", scale, w)
        xi = numpyro.deterministic(name + "_latent", xi)
        # prior N(0, I) on xi; the affine map's Jacobian is constant, N(0, I) on w is removed
        numpyro.factor(name + "_prior", 0.5 * (jnp.sum(w**2) - jnp.sum(xi**2)))
        x = prior.flow.decode_standardized(xi, reduced=reduced)
        x = numpyro.deterministic(name, reject_failed_solves(name, x))
        return observation(obs_name, x, obs=y)

    return model
