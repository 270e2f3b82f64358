"""Langevin MCMC kernels (MALA and ULA) built on NumPyro's `HMC`.

One Langevin step is one leapfrog step (see `MALA`), so both kernels reuse NumPyro's
initialisation, warm-up (`hmc_util.warmup_adapter`) and divergence rule.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import random
from numpyro.infer.hmc import HMC, HMCState, momentum_generator
from numpyro.infer.hmc_util import IntegratorState, velocity_verlet, warmup_adapter
from numpyro.infer.initialization import init_to_uniform
from numpyro.util import cond, identity, is_prng_key

from ._checks import check_positive

__all__ = ["MALA", "ULA", "LangevinState"]


class LangevinState(HMCState):
    """State of a `MALA` or `ULA` chain: a NumPyro `HMCState` with two read-only views.

    ``adapt_state.ss_state`` is on the leapfrog scale $\\sqrt{2h}$ for `MALA`, on $h$ for
    `ULA`, whose ``accept_prob`` is the probability MALA would have used.

    Attributes:
        step_size: the Langevin time step $h$ (``adapt_state.step_size``).
        inverse_mass_matrix: the diagonal of $M^{-1}$, one entry per unconstrained
            scalar in the order of ``jax.flatten_util.ravel_pytree(z)``.
    """

    __slots__ = ()

    @property
    def step_size(self) -> jax.Array:
        return self.adapt_state.step_size

    @property
    def inverse_mass_matrix(self) -> jax.Array:
        m = self.adapt_state.inverse_mass_matrix
        # a model's diagonal matrix is one block keyed by all site names
        return next(iter(m.values())) if isinstance(m, dict) else m


class _Langevin(HMC):
    """Shared set-up of `MALA` and `ULA`: HMC with one leapfrog step of size sqrt(2 h)."""

    _adapts_h = False  # HMC's step-size slot holds h (ULA) or the leapfrog step (MALA)

    def __init__(
        self,
        model=None,
        potential_fn=None,
        *,
        step_size: float = 0.1,
        adapt_step_size: bool = True,
        adapt_mass_matrix: bool = True,
        inverse_mass_matrix=None,
        target_accept_prob: float | None = None,
        init_strategy=init_to_uniform,
        forward_mode_differentiation: bool = False,
    ):
        """Set up NumPyro's HMC with one leapfrog step of size $\\sqrt{2h}$.

        Args:
            model: a NumPyro model (exactly one of ``model`` and ``potential_fn``).
            potential_fn: a potential energy (negative log density) of a pytree;
                requires ``init_params`` in `MCMC.run`.
            step_size: initial (or, without adaptation, fixed) Langevin time step $h$.
            adapt_step_size: tune ``step_size`` during warm-up.
            adapt_mass_matrix: learn a diagonal inverse mass matrix during warm-up.
            inverse_mass_matrix: initial diagonal of $M^{-1}$, a scalar or a vector in
                the order of ``ravel_pytree(z)`` (default ones).
            target_accept_prob: dual averaging's target (default 0.574 `MALA`, 0.9 `ULA`).
            init_strategy: NumPyro initialisation strategy for models.
            forward_mode_differentiation: compute gradients with forward-mode autodiff.

        Raises:
            ValueError: for both or neither of ``model``/``potential_fn``, or a number out
                of range.
        """
        if (model is None) == (potential_fn is None):
            got = "both" if model is not None else "neither"
            raise ValueError(f"model/potential_fn: expected exactly one of them; got {got}")
        h = check_positive(step_size, "step_size")
        target = self._default_target if target_accept_prob is None else target_accept_prob
        if not 0.0 < float(target) < 1.0:
            raise ValueError(f"target_accept_prob: expected a number in (0, 1); got {target}")
        m = np.asarray(1.0 if inverse_mass_matrix is None else inverse_mass_matrix, float)
        if m.ndim > 1 or not np.all(np.isfinite(m) & (m > 0)):
            raise ValueError(f"inverse_mass_matrix: expected positive scalar or vector; got {m}")
        # trajectory_length=None: otherwise HMC rescales the step to trajectory_length
        super().__init__(
            model,
            potential_fn,
            step_size=h if self._adapts_h else math.sqrt(2.0 * h),
            adapt_step_size=adapt_step_size,
            adapt_mass_matrix=adapt_mass_matrix,
            dense_mass=False,
            target_accept_prob=float(target),
            num_steps=1,
            trajectory_length=None,
            init_strategy=init_strategy,
            forward_mode_differentiation=forward_mode_differentiation,
        )
        self._h, self._diagonal = h, m

    def get_diagnostics_str(self, state):
        h, accept = float(state.step_size), float(state.mean_accept_prob)
        return f"step size {h:.2e}. acc. prob={accept:.2f}"

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs=None):
        if self._potential_fn is not None and init_params is None:
            raise ValueError("init_params: expected initial values with potential_fn; got None")
        state = super().init(rng_key, num_warmup, init_params, model_args, model_kwargs)
        a = state.adapt_state  # HMC started from the identity metric: scale it by m
        m = jnp.asarray(self._diagonal, a.step_size.dtype)
        scaled = lambda t, p: jax.tree.map(lambda v: v * m**p, t)  # noqa: E731
        a = a._replace(
            step_size=jnp.full_like(a.step_size, self._h),
            inverse_mass_matrix=scaled(a.inverse_mass_matrix, 1.0),
            mass_matrix_sqrt=scaled(a.mass_matrix_sqrt, -0.5),
            mass_matrix_sqrt_inv=scaled(a.mass_matrix_sqrt_inv, 0.5),
        )
        return LangevinState(*state._replace(adapt_state=a))


class MALA(_Langevin):
    """Metropolis-adjusted Langevin algorithm: NumPyro's `HMC` with one leapfrog step.

    The proposal is the Euler step of the preconditioned Langevin diffusion,
    $x' = x - h M^{-1} \\nabla U(x) + \\sqrt{2 h M^{-1}}\\, \\xi$, $\\xi \\sim \\mathcal N(0, I)$
    ($U$ the potential energy, $M^{-1}$ a diagonal inverse mass matrix). One leapfrog
    step of size $\\epsilon$ from momentum $r \\sim \\mathcal N(0, M)$ is the same move,
    $x' = x - \\tfrac{\\epsilon^2}{2} M^{-1} \\nabla U(x) + \\epsilon M^{-1} r$, so
    $h = \\epsilon^2/2$, and its acceptance $\\min(1, e^{-\\Delta H})$ is MALA's
    Metropolis-Hastings ratio (Neal 2011, section 5.2). ``step_size``, the state and the
    extra field ``step_size`` are $h$. Warm-up is NumPyro's: dual averaging towards
    ``target_accept_prob`` (default 0.574, Roberts & Rosenthal 1998), Stan's windows.

    Examples:
        >>> import jax, numpyro, numpyro.distributions as dist, numpyro_inflow as nif
        >>> from numpyro.infer import MCMC
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(1.0, 2.0))
        >>> mcmc = MCMC(nif.MALA(model), num_warmup=200, num_samples=200, progress_bar=False)
        >>> mcmc.run(jax.random.key(0), extra_fields=("accept_prob", "step_size"))
        >>> mcmc.get_samples()["x"].shape
        (200,)
    """

    _default_target = 0.574

    def sample(self, state, model_args, model_kwargs):
        def with_step(s, v):
            return s._replace(adapt_state=s.adapt_state._replace(step_size=v))

        h = state.adapt_state.step_size
        eps = jnp.sqrt(2.0 * h)
        new = super().sample(with_step(state, eps), model_args, model_kwargs)
        eps_new = new.adapt_state.step_size
        # report h itself while the step is unchanged (it is constant after warm-up)
        return LangevinState(*with_step(new, jnp.where(eps_new == eps, h, 0.5 * eps_new**2)))


class ULA(_Langevin):
    """Unadjusted Langevin algorithm: `MALA`'s step, always taken.

    The chain has an $O(h)$ bias (for $\\mathcal N(0, \\sigma^2)$ and $M = I$ the stationary
    variance is $\\sigma^2/(1 - h/(2\\sigma^2))$). Only a proposal of non-finite energy (a failed
    solve) is refused, flagged ``diverging`` as is any with $\\Delta H > 1000$. Warm-up
    tunes $h$ so that MALA's acceptance probability averages ``target_accept_prob``
    (default 0.9); ``adapt_step_size=False`` and a small ``step_size`` fix the bias.
    """

    _default_target = 0.9
    # Dual averaging runs on h itself: its restarts at 10x the step (NumPyro's prox
    # centre) would be 100x in h on the leapfrog scale, and ULA takes such moves.
    _adapts_h = True

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs=None):
        state = super().init(rng_key, num_warmup, init_params, model_args, model_kwargs)
        self._num_warmup = num_warmup
        # HMC.sample runs self._sample_fn: swap HMC's transition for the unadjusted one
        step = self._unadjusted
        self._sample_fn = step if is_prng_key(rng_key) else jax.vmap(step, (0, None, None))
        return state

    def _unadjusted(self, state, model_args, model_kwargs):
        """One leapfrog step of size sqrt(2 h), taken unless its energy is not finite."""
        a, kinetic = state.adapt_state, self._kinetic_fn
        pe_fn = self.get_potential_fn(model_args, model_kwargs)
        _, leapfrog = velocity_verlet(pe_fn, kinetic, self._forward_mode_differentiation)
        rng_key, key_r = random.split(state.rng_key)
        r = momentum_generator(state.z, a.mass_matrix_sqrt, key_r)
        old = IntegratorState(state.z, r, state.potential_energy, state.z_grad)
        new = leapfrog(jnp.sqrt(2.0 * a.step_size), a.inverse_mass_matrix, old)
        energy = new.potential_energy + kinetic(a.inverse_mass_matrix, new.r)
        delta = energy - old.potential_energy - kinetic(a.inverse_mass_matrix, r)
        finite = jnp.isfinite(delta)
        new = jax.tree.map(lambda u, v: jnp.where(finite, u, v), new, old)
        delta = jnp.where(finite, delta, jnp.inf)
        accept_prob = jnp.clip(jnp.exp(-delta), None, 1.0)
        _, wa_update = warmup_adapter(
            self._num_warmup,
            adapt_step_size=self._adapt_step_size,
            adapt_mass_matrix=self._adapt_mass_matrix,
            target_accept_prob=self._target_accept_prob,
        )
        warm = state.i < self._num_warmup
        adapt = cond(warm, (state.i, accept_prob, new, a), lambda x: wa_update(*x), a, identity)
        n = jnp.where(warm, state.i + 1, state.i + 1 - self._num_warmup)
        return state._replace(
            i=state.i + 1,
            z=new.z,
            z_grad=new.z_grad,
            potential_energy=new.potential_energy,
            energy=jnp.where(finite, energy, state.energy),
            num_steps=jnp.ones_like(state.num_steps),
            accept_prob=accept_prob,
            mean_accept_prob=state.mean_accept_prob + (accept_prob - state.mean_accept_prob) / n,
            diverging=delta > 1000.0,  # HMC's max_delta_energy
            adapt_state=adapt,
            rng_key=rng_key,
        )
