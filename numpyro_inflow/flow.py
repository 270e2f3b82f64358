r"""The inflationary flow: the probability-flow ODE solved with diffrax.

In eigen coordinates, with the scaled state $v = s(t)\,w$, the pfODE is
semi-linear (de Albuquerque & Pearson 2024, the scaled pfODE of their appendix B):

$$
\frac{dv}{dt} = \Big(\frac{\dot s}{s} + \frac{r}{2}\Big) v
- \frac{r}{2}\, s(t)\, D\!\left(\frac{v}{s}, t\right),
\qquad r_i = \rho(1 + g_i).
$$

Encoding integrates ``0 -> T`` and returns $z = v(T)/A_0$; decoding integrates
back. The log-density comes from one augmented solve that carries the divergence of
the denoiser term next to the state; the linear part of the divergence is integrated
in closed form.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from ._checks import check_positive, event_input
from .schedule import InflationSchedule
from .scores import AbstractScore

__all__ = ["InflationaryFlow", "PFODEField", "SolveInfo"]

_TRACE_MODES = ("auto", "exact", "hutchinson")
_EXACT_TRACE_MAX_DIM = 16


class SolveInfo(NamedTuple):
    """Diagnostics of a batch of ODE solves (each field has the batch shape).

    Attributes:
        success: ``True`` where the solve reached its end time with a finite state.
            With ``throw=False`` the outputs of failed solves are NaN.
        num_steps: solver steps taken, accepted and rejected.
        nfe: denoiser (network) evaluations used by the solve.
    """

    success: jax.Array
    num_steps: jax.Array
    nfe: jax.Array


class PFODEField(eqx.Module):
    """The pfODE vector field of a flow, as diffrax sees it (``ODETerm(PFODEField(...))``).

    It also exposes the semi-linear structure, so that solvers written for it (for
    example exponential integrators) can use the exact linear propagator:
    ``linear(t) * v - nonlinear(t, v)`` equals ``__call__(t, v, args)``.

    With ``probes`` set to ``None`` the state is ``v``; otherwise it is ``(v, acc)`` where
    ``acc`` integrates the denoiser part of the divergence, exactly (``probes`` is the
    string ``"exact"``) or by Hutchinson's estimator with the given probe vectors
    ``(P, D)``.
    """

    schedule: InflationSchedule
    score: AbstractScore
    probes: jax.Array | str | None = None

    def linear(self, t) -> jax.Array:
        r"""Diagonal linear coefficient $\dot s/s + r/2$, shape ``(D,)``."""
        return self.schedule.dlog_scale(t) + 0.5 * self.schedule.rates

    def nonlinear(self, t, v) -> jax.Array:
        r"""The denoiser term $\tfrac r2\, s\, D(v/s, t)$."""
        s = self.schedule.scale(t)
        return 0.5 * self.schedule.rates * s * self.score.denoise(v / s, t, self.schedule)

    def __call__(self, t, y, args):
        if self.probes is None:
            return self.linear(t) * y - self.nonlinear(t, y)
        v, _ = y
        sch = self.schedule
        s = sch.scale(t)
        half_r = 0.5 * sch.rates
        den = lambda w: self.score.denoise(w, t, sch)  # noqa: E731
        w = v / s
        if isinstance(self.probes, str):
            d, jac = den(w), jax.jacfwd(den)(w)
            div = -jnp.sum(half_r * jnp.diagonal(jac))
        else:
            d = den(w)
            jvps = jax.vmap(lambda e: jax.jvp(den, (w,), (e,))[1])(self.probes)
            div = -jnp.mean(jnp.sum(half_r * self.probes * jvps, axis=-1))
        dv = (sch.dlog_scale(t) + half_r) * v - half_r * s * d
        return dv, div


# Denoiser evaluations per step of the solvers we know (initial evaluations counted apart).
_EVALS_PER_STEP = {
    diffrax.Euler: 1,
    diffrax.Heun: 2,
    diffrax.Midpoint: 2,
    diffrax.Ralston: 2,
    diffrax.Bosh3: 3,
    diffrax.Tsit5: 6,
    diffrax.Dopri5: 6,
    diffrax.Dopri8: 13,  # 14 stages, first-same-as-last
}


def _evals_per_step(solver) -> int:
    n = getattr(solver, "evals_per_step", None)
    if n is not None:
        return int(n)
    for cls, count in _EVALS_PER_STEP.items():
        if type(solver) is cls:
            return count
    tab = getattr(solver, "tableau", None)
    if tab is not None:  # generic explicit Runge-Kutta
        stages = len(tab.c) + 1
        return stages - 1 if getattr(tab, "fsal", False) else stages
    return 1


def _initial_evals(solver, controller, dt0) -> int:
    # Only the first-same-as-last evaluation at t0. diffrax (0.7) wraps the terms before
    # the controller picks dt0, so PIDController's two-evaluation initial-step heuristic is
    # skipped (it returns 0.01 for non-ODETerm terms): dt0=None costs no evaluation.
    # tests/test_flow.py counts the real calls and catches a change in that behaviour.
    del controller, dt0
    fsal = bool(getattr(getattr(solver, "tableau", None), "fsal", False))
    return int(fsal) + int(getattr(solver, "initial_evals", 0))  # e.g. multistep start-up


class InflationaryFlow(eqx.Module):
    r"""An invertible map between data and a Gaussian latent, given by the pfODE.

    Args:
        schedule: the `InflationSchedule`.
        score: any `AbstractScore` of the same dimension
            (an oracle or a trained denoiser).
        rtol: relative tolerance of the default adaptive step-size controller.
        atol: absolute tolerance of the default adaptive step-size controller.
        solver: a diffrax solver object (default ``diffrax.Tsit5()``). Fixed-step
            solvers (``diffrax.Euler()``, ``diffrax.Heun()``, ...) use ``dt0``.
        stepsize_controller: a diffrax step-size controller (default
            ``PIDController(rtol, atol)`` for adaptive solvers, ``ConstantStepSize()``
            otherwise).
        adjoint: a diffrax adjoint (default ``RecursiveCheckpointAdjoint()``).
        dt0: initial (adaptive) or fixed step size; ``None`` lets an adaptive
            controller choose, and means ``0.01`` (the authors' step) for fixed-step
            solvers.
        max_steps: step limit of one solve.
        throw: raise when a solve fails (step limit reached, non-finite state). With
            ``throw=False`` failed outputs are NaN and ``*_with_info`` methods report
            ``success``; NumPyro objects use this to reject such proposals.
        trace: divergence estimator for `log_prob`: ``"exact"`` (Jacobian
            diagonal), ``"hutchinson"`` (needs a ``key``) or ``"auto"`` (exact up to
            D = 16).
        num_probes: Hutchinson probe vectors per point.

    Raises:
        ValueError: for a score whose dimension differs from the schedule's, or options
            out of range.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import numpyro_inflow as nif
        >>> gm = nif.GaussianMixtureScore(jnp.ones(2) / 2, jnp.array([[-1.0, 0], [1, 0]]),
        ...                               jnp.tile(0.1 * jnp.eye(2), (2, 1, 1)))
        >>> schedule = nif.InflationSchedule.from_moments(*gm.moments())
        >>> flow = nif.InflationaryFlow(schedule, gm)
        >>> z = flow.encode(jnp.array([[1.0, 0.0]]))
        >>> z.shape
        (1, 2)
    """

    schedule: InflationSchedule
    score: AbstractScore
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    # Solver, controller and adjoint, split into array leaves (e.g. a StepTo grid) and
    # hashable static aux data: PIDController holds a norm function and Python floats,
    # which as pytree leaves would break ``jax.jit(f)(flow, x)``.
    _solver_arrays: tuple
    _solver_static: tuple = eqx.field(static=True)
    dt0: float | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    throw: bool = eqx.field(static=True)
    trace: str = eqx.field(static=True)
    num_probes: int = eqx.field(static=True)

    def __init__(
        self,
        schedule: InflationSchedule,
        score: AbstractScore,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        solver: diffrax.AbstractSolver | None = None,
        stepsize_controller: diffrax.AbstractStepSizeController | None = None,
        adjoint: diffrax.AbstractAdjoint | None = None,
        dt0: float | None = None,
        max_steps: int = 4096,
        throw: bool = True,
        trace: str = "auto",
        num_probes: int = 1,
    ):
        if not isinstance(schedule, InflationSchedule):
            raise ValueError(
                f"schedule: expected an InflationSchedule; got {type(schedule).__name__}"
            )
        if not isinstance(score, AbstractScore):
            raise ValueError(
                f"score: expected a score object (GaussianMixtureScore, EmpiricalScore or a "
                f"trained denoiser); got {type(score).__name__}"
            )
        if score.dim != schedule.dim:
            raise ValueError(
                f"score: expected dimension {schedule.dim} to match the schedule; "
                f"got a score of dimension {score.dim}"
            )
        solver = diffrax.Tsit5() if solver is None else solver
        if not isinstance(solver, diffrax.AbstractSolver):
            raise ValueError(f"solver: expected a diffrax solver object; got {solver!r}")
        adaptive = isinstance(solver, diffrax.AbstractAdaptiveSolver)
        if stepsize_controller is None:
            stepsize_controller = (
                diffrax.PIDController(
                    rtol=check_positive(rtol, "rtol"), atol=check_positive(atol, "atol")
                )
                if adaptive
                else diffrax.ConstantStepSize()
            )
        if not isinstance(stepsize_controller, diffrax.AbstractStepSizeController):
            raise ValueError(
                f"stepsize_controller: expected a diffrax step-size controller; "
                f"got {stepsize_controller!r}"
            )
        if isinstance(stepsize_controller, diffrax.ConstantStepSize) and dt0 is None:
            dt0 = 0.01
        if dt0 is not None:
            dt0 = check_positive(dt0, "dt0")
        if trace not in _TRACE_MODES:
            raise ValueError(f"trace: expected one of {_TRACE_MODES}; got {trace!r}")
        if isinstance(max_steps, bool) or int(max_steps) < 1:
            raise ValueError(f"max_steps: expected a positive integer; got {max_steps!r}")
        self.schedule = schedule
        self.score = score
        self.rtol = float(rtol)
        self.atol = float(atol)
        adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
        self._solver_arrays, self._solver_static = eqx.partition(
            (solver, stepsize_controller, adjoint), eqx.is_array
        )
        self.dt0 = dt0
        self.max_steps = int(max_steps)
        self.throw = bool(throw)
        self.trace = trace
        self.num_probes = int(check_positive(num_probes, "num_probes"))

    # ------------------------------------------------------------------ properties
    @property
    def solver(self) -> diffrax.AbstractSolver:
        """The diffrax solver."""
        return eqx.combine(self._solver_arrays, self._solver_static)[0]

    @property
    def stepsize_controller(self) -> diffrax.AbstractStepSizeController:
        """The diffrax step-size controller."""
        return eqx.combine(self._solver_arrays, self._solver_static)[1]

    @property
    def adjoint(self) -> diffrax.AbstractAdjoint:
        """The diffrax adjoint (how gradients pass through the solve)."""
        return eqx.combine(self._solver_arrays, self._solver_static)[2]

    @property
    def dim(self) -> int:
        """Data dimension ``D``."""
        return self.schedule.dim

    @property
    def latent_dim(self) -> int:
        """Dimension ``k`` of the reduced latent (``D`` for PR-preserving flows)."""
        return self.schedule.keep

    @property
    def t_end(self) -> float:
        """End time ``T`` of the inflation."""
        return self.schedule.t_end

    @property
    def base_variance(self) -> jax.Array:
        """Variances of the latent base ``N(0, diag(base_variance))`` (see the schedule)."""
        return self.schedule.base_variance

    @property
    def dtype(self):
        """Floating-point dtype of the flow's arrays (the data's dtype at construction)."""
        return self.schedule.eigenvalues.dtype

    @property
    def needs_trace_key(self) -> bool:
        """Whether `log_prob` needs a PRNG ``key`` (Hutchinson trace estimation)."""
        return not (
            self.trace == "exact" or (self.trace == "auto" and self.dim <= _EXACT_TRACE_MAX_DIM)
        )

    def replace(self, **changes) -> InflationaryFlow:
        """A copy with some constructor arguments changed, e.g. ``flow.replace(throw=False)``."""
        kwargs = dict(
            schedule=self.schedule,
            score=self.score,
            rtol=self.rtol,
            atol=self.atol,
            solver=self.solver,
            adjoint=self.adjoint,
            dt0=self.dt0,
            max_steps=self.max_steps,
            throw=self.throw,
            trace=self.trace,
            num_probes=self.num_probes,
        )
        if not ({"rtol", "atol", "solver"} & changes.keys()):
            kwargs["stepsize_controller"] = self.stepsize_controller
        unknown = changes.keys() - kwargs.keys() - {"stepsize_controller"}
        if unknown:
            raise ValueError(f"replace: unknown argument(s) {sorted(unknown)}")
        kwargs.update(changes)
        return InflationaryFlow(**kwargs)

    # ------------------------------------------------------------------ one solve
    def _solve(self, y0, t0: float, t1: float, probes=None):
        field = PFODEField(self.schedule, self.score, probes)
        dt0 = None if self.dt0 is None else math.copysign(self.dt0, t1 - t0)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            self.solver,
            t0,
            t1,
            dt0,
            y0,
            stepsize_controller=self.stepsize_controller,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            saveat=diffrax.SaveAt(t1=True),
            throw=False,
        )
        y1 = jax.tree.map(lambda a: a[-1], sol.ys)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(y1)]))
        ok = (sol.result == diffrax.RESULTS.successful) & finite
        steps = sol.stats["num_steps"]
        nfe = steps * _evals_per_step(self.solver) + _initial_evals(
            self.solver, self.stepsize_controller, self.dt0
        )
        y1 = jax.tree.map(lambda a: jnp.where(ok, a, jnp.nan), y1)
        return y1, SolveInfo(ok, steps, nfe)

    def _log_det_linear(self) -> jax.Array:
        # log|det dz/dx| without the denoiser integral: sum log s(T) - D log A0 + T sum r / 2.
        sch = self.schedule
        return (
            jnp.sum(jnp.log(sch.scale(sch.t_end)))
            - sch.dim * jnp.log(sch.A0)
            + 0.5 * sch.t_end * jnp.sum(sch.rates)
        )

    def _encode_one(self, x, probes=None):
        sch = self.schedule
        v0 = sch.scale(0.0) * sch.to_eigen(x)
        if probes is None:
            v1, info = self._solve(v0, 0.0, sch.t_end)
            return v1 / sch.A0, info
        (v1, acc), info = self._solve((v0, jnp.zeros((), v0.dtype)), 0.0, sch.t_end, probes)
        return v1 / sch.A0, self._log_det_linear() + acc, info

    def _decode_one(self, z, probes=None):
        sch = self.schedule
        v1 = sch.A0 * z
        s0 = sch.scale(0.0)
        if probes is None:
            v0, info = self._solve(v1, sch.t_end, 0.0)
            return sch.from_eigen(v0 / s0), info
        (v0, acc), info = self._solve((v1, jnp.zeros((), v1.dtype)), sch.t_end, 0.0, probes)
        return sch.from_eigen(v0 / s0), acc - self._log_det_linear(), info

    # ------------------------------------------------------------------ batching
    def _probes_for(self, batch_shape, key, dtype):
        if not self.needs_trace_key:
            return None
        if key is None:
            raise ValueError(
                "key: Hutchinson trace estimation (trace='hutchinson', or 'auto' with "
                f"D > {_EXACT_TRACE_MAX_DIM}) needs an explicit PRNG key; got None"
            )
        shape = (*batch_shape, self.num_probes, self.dim)
        return jax.random.rademacher(key, shape, dtype)

    def _check_failures(self, out, info: SolveInfo):
        if not self.throw:
            return out
        return eqx.error_if(
            out,
            ~info.success,
            "InflationaryFlow: an ODE solve failed (step limit reached or non-finite state). "
            "Raise max_steps, loosen rtol/atol, or build the flow with throw=False to get "
            "NaN outputs and SolveInfo.success instead.",
        )

    def encode_with_info(self, x) -> tuple[jax.Array, SolveInfo]:
        """Like `encode`, also returning the `SolveInfo` of each solve."""
        x = event_input(x, "x", self.dim)
        z, info = _batched(type(self)._encode_one, self, x)
        return self._check_failures(z, info), info

    def decode_with_info(self, z) -> tuple[jax.Array, SolveInfo]:
        """Like `decode`, also returning the `SolveInfo` of each solve."""
        z = event_input(z, "z", self.dim)
        x, info = _batched(type(self)._decode_one, self, z)
        return self._check_failures(x, info), info

    def encode(self, x) -> jax.Array:
        """Map data ``x`` ``(..., D)`` to the latent ``z`` ``(..., D)`` (integrate 0 -> T)."""
        return self.encode_with_info(x)[0]

    def decode(self, z) -> jax.Array:
        """Map latents ``z`` ``(..., D)`` to data ``x`` ``(..., D)`` (integrate T -> 0)."""
        return self.decode_with_info(z)[0]

    def encode_with_log_det(self, x, key: jax.Array | None = None):
        r"""Latent ``z`` and $\log|\det \partial z/\partial x|$ from one augmented solve.

        Args:
            x: data ``(..., D)``.
            key: PRNG key for Hutchinson probes (needed only when that estimator is used).

        Returns:
            ``(z, log_det)`` with shapes ``(..., D)`` and ``(...)``.
        """
        x = event_input(x, "x", self.dim)
        probes = self._probes_for(x.shape[:-1], key, x.dtype)
        z, ld, info = _batched_logdet(type(self)._encode_one, self, x, probes)
        return self._check_failures((z, ld), info)

    def decode_with_log_det(self, z, key: jax.Array | None = None):
        r"""Data ``x`` and $\log|\det \partial x/\partial z|$ from one augmented solve."""
        z = event_input(z, "z", self.dim)
        probes = self._probes_for(z.shape[:-1], key, z.dtype)
        x, ld, info = _batched_logdet(type(self)._decode_one, self, z, probes)
        return self._check_failures((x, ld), info)

    # ------------------------------------------------------------------ densities
    def base_log_prob(self, z) -> jax.Array:
        """Log-density of the latent base ``N(0, diag(base_variance))`` at ``z`` ``(..., D)``."""
        var = self.base_variance
        return -0.5 * jnp.sum(z**2 / var + jnp.log(2 * jnp.pi * var), axis=-1)

    def log_prob(self, x, key: jax.Array | None = None) -> jax.Array:
        r"""Log-density $\log q(x)$ of "draw z from the base, decode" at ``x`` ``(..., D)``.

        Exact up to ODE and trace-estimator error for PR-preserving flows. For
        PR-reducing flows it is the density with the squeezed directions given their
        tiny base variances $\epsilon_i$ (an $\epsilon$-regularised density
        concentrated near a ``k``-dimensional set).
        """
        z, ld = self.encode_with_log_det(x, key)
        return self.base_log_prob(z) + ld

    # ------------------------------------------------------------------ latents
    def to_latent(self, x) -> jax.Array:
        """Reduced latent ``(..., k)``: the first ``k`` (kept) coordinates of `encode`."""
        return self.encode(x)[..., : self.latent_dim]

    def from_latent(self, z_k) -> jax.Array:
        """Decode a reduced latent ``(..., k)`` with the squeezed coordinates set to zero."""
        z_k = event_input(z_k, "z_k", self.latent_dim)
        pad = jnp.zeros((*z_k.shape[:-1], self.dim - self.latent_dim), z_k.dtype)
        return self.decode(jnp.concatenate([z_k, pad], axis=-1))

    def decode_standardized(self, xi, *, reduced: bool = True) -> jax.Array:
        r"""Decode a *standardized* latent $\xi$ (every coordinate ``N(0, 1)`` under the base).

        With ``reduced=True``, ``xi`` is ``(..., k)``: the kept coordinates, decoded with
        the squeezed ones set to zero (`from_latent`). With ``reduced=False``, ``xi`` is
        ``(..., D)`` and is scaled by $\sqrt{\text{base variance}}$ first, so that
        $\xi \sim N(0, I_D)$ decodes to a draw of the flow. Samplers that move in the
        latent (NumPyro reparameterizers, the Laplace approximation) use this map.
        """
        if reduced:
            return self.from_latent(xi)
        xi = event_input(xi, "xi", self.dim)
        return self.decode(xi * jnp.sqrt(self.base_variance))

    def sample_latent(self, key: jax.Array, sample_shape=()) -> jax.Array:
        """Draws ``sample_shape + (D,)`` from the latent base (squeezed directions included)."""
        shape = (*tuple(sample_shape), self.dim)
        eps = jax.random.normal(key, shape, self.schedule.eigenvalues.dtype)
        return eps * jnp.sqrt(self.base_variance)

    def sample(self, key: jax.Array, sample_shape=()) -> jax.Array:
        """Draws ``sample_shape + (D,)`` from the flow: base draws, decoded."""
        return self.decode(self.sample_latent(key, sample_shape))


def _flatten(a, dim):
    batch = a.shape[:-1]
    return a.reshape(-1, dim), batch


@eqx.filter_jit
def _batched(fn, flow, a):
    flat, batch = _flatten(a, flow.dim)
    out, info = jax.vmap(lambda p: fn(flow, p))(flat)
    info = jax.tree.map(lambda i: i.reshape(batch), info)
    return out.reshape(*batch, flow.dim), info


@eqx.filter_jit
def _batched_logdet(fn, flow, a, probes):
    flat, batch = _flatten(a, flow.dim)
    if probes is None:
        out, ld, info = jax.vmap(lambda p: fn(flow, p, "exact"))(flat)
    else:
        pr = probes.reshape(-1, *probes.shape[-2:])
        out, ld, info = jax.vmap(lambda p, e: fn(flow, p, e))(flat, pr)
    info = jax.tree.map(lambda i: i.reshape(batch), info)
    return out.reshape(*batch, flow.dim), ld.reshape(batch), info
