r"""Observation models for inverse problems: a forward operator plus Gaussian noise.

Each model describes $y = F(x) + n$, $n \sim N(0, \operatorname{diag}\sigma^2)$, for
points ``x`` of dimension ``D`` (images flattened row-major). Use one in a NumPyro model::

    obs = nif.LinearGaussianObservation.mask(mask, noise_std=0.1)
    def model(y=None):
        x = numpyro.sample("x", nif.InflationaryFlowDistribution(flow))
        obs("y", x, obs=y)

or let `inverse_problem` build it. Linear operators are explicit matrices ``(M, D)``.
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from ._checks import as_float_array, check_finite, check_positive, event_input, is_concrete
from .flow import InflationaryFlow
from .numpyro import InflationaryFlowDistribution, LatentReparam, reject_failed_solves

__all__ = ["LinearGaussianObservation", "NonlinearGaussianObservation", "inverse_problem"]


def _matrix(matrix) -> jax.Array:
    a = as_float_array(matrix, "matrix")
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"matrix: expected a non-empty 2-D array (M, D); got shape {a.shape}")
    check_finite(a, "matrix")
    return a


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
    input_dim: eqx.AbstractVar[int]

    @property
    def output_dim(self) -> int:
        """Number of observed values ``M``."""
        return self.noise_std.shape[-1]

    @abc.abstractmethod
    def _forward(self, x): ...

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
        """The NumPyro likelihood ``N(F(x), diag(noise_std**2))``, event shape ``(M,)``."""
        return dist.Normal(self.forward(x), self.noise_std).to_event(1)

    def check_flow(self, flow):
        """Return ``flow`` unchanged, raising unless it is an `InflationaryFlow` of dimension ``D``.

        Raises:
            ValueError: for a non-flow or a flow of another dimension.
        """
        if not isinstance(flow, InflationaryFlow):
            raise ValueError(f"flow: expected an InflationaryFlow; got {type(flow).__name__}")
        if flow.dim != self.input_dim:
            raise ValueError(f"flow: expected a flow of dimension {self.input_dim}; got {flow.dim}")
        return flow

    def check_observation(self, y, name: str = "y") -> jax.Array:
        """Validate observations ``(..., M)``: floating point, right length, finite values."""
        return event_input(y, name, self.output_dim)

    def simulate(self, key: jax.Array, x) -> jax.Array:
        """Noisy observations of points ``x`` ``(..., D)`` (a draw from the likelihood)."""
        mean = self.forward(x)
        return mean + self.noise_std * jax.random.normal(key, mean.shape, mean.dtype)

    def log_likelihood(self, x, y) -> jax.Array:
        """$\\log p(y \\mid x)$, shape ``broadcast(x.shape[:-1], y.shape[:-1])``."""
        return self.distribution(x).log_prob(self.check_observation(y))

    def __call__(self, name: str, x, obs=None):
        """The NumPyro observation site ``numpyro.sample(name, self.distribution(x), obs=obs)``.

        Args:
            name: site name.
            x: data points ``(..., D)`` (for example the prior site's value).
            obs: observations ``(..., M)``, or ``None`` to simulate them.

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

    Build one from a matrix or with `mask` (inpainting), `blur` (convolution),
    `random_projection` (compressed sensing) or `downsample` (block averaging).

    Args:
        matrix: the operator ``A`` ``(M, D)``.
        noise_std: noise standard deviation, a scalar or ``(M,)``.
        kind: a label used in ``repr`` and messages.

    Raises:
        ValueError: for a non-2-D or non-finite matrix, or non-positive noise.

    Examples:
        >>> import jax.numpy as jnp
        >>> obs = LinearGaussianObservation(jnp.array([[1.0, 0.0]]), 0.1)
        >>> obs.forward(jnp.array([2.0, 3.0]))
        Array([2.], dtype=float32)
    """

    matrix: jax.Array
    noise_std: jax.Array
    kind: str = eqx.field(static=True)

    def __init__(self, matrix, noise_std, kind: str = "linear"):
        self.matrix = _matrix(matrix)
        self.noise_std = _noise_vector(noise_std, self.matrix.shape[0]).astype(self.matrix.dtype)
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
        $\mu' = m + S A^\top (A S A^\top + R)^{-1} (y - A m)$, $R = \operatorname{diag}\sigma^2$:
        an oracle for samplers (a Gaussian mixture prior gives a mixture of these).

        Returns:
            ``(mean (D,), covariance (D, D))``.
        """
        y = self.check_observation(y)
        a, s = self.matrix, jnp.asarray(prior_cov)
        gain = jnp.linalg.solve(a @ s @ a.T + jnp.diag(self.noise_std**2), a @ s).T
        mean = prior_mean + gain @ (y - a @ prior_mean)
        cov = s - gain @ a @ s
        return mean, 0.5 * (cov + cov.T)

    @classmethod
    def mask(cls, mask, noise_std) -> LinearGaussianObservation:
        """Inpainting: observe the entries where ``mask`` is true.

        Args:
            mask: boolean array (any shape, flattened), one entry per data coordinate.
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
            kernel: 1-D or 2-D filter (not normalised), applied as a true convolution
                (flipped, as in ``jax.scipy.signal.convolve``).
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
        conv = functools.partial(jax.scipy.signal.convolve, in2=k, mode="same")
        a = jax.jacfwd(conv)(jnp.zeros(shape, k.dtype))  # (*shape, *shape): A[i, j] = conv(e_j)_i
        return cls(a.reshape(2 * (math.prod(shape),)), noise_std, kind="blur")

    @classmethod
    def random_projection(
        cls, key: jax.Array, num_obs: int, dim: int, noise_std
    ) -> LinearGaussianObservation:
        """Compressed sensing: ``A`` ``(num_obs, dim)`` with i.i.d. ``N(0, 1/num_obs)`` entries."""
        m, d = int(check_positive(num_obs, "num_obs")), int(check_positive(dim, "dim"))
        return cls(jax.random.normal(key, (m, d)) / math.sqrt(m), noise_std, "random_projection")

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
        # 1-D averaging matrix per axis, combined by Kronecker products
        mats = [np.kron(np.eye(s // f), np.full((1, f), 1.0 / f)) for s in shape]
        return cls(functools.reduce(np.kron, mats).astype(np.float32), noise_std, "downsample")


class NonlinearGaussianObservation(_GaussianObservation):
    r"""A differentiable nonlinear forward map with Gaussian noise, $y = F(x) + n$.

    Args:
        fn: ``F``, mapping one point ``(D,)`` to ``(M,)``; it is vmapped over batches.
        input_dim: ``D``.
        output_dim: ``M``.
        noise_std: noise standard deviation, scalar or ``(M,)``.

    Examples:
        >>> import jax.numpy as jnp
        >>> obs = NonlinearGaussianObservation.magnitude(jnp.eye(2), 0.1)
        >>> obs.forward(jnp.array([-2.0, 3.0]))
        Array([2., 3.], dtype=float32)
    """

    fn: Callable
    noise_std: jax.Array
    input_dim: int = eqx.field(static=True)

    def __init__(self, fn: Callable, input_dim: int, output_dim: int, noise_std):
        if not callable(fn):
            raise ValueError(f"fn: expected a callable (D,) -> (M,); got {type(fn).__name__}")
        self.fn = fn
        self.input_dim = int(check_positive(input_dim, "input_dim"))
        self.noise_std = _noise_vector(noise_std, int(check_positive(output_dim, "output_dim")))

    def _forward(self, x):
        out = jax.vmap(self.fn)(x.reshape(-1, self.input_dim))
        return out.reshape(*x.shape[:-1], self.output_dim)

    @classmethod
    def magnitude(cls, matrix, noise_std) -> NonlinearGaussianObservation:
        """Magnitudes $F(x) = |A x|$ of linear measurements (sign-blind: multi-modal posteriors)."""
        a = _matrix(matrix)
        return cls(jax.tree_util.Partial(_magnitude, a), *a.shape[::-1], noise_std)


def _magnitude(matrix, x):
    return jnp.sqrt((matrix @ x) ** 2 + 1e-12)  # sqrt(u^2 + tiny): finite gradient at u = 0


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
        observation: a `LinearGaussianObservation` or `NonlinearGaussianObservation`
            whose input dimension is ``flow.dim``.
        latent: sample ``x`` through `LatentReparam` (site ``name + "_latent"``);
            ``False`` samples ``x`` with the flow's density (PR-preserving flows only).
        reduced: passed to `LatentReparam`.
        name: the prior site's name.
        obs_name: the observation site's name.

    Returns:
        The model ``model(y=None, laplace=None)``; ``y`` ``(M,)`` conditions, ``None``
        simulates. With ``laplace`` (a `LatentLaplace`, latent path only) it samples a
        whitened site ``name + "_white"`` $w$, with deterministic ``name + "_latent"``
        $\\xi = \\text{loc} + L w$ and a factor ``name + "_prior"`` restoring its prior: the
        same posterior, where NUTS needs far fewer steps. A batch ``loc`` ``(B, n)`` samples
        ``B`` problems in one run; with ``jit_model_args=True`` new problems reuse the sampler.

    Raises:
        ValueError: if the dimensions of ``flow`` and ``observation`` differ, for
            ``latent=False`` with a PR-reducing flow, or (when run) for an invalid ``y``.
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

    if latent:
        plain = numpyro.handlers.reparam(plain, config={name: LatentReparam(reduced=reduced)})

    def model(y=None, laplace=None):
        if laplace is None:
            return plain(y)
        if not latent:
            raise ValueError("laplace: expected None with latent=False (it preconditions latents)")
        loc, scale = jnp.asarray(laplace.loc), jnp.asarray(laplace.scale_tril)
        expected = (*loc.shape[:-1], n_latent)
        if loc.ndim not in (1, 2) or loc.shape != expected or scale.shape != (*expected, n_latent):
            raise ValueError(
                f"laplace: expected loc (n,) or (B, n) and scale_tril (..., n, n) with "
                f"n = {n_latent}; got {loc.shape} and {scale.shape}"
            )
        w = numpyro.sample(
            name + "_white", dist.Normal(jnp.zeros_like(loc), 1.0).to_event(loc.ndim)
        )
        xi = numpyro.deterministic(name + "_latent", loc + jnp.einsum("...ij,...j->...i", scale, w))
        # prior N(0, I) on xi; the affine map's Jacobian is constant, N(0, I) on w is removed
        numpyro.factor(name + "_prior", 0.5 * (jnp.sum(w**2) - jnp.sum(xi**2)))
        x = prior.flow.decode_standardized(xi, reduced=reduced)
        x = numpyro.deterministic(name, reject_failed_solves(name, x))
        return observation(obs_name, x, obs=y)

    return model
