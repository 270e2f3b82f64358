r"""The pfODE vector field and how one solve of it is configured and run.

In eigen coordinates, with the scaled state $v = s(t)\,w$, the probability-flow ODE is
semi-linear (de Albuquerque & Pearson 2024, appendix B):

$$
\frac{dv}{dt} = \Big(\frac{\dot s}{s} + \frac{r}{2}\Big) v
- \frac{r}{2}\, s(t)\, D\!\left(\frac{v}{s}, t\right),
\qquad r_i = \rho(1 + g_i).
$$

`PFODEField` evaluates $D$ once per call; `SolveConfig` holds the solver, step-size
controller, adjoint and limits, and solves.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_positive, check_positive_int
from .schedule import InflationSchedule
from .scores import AbstractScore

__all__ = ["PFODEField", "SolveConfig", "SolveInfo"]


class PFODEField(eqx.Module):
    r"""The pfODE vector field of a flow, as diffrax sees it (``ODETerm(PFODEField(...))``).

    With ``probes=None`` the state is ``v``; otherwise ``(v, acc)``, where ``acc``
    integrates the denoiser part of the divergence exactly (``"exact"``) or by Hutchinson's
    estimator; the linear part integrates in closed form and is left to the caller.

    Attributes:
        schedule: the `InflationSchedule`.
        score: the score (denoiser) of the same dimension.
        probes: ``None``, ``"exact"`` or Hutchinson probe vectors ``(P, D)``.
    """

    schedule: InflationSchedule
    score: AbstractScore
    probes: jax.Array | str | None = None

    def linear(self, t) -> jax.Array:
        r"""Diagonal linear coefficient $\dot s/s + r/2$, shape ``(D,)``."""
        return self.schedule.dlog_scale(t) + 0.5 * self.schedule.rates

    def evaluate(self, t, v) -> tuple[jax.Array, jax.Array | None]:
        r"""One denoiser evaluation at the scaled state ``v`` ``(D,)`` and time ``t``.

        Returns:
            ``(d, div)``: the denoiser value $D(v/s(t), t)$ (eigen coordinates) and the
            divergence's denoiser part $-\sum_i \tfrac{r_i}{2}\,\partial D_i/\partial w_i$
            (``None`` without a log-det state).
        """
        sch = self.schedule
        w = v / sch.scale(t)
        den = lambda u: self.score.denoise(u, t, sch)  # noqa: E731
        if self.probes is None:
            return den(w), None
        exact = isinstance(self.probes, str)
        probes = jnp.eye(sch.dim, dtype=w.dtype) if exact else self.probes
        # The primal does not depend on the probe: one denoiser evaluation for all of them.
        d, jvps = jax.vmap(lambda e: jax.jvp(den, (w,), (e,)), out_axes=(None, 0))(probes)
        quad = jnp.sum(0.5 * sch.rates * probes * jvps, axis=-1)  # e^T diag(r/2) J e
        return d, -(jnp.sum(quad) if exact else jnp.mean(quad))

    def __call__(self, t, y, args):
        v = y if self.probes is None else y[0]
        d, div = self.evaluate(t, v)
        dv = self.linear(t) * v - 0.5 * self.schedule.rates * self.schedule.scale(t) * d
        return dv if self.probes is None else (dv, div)


class SolveInfo(NamedTuple):
    """Diagnostics of a batch of ODE solves (each field has the batch shape).

    Attributes:
        success: ``True`` where the solve reached its end time with a finite state.
        num_steps: solver steps taken, accepted and rejected.
        nfe: denoiser (network) evaluations used by the solve.
    """

    success: jax.Array
    num_steps: jax.Array
    nfe: jax.Array


def _nfe(solver, num_steps) -> jax.Array:
    # Per step: the solver's evals_per_step, else a tableau's stages less FSAL, else 1.
    per_step = getattr(solver, "evals_per_step", None)
    tab = getattr(solver, "tableau", None)
    if per_step is None and tab is not None:
        per_step = len(tab.c) + 1 - int(tab.fsal)
    # Initial evaluations: a first-same-as-last one at t0 and a multistep start-up (the
    # controller's initial-step heuristic sees diffrax's wrapped term and does not evaluate).
    initial = int(getattr(tab, "fsal", False)) + int(getattr(solver, "initial_evals", 0))
    return num_steps * (per_step or 1) + initial


class SolveConfig(eqx.Module):
    r"""How a pfODE solve runs: diffrax solver, step-size controller, adjoint and limits.

    Array parts (a ``StepTo`` grid) are pytree leaves and the rest static, so a flow
    holding it passes through ``jax.jit`` without retracing.

    Args:
        rtol: relative tolerance of the default adaptive step-size controller.
        atol: absolute tolerance of the default adaptive step-size controller.
        solver: a diffrax solver object (default ``diffrax.Tsit5()``).
        stepsize_controller: a diffrax step-size controller (default ``PIDController(rtol,
            atol)`` for adaptive solvers, else ``ConstantStepSize()``).
        adjoint: a diffrax adjoint (default ``RecursiveCheckpointAdjoint()``).
        dt0: initial (adaptive) or fixed step size; ``None`` lets an adaptive controller
            choose, and means ``0.01`` (the authors' step) for ``ConstantStepSize``.
        max_steps: step limit of one solve.
        throw: whether the flow raises on a failed solve (else NaN outputs).

    Raises:
        ValueError: for objects of the wrong kind or values out of range.

    Examples:
        >>> import diffrax
        >>> from numpyro_inflow.field import SolveConfig
        >>> cfg = SolveConfig(solver=diffrax.Euler(), max_steps=2000)
        >>> type(cfg.stepsize_controller).__name__, cfg.dt0
        ('ConstantStepSize', 0.01)
    """

    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    _arrays: tuple  # (solver, controller, adjoint) split: array leaves, the rest static
    _static: tuple = eqx.field(static=True)
    dt0: float | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    throw: bool = eqx.field(static=True)

    def __init__(
        self,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        solver: diffrax.AbstractSolver | None = None,
        stepsize_controller: diffrax.AbstractStepSizeController | None = None,
        adjoint: diffrax.AbstractAdjoint | None = None,
        dt0: float | None = None,
        max_steps: int = 4096,
        throw: bool = True,
    ):
        self.rtol = check_positive(rtol, "rtol")
        self.atol = check_positive(atol, "atol")
        solver = diffrax.Tsit5() if solver is None else solver
        if stepsize_controller is None:
            adaptive = isinstance(solver, diffrax.AbstractAdaptiveSolver)
            pid = diffrax.PIDController(rtol=self.rtol, atol=self.atol)
            stepsize_controller = pid if adaptive else diffrax.ConstantStepSize()
        adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
        for name, obj, kind in (
            ("solver", solver, diffrax.AbstractSolver),
            ("stepsize_controller", stepsize_controller, diffrax.AbstractStepSizeController),
            ("adjoint", adjoint, diffrax.AbstractAdjoint),
        ):
            if not isinstance(obj, kind):
                raise ValueError(f"{name}: expected a diffrax {kind.__name__}; got {obj!r}")
        if isinstance(stepsize_controller, diffrax.ConstantStepSize) and dt0 is None:
            dt0 = 0.01
        self.dt0 = None if dt0 is None else check_positive(dt0, "dt0")
        self.max_steps = check_positive_int(max_steps, "max_steps")
        if not isinstance(throw, bool | np.bool_):
            raise ValueError(f"throw: expected True or False; got {throw!r}")
        self.throw = bool(throw)
        parts = (solver, stepsize_controller, adjoint)
        self._arrays, self._static = eqx.partition(parts, eqx.is_array)

    solver = property(lambda self: self._parts[0], doc="The diffrax solver.")
    stepsize_controller = property(lambda self: self._parts[1], doc="The step-size controller.")
    adjoint = property(lambda self: self._parts[2], doc="The diffrax adjoint.")

    @property
    def _parts(self) -> tuple:
        return eqx.combine(self._arrays, self._static)

    def solve(self, field: PFODEField, y0, t0: float, t1: float):
        """Integrate ``field`` from ``y0`` at ``t0`` to ``t1`` (either direction).

        Returns:
            ``(y1, info)``: the state at ``t1`` (NaN where the solve failed) and the
            `SolveInfo` of the solve.
        """
        solver, controller, adjoint = self._parts
        if isinstance(controller, diffrax.StepTo) and t1 < t0:
            controller = diffrax.StepTo(controller.ts[::-1])
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            solver,
            t0,
            t1,
            None if self.dt0 is None else math.copysign(self.dt0, t1 - t0),
            y0,
            stepsize_controller=controller,
            adjoint=adjoint,
            max_steps=self.max_steps,
            saveat=diffrax.SaveAt(t1=True),
            throw=False,
        )
        y1 = jax.tree.map(lambda a: a[-1], sol.ys)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(y1)]))
        ok = (sol.result == diffrax.RESULTS.successful) & finite
        y1 = jax.tree.map(lambda a: jnp.where(ok, a, jnp.nan), y1)
        steps = sol.stats["num_steps"]
        return y1, SolveInfo(ok, steps, _nfe(solver, steps))
