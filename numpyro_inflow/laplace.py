r"""Latent MAP and Laplace approximation of an inverse problem's posterior.

For a flow prior and an observation $y = F(x) + n$, $n \sim N(0, \operatorname{diag}\sigma^2)$,
the standardized latent $\xi$ (site ``"x_latent"`` of `LatentReparam`) has the potential

$$U(\xi) = \tfrac12 \lVert \xi \rVert^2
    + \tfrac12 \lVert (F(\operatorname{decode}(\xi)) - y) / \sigma \rVert^2 + c.$$

`latent_map` minimises $U$ with Adam; `laplace_approximation` returns $N(\hat\xi, L L^\top)$
with $(L L^\top)^{-1} = I + G^\top G$, $G = \partial_\xi F(\operatorname{decode}(\xi)) / \sigma$
(Gauss-Newton). Such posteriors are badly conditioned; `inverse_problem`'s
``model(y, laplace=approx)`` samples $w$, $\xi = \hat\xi + L w$, close to $N(0, I)$ instead.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from ._checks import check_positive, check_positive_int

__all__ = ["LatentLaplace", "laplace_approximation", "latent_map"]


class LatentLaplace(NamedTuple):
    """A Gaussian approximation $N(\\text{loc}, L L^\\top)$ of a latent posterior.

    Attributes:
        loc: the latent MAP $\\hat\\xi$, shape ``(n,)`` (``(B, n)`` for a batch).
        scale_tril: lower-triangular $L$ ``(n, n)`` (``(B, n, n)``), $L L^\\top = H^{-1}$.
    """

    loc: jax.Array
    scale_tril: jax.Array


def _batched(fn, x, *rest):
    """``fn`` of one problem, vmapped over a batch ``x`` (B, n)."""
    return jax.vmap(fn)(x, *rest) if x.ndim == 2 else fn(x, *rest)


@eqx.filter_jit
def _map(flow, observation, y, init, steps, learning_rate, reduced):
    opt = optax.adam(learning_rate)

    def one(y, xi):
        def potential(xi):
            x = flow.decode_standardized(xi, reduced=reduced)
            return 0.5 * jnp.sum(xi**2) - observation.log_likelihood(x, y)

        def step(carry, _):
            xi, state = carry
            update, state = opt.update(jax.grad(potential)(xi), state)
            return (optax.apply_updates(xi, update), state), None

        return jax.lax.scan(step, (xi, opt.init(xi)), None, length=steps)[0][0]

    return _batched(one, y, init)


def latent_map(
    flow,
    observation,
    y,
    *,
    steps: int = 400,
    learning_rate: float = 0.05,
    init=None,
    reduced: bool = True,
) -> jax.Array:
    """The latent MAP $\\hat\\xi$ of an inverse problem (Adam on $U$, see the module).

    Args:
        flow: an `InflationaryFlow` (use a fixed-step solver for speed).
        observation: an observation model (e.g. `LinearGaussianObservation`) of ``flow.dim``.
        y: one observation ``(M,)`` or a batch ``(B, M)`` of independent problems.
        steps: Adam steps.
        learning_rate: Adam learning rate.
        init: starting latent (default: zeros, the prior's mode).
        reduced: use the ``k``-dimensional latent of a PR-reducing flow.

    Returns:
        The standardized latent ``(n,)`` or ``(B, n)`` (``n = k`` if reduced, else ``D``);
        ``flow.decode_standardized`` of it is the data-space estimate.

    Raises:
        ValueError: on mismatched dimensions, a non-finite ``y`` of more than two axes, or
            non-positive ``steps``/``learning_rate``.

    Examples:
        A standard-normal prior observed with noise 0.5: the MAP is $y / 1.25$.

        >>> import jax.numpy as jnp, numpyro_inflow as nif
        >>> gm = nif.GaussianMixtureScore(jnp.ones(1), jnp.zeros((1, 2)), jnp.eye(2)[None])
        >>> flow = nif.InflationaryFlow(nif.InflationSchedule.from_moments(*gm.moments()), gm)
        >>> obs = nif.LinearGaussianObservation(jnp.eye(2), 0.5)
        >>> xi = nif.latent_map(flow, obs, jnp.array([1.0, -1.0]), steps=300)
        >>> tuple(round(float(v), 2) for v in flow.decode(xi))
        (0.8, -0.8)
    """
    observation.check_flow(flow)
    y = observation.check_observation(y)
    if y.ndim > 2:
        raise ValueError(
            f"y: expected one observation ({observation.output_dim},) or a batch "
            f"(B, {observation.output_dim}); got shape {y.shape}"
        )
    steps = check_positive_int(steps, "steps")
    learning_rate = check_positive(learning_rate, "learning_rate")
    shape = (*y.shape[:-1], flow.latent_dim if reduced else flow.dim)
    x0 = jnp.zeros(shape, y.dtype) if init is None else jnp.asarray(init, y.dtype)
    if x0.shape != shape:
        raise ValueError(f"init: expected shape {shape}; got {x0.shape}")
    return _map(flow, observation, y, x0, steps, learning_rate, bool(reduced))


@eqx.filter_jit
def _scale_tril(flow, observation, xi, reduced):
    def one(xi):
        def whitened_forward(v):
            x = flow.decode_standardized(v, reduced=reduced)
            return observation.forward(x) / observation.noise_std

        g = jax.jacrev(whitened_forward)(xi)
        # H = I + G^T G >= I: its inverse is well conditioned; symmetrize before Cholesky
        cov = jnp.linalg.inv(jnp.eye(xi.shape[0], dtype=xi.dtype) + g.T @ g)
        return jnp.linalg.cholesky(0.5 * (cov + cov.T))

    return _batched(one, xi)


def laplace_approximation(
    flow,
    observation,
    y,
    *,
    steps: int = 400,
    learning_rate: float = 0.05,
    init=None,
    reduced: bool = True,
) -> LatentLaplace:
    """Gauss-Newton Laplace approximation of the latent posterior at its MAP.

    Arguments as `latent_map`. Precondition MCMC with it (``mcmc.run(key, y, laplace=approx)``,
    ``model`` from `inverse_problem`) or use it alone (exact for an affine decoder).

    Returns:
        `LatentLaplace` (location and Cholesky factor of the covariance).

    Raises:
        ValueError: as `latent_map`, or if the Hessian is not positive definite.
    """
    xi = latent_map(
        flow, observation, y, steps=steps, learning_rate=learning_rate, init=init, reduced=reduced
    )
    scale = _scale_tril(flow, observation, xi, bool(reduced))
    if not bool(jnp.all(jnp.isfinite(scale))):
        raise ValueError(
            "flow: the Gauss-Newton Hessian at the latent MAP is not positive definite "
            "(non-finite decoder Jacobian); check the flow's solver settings"
        )
    return LatentLaplace(xi, scale)
