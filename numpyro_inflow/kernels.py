"""Langevin MCMC kernels (MALA and ULA) for NumPyro's `MCMC`.

Both kernels move the unconstrained latent vector $x$ with one Euler step of the
overdamped Langevin diffusion, preconditioned by a diagonal inverse mass matrix
$M^{-1} = \\mathrm{diag}(m)$:

$$
x' = x - h\\, m \\odot \\nabla U(x) + \\sqrt{2 h\\, m} \\odot \\xi,
\\qquad \\xi \\sim \\mathcal N(0, I),
$$

where $U$ is NumPyro's potential energy (negative log joint) and $h$ the step
size. `MALA` accepts or rejects the move with the Metropolis-Hastings ratio of the
asymmetric Gaussian proposal, so it targets the posterior exactly; `ULA` always
accepts, so it targets a nearby distribution whose bias grows with $h$ (for a
Gaussian target $\\mathcal N(0, \\sigma^2)$ without preconditioning the stationary
variance is $\\sigma^2 / (1 - h / (2 \\sigma^2))$).

The step itself is BlackJAX's (``blackjax.mcmc.mala.build_kernel`` and
``blackjax.mcmc.diffusions.overdamped_langevin``), run in whitened coordinates
$y = x / \\sqrt{m}$ so that BlackJAX's identity-metric step becomes the
preconditioned one above. BlackJAX has no adaptation for these kernels; this module adds
it (see `MALA`).
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import blackjax.mcmc.diffusions as bj_diffusions
import blackjax.mcmc.mala as bj_mala
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.mass_matrix import WelfordAlgorithmState, welford_algorithm
from blackjax.adaptation.step_size import (
    DualAveragingAdaptationState,
    dual_averaging_adaptation,
)
from jax.flatten_util import ravel_pytree
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.mcmc import MCMCKernel
from numpyro.infer.util import initialize_model
from numpyro.util import identity, is_prng_key

__all__ = ["MALA", "ULA", "LangevinAdaptState", "LangevinState"]

# A proposal whose potential rises by more than this is reported as ``diverging``.
_MAX_DELTA_ENERGY = 1000.0


class LangevinAdaptState(NamedTuple):
    """Warm-up adaptation state of `MALA` / `ULA`.

    Attributes:
        dual_averaging: BlackJAX dual-averaging state for $\\log h$.
        welford: BlackJAX Welford running mean/variance of the flat latent vector.
    """

    dual_averaging: DualAveragingAdaptationState
    welford: WelfordAlgorithmState


class LangevinState(NamedTuple):
    """State of a Langevin chain (a pytree; one per chain).

    Attributes:
        i: iteration counter (warm-up iterations included).
        z: unconstrained latent values (a dict of sites for models).
        potential_energy: $U(z)$.
        z_grad: $\\nabla U(z)$, same structure as ``z``.
        accept_prob: Metropolis acceptance probability of the last move. For `ULA`
            the move is always taken; this is the probability MALA would have used.
        mean_accept_prob: running mean of ``accept_prob`` (reset when warm-up ends).
        diverging: the last proposal had a non-finite potential or raised it by more
            than 1000.
        step_size: current step size $h$.
        inverse_mass_matrix: diagonal $m$ (flat, one entry per latent scalar).
        adapt_state: `LangevinAdaptState`.
        rng_key: PRNG key for the next move.
    """

    i: jax.Array
    z: Any
    potential_energy: jax.Array
    z_grad: Any
    accept_prob: jax.Array
    mean_accept_prob: jax.Array
    diverging: jax.Array
    step_size: jax.Array
    inverse_mass_matrix: jax.Array
    adapt_state: LangevinAdaptState
    rng_key: jax.Array


def _warmup_windows(num_warmup: int) -> list[tuple[int, int]]:
    """Mass-matrix windows ``[start, end)`` inside warm-up (empty when it is too short).

    15% initial buffer (step size only), two slow windows of 1/3 and 2/3 of the middle
    part (Welford variance; the matrix is updated at the end of each), 10% final buffer
    (step size only, with the last matrix).
    """
    if num_warmup < 40:
        return []
    start = int(0.15 * num_warmup)
    end = num_warmup - max(int(0.1 * num_warmup), 1)
    mid = start + (end - start) // 3
    return [(start, mid), (mid, end)]


def _mala_log_accept(x, x_new, logp, logp_new, g, g_new, h):
    """log Metropolis-Hastings ratio of the identity-metric Langevin proposal.

    The proposal is $q(x' | x) = \\mathcal N(x + h g(x), 2 h I)$ with
    $g = \\nabla \\log p$; NaN is mapped to $-\\infty$ (reject).
    """
    fwd = jnp.sum((x_new - x - h * g) ** 2) / (4.0 * h)
    bwd = jnp.sum((x - x_new - h * g_new) ** 2) / (4.0 * h)
    log_ratio = logp_new - logp - bwd + fwd
    return jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)


class _Langevin(MCMCKernel):
    """Shared machinery of `MALA` and `ULA` (not public)."""

    _adjusted: bool = True
    _default_target: float = 0.574

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
    ):
        if (model is None) == (potential_fn is None):
            raise ValueError(
                "model/potential_fn: expected exactly one of them; got "
                f"{'both' if model is not None else 'neither'}"
            )
        step_size = float(step_size)
        if not np.isfinite(step_size) or step_size <= 0:
            raise ValueError(f"step_size: expected a positive finite number; got {step_size}")
        target = self._default_target if target_accept_prob is None else target_accept_prob
        if not 0.0 < float(target) < 1.0:
            raise ValueError(f"target_accept_prob: expected a number in (0, 1); got {target}")
        self._model = model
        self._potential_fn = potential_fn
        self._step_size = step_size
        self._adapt_step_size = bool(adapt_step_size)
        self._adapt_mass_matrix = bool(adapt_mass_matrix)
        self._inverse_mass_matrix = inverse_mass_matrix
        self._target_accept_prob = float(target)
        self._init_strategy = init_strategy
        self._reset()

    def _reset(self):
        self._potential_fn_gen = None
        self._postprocess_fn = None
        self._num_warmup = 0
        self._windows: list[tuple[int, int]] = []
        self._sample_fn = None

    # ----------------------------------------------------------------- interface
    @property
    def model(self):
        """The NumPyro model (``None`` when built from ``potential_fn``)."""
        return self._model

    @property
    def sample_field(self):
        return "z"

    @property
    def default_fields(self):
        return ("z", "diverging")

    def get_diagnostics_str(self, state):
        return (
            f"step size {float(state.step_size):.2e}. acc. prob={float(state.mean_accept_prob):.2f}"
        )

    def get_potential_fn(self, model_args=(), model_kwargs=None):
        """Potential energy (negative log joint, unconstrained space) for these arguments."""
        if self._model is None:
            return self._potential_fn
        if self._potential_fn_gen is None:
            raise RuntimeError("get_potential_fn: expected an initialised kernel; run `init` first")
        return self._potential_fn_gen(*model_args, **(model_kwargs or {}))

    def postprocess_fn(self, model_args, model_kwargs):
        if self._postprocess_fn is None:
            return identity
        return self._postprocess_fn(*model_args, **model_kwargs)

    def refresh(self, state, model_args, model_kwargs):
        pe, grad = jax.value_and_grad(self.get_potential_fn(model_args, model_kwargs))(state.z)
        return state._replace(potential_energy=pe, z_grad=grad)

    def wrap_model(self, wrapper):
        if self._model is None:
            raise ValueError("wrap_model: expected a kernel built from a model; got a potential_fn")
        kernel = copy.copy(self)
        kernel._model = wrapper(self._model)
        kernel._reset()
        return kernel

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_sample_fn"] = None
        return state

    # ---------------------------------------------------------------------- init
    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs=None):
        model_kwargs = {} if model_kwargs is None else model_kwargs
        if not is_prng_key(rng_key):  # a batch of keys: vectorised chains
            init_params_b = init_params
            states = jax.vmap(
                lambda k, p: self.init(k, num_warmup, p, model_args, model_kwargs),
                in_axes=(0, 0 if init_params_b is not None else None),
            )(rng_key, init_params_b)
            single = self._sample_fn
            self._sample_fn = jax.vmap(single, in_axes=(0, None, None))
            return states

        rng_key, key_init = jax.random.split(rng_key)
        if self._model is not None:
            info, potential_fn_gen, postprocess_fn, _ = initialize_model(
                key_init,
                self._model,
                dynamic_args=True,
                init_strategy=self._init_strategy,
                model_args=model_args,
                model_kwargs=model_kwargs,
            )
            self._potential_fn_gen = potential_fn_gen
            self._postprocess_fn = postprocess_fn
            if init_params is None:
                init_params = info.z
            potential_fn = potential_fn_gen(*model_args, **model_kwargs)
        else:
            if init_params is None:
                raise ValueError("init_params: expected initial values with potential_fn; got None")
            potential_fn = self._potential_fn
        z = (
            init_params.z
            if hasattr(init_params, "z") and hasattr(init_params, "z_grad")
            else init_params
        )

        self._num_warmup = int(num_warmup)
        self._windows = _warmup_windows(self._num_warmup) if self._adapt_mass_matrix else []
        self._sample_fn = self._sample_one

        x, _ = ravel_pytree(z)
        dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.result_type(float)
        if self._inverse_mass_matrix is None:
            inv_mass = jnp.ones(x.shape, dtype)
        else:
            inv_mass = jnp.broadcast_to(jnp.asarray(self._inverse_mass_matrix, dtype), x.shape)
        pe, grad = jax.value_and_grad(potential_fn)(z)
        step_size = jnp.asarray(self._step_size, dtype)
        return LangevinState(
            i=jnp.asarray(0),
            z=z,
            potential_energy=pe,
            z_grad=grad,
            accept_prob=jnp.zeros((), dtype),
            mean_accept_prob=jnp.zeros((), dtype),
            diverging=jnp.zeros((), bool),
            step_size=step_size,
            inverse_mass_matrix=inv_mass,
            adapt_state=self._adapt_init(step_size, x.shape[0], dtype),
            rng_key=rng_key,
        )

    def _adapt_init(self, step_size, n, dtype):
        da_init = dual_averaging_adaptation(self._target_accept_prob)[0]
        da = jax.tree.map(lambda a: jnp.asarray(a, dtype), da_init(step_size))
        w_mean, w_m2, _ = welford_algorithm(True)[0](n)
        welford = WelfordAlgorithmState(w_mean.astype(dtype), w_m2.astype(dtype), jnp.asarray(0))
        return LangevinAdaptState(DualAveragingAdaptationState(*da), welford)

    # -------------------------------------------------------------------- sample
    def sample(self, state, model_args, model_kwargs):
        if self._sample_fn is None:
            raise RuntimeError("sample: expected an initialised kernel; run `init` first")
        return self._sample_fn(state, model_args, model_kwargs)

    def _move(self, key, state, potential_fn):
        """One Langevin move in whitened coordinates. Returns (z, pe, grad, accept, diverging)."""
        x, unravel = ravel_pytree(state.z)
        g, _ = ravel_pytree(state.z_grad)
        scale = jnp.sqrt(state.inverse_mass_matrix)

        def logdensity_y(y):
            return -potential_fn(unravel(scale * y))

        bj_state = bj_mala.MALAState(x / scale, -state.potential_energy, -scale * g)
        h = state.step_size
        if self._adjusted:
            new, info = bj_mala.build_kernel()(key, bj_state, logdensity_y, h)
            proposed = info.is_accepted
            accept_prob = info.acceptance_rate
            # the proposal itself is only observable through the acceptance ratio
            diverging = accept_prob == 0.0
        else:
            step = bj_diffusions.overdamped_langevin(jax.value_and_grad(logdensity_y))
            new = bj_mala.MALAState(*step(key, bj_state, h))
            log_acc = _mala_log_accept(
                bj_state.position,
                new.position,
                bj_state.logdensity,
                new.logdensity,
                bj_state.logdensity_grad,
                new.logdensity_grad,
                h,
            )
            accept_prob = jnp.minimum(jnp.exp(log_acc), 1.0)
            ok = jnp.isfinite(new.logdensity) & jnp.all(jnp.isfinite(new.logdensity_grad))
            diverging = ~ok | (bj_state.logdensity - new.logdensity > _MAX_DELTA_ENERGY)
            # ULA takes every finite move; a non-finite one would poison the chain
            new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, bj_state)
            proposed = ok
        del proposed
        x_new = scale * new.position
        grad_new = -new.logdensity_grad / scale
        return unravel(x_new), -new.logdensity, unravel(grad_new), accept_prob, diverging

    def _sample_one(self, state, model_args, model_kwargs):
        potential_fn = self.get_potential_fn(model_args, model_kwargs)
        key, key_move = jax.random.split(state.rng_key)
        z, pe, grad, accept_prob, diverging = self._move(key_move, state, potential_fn)
        accept_prob = accept_prob.astype(state.accept_prob.dtype)
        i = state.i
        # running mean of acceptance, restarted after warm-up (as NumPyro's HMC)
        n = jnp.where(i < self._num_warmup, i, i - self._num_warmup)
        mean_acc = state.mean_accept_prob + (accept_prob - state.mean_accept_prob) / (n + 1)

        step_size, inv_mass, adapt = state.step_size, state.inverse_mass_matrix, state.adapt_state
        if self._num_warmup > 0 and (self._adapt_step_size or self._windows):
            step_size, inv_mass, adapt = self._adapt(i, z, accept_prob, state)
        return LangevinState(
            i=i + 1,
            z=z,
            potential_energy=pe,
            z_grad=grad,
            accept_prob=accept_prob,
            mean_accept_prob=mean_acc,
            diverging=diverging,
            step_size=step_size,
            inverse_mass_matrix=inv_mass,
            adapt_state=adapt,
            rng_key=key,
        )

    def _adapt(self, i, z, accept_prob, state):
        """Warm-up update of step size (dual averaging) and diagonal metric (Welford)."""
        da_init, da_update, da_final = dual_averaging_adaptation(self._target_accept_prob)
        w_init, w_update, w_final = welford_algorithm(True)
        in_warmup = i < self._num_warmup
        da, welford = state.adapt_state
        step_size, inv_mass = state.step_size, state.inverse_mass_matrix
        dtype = step_size.dtype

        def where(c, a, b):
            return jax.tree.map(lambda u, v: jnp.where(c, u, v).astype(jnp.result_type(v)), a, b)

        if self._adapt_step_size:
            da_new = DualAveragingAdaptationState(*da_update(da, accept_prob))
            da = where(in_warmup, da_new, da)
            step_size = jnp.where(in_warmup, jnp.exp(da.log_step_size), step_size).astype(dtype)

        if self._windows:
            x, _ = ravel_pytree(z)
            starts = jnp.asarray([s for s, _ in self._windows])
            ends = jnp.asarray([e for _, e in self._windows])
            in_window = jnp.any((i >= starts) & (i < ends))
            welford = where(in_window, WelfordAlgorithmState(*w_update(welford, x)), welford)
            window_end = jnp.any(i == ends - 1)
            var, n, _ = w_final(welford)
            # shrink towards 1e-3 as NumPyro/Stan do, to regularise short windows
            var_reg = (n / (n + 5.0)) * var + 1e-3 * (5.0 / (n + 5.0))
            var_reg = jnp.where(jnp.isfinite(var_reg) & (var_reg > 0), var_reg, inv_mass)
            inv_mass = jnp.where(window_end, var_reg, inv_mass).astype(inv_mass.dtype)
            fresh_w = w_init(x.shape[0])
            fresh_w = WelfordAlgorithmState(
                fresh_w.mean.astype(welford.mean.dtype), fresh_w.m2.astype(welford.m2.dtype), 0
            )
            welford = where(window_end, fresh_w, welford)
            if self._adapt_step_size:
                # the metric changed: restart dual averaging from the current step size
                fresh_da = jax.tree.map(lambda a: jnp.asarray(a, dtype), da_init(step_size))
                da = where(window_end, DualAveragingAdaptationState(*fresh_da), da)

        if self._adapt_step_size:
            last = i == self._num_warmup - 1
            step_size = jnp.where(last, da_final(da), step_size).astype(dtype)
        return step_size, inv_mass, LangevinAdaptState(da, welford)


class MALA(_Langevin):
    """Metropolis-adjusted Langevin algorithm as a NumPyro MCMC kernel.

    Used exactly like `numpyro.infer.NUTS`::

        mcmc = MCMC(nif.MALA(model), num_warmup=1000, num_samples=1000, num_chains=4)
        mcmc.run(key, data, extra_fields=("accept_prob", "step_size"))

    Warm-up: the step size is tuned by dual averaging (Hoffman & Gelman 2014, via
    BlackJAX) towards ``target_accept_prob`` (default 0.574, the optimal MALA
    acceptance of Roberts & Rosenthal 1998). With ``adapt_mass_matrix=True`` and at
    least 40 warm-up iterations, a diagonal inverse mass matrix is set to the
    (regularised) Welford variance of two windows covering 15% to 90% of warm-up; dual
    averaging restarts after each update. The final step size is the dual-averaging
    average. After warm-up nothing changes, so the samples form a valid Markov chain.

    Args:
        model: a NumPyro model (exactly one of ``model`` and ``potential_fn``).
        potential_fn: a potential energy (negative log density) of a pytree; requires
            ``init_params`` in `MCMC.run`.
        step_size: initial step size $h$ (the Langevin time step; the proposal
            noise has variance $2 h m$).
        adapt_step_size: tune ``step_size`` during warm-up.
        adapt_mass_matrix: learn a diagonal inverse mass matrix during warm-up.
        inverse_mass_matrix: initial diagonal (scalar or flat vector); default ones.
        target_accept_prob: acceptance rate targeted by dual averaging.
        init_strategy: NumPyro initialisation strategy for models.

    Raises:
        ValueError: if both or neither of ``model``/``potential_fn`` are given, or a
            number is out of range.

    The state (`LangevinState`) exposes ``accept_prob``, ``mean_accept_prob``,
    ``step_size`` and ``diverging`` as extra fields; ArviZ's ``from_numpyro`` renames
    ``accept_prob`` to ``acceptance_rate``.

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist
        >>> from numpyro.infer import MCMC
        >>> import numpyro_inflow as nif
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(1.0, 2.0))
        >>> mcmc = MCMC(nif.MALA(model), num_warmup=200, num_samples=200, progress_bar=False)
        >>> mcmc.run(jax.random.key(0))
        >>> mcmc.get_samples()["x"].shape
        (200,)
    """

    _adjusted = True
    _default_target = 0.574


class ULA(_Langevin):
    """Unadjusted Langevin algorithm as a NumPyro MCMC kernel.

    Every Euler step of the Langevin diffusion is accepted, so the chain targets a
    biased approximation of the posterior; the bias is $O(h)$ (for a Gaussian
    $\\mathcal N(0, \\sigma^2)$ the stationary variance is
    $\\sigma^2/(1 - h/(2\\sigma^2))$). Moves to a non-finite potential are the
    only ones refused (and flagged ``diverging``).

    Step-size choice (documented trade-off): during warm-up, dual averaging tunes
    $h$ so that the Metropolis acceptance probability that MALA *would* assign
    to the ULA moves averages ``target_accept_prob`` (default 0.9, higher than MALA's
    0.574 because no move is corrected). That probability measures the local
    discretisation error, so the target controls the bias; set
    ``adapt_step_size=False`` and a small ``step_size`` for a fixed, known bias.
    Diagonal preconditioning is learned as in `MALA`.

    Args:
        model: a NumPyro model (exactly one of ``model`` and ``potential_fn``).
        potential_fn: a potential energy of a pytree; requires ``init_params``.
        step_size: initial (or, without adaptation, fixed) step size $h$.
        adapt_step_size: tune ``step_size`` during warm-up.
        adapt_mass_matrix: learn a diagonal inverse mass matrix during warm-up.
        inverse_mass_matrix: initial diagonal (scalar or flat vector); default ones.
        target_accept_prob: MALA acceptance rate targeted by dual averaging.
        init_strategy: NumPyro initialisation strategy for models.

    Raises:
        ValueError: if both or neither of ``model``/``potential_fn`` are given, or a
            number is out of range.
    """

    _adjusted = False
    _default_target = 0.9
