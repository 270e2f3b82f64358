r"""Exponential integrators for the semi-linear pfODE, as diffrax solvers.

In the unscaled eigen coordinates $w = v/s(t)$ the pfODE of `PFODEField` reads
$\dot w_i = c_i\,(w_i - D_i(w, t))$ with a constant rate $c_i = r_i/2 = \rho(1+g_i)/2$
(de Albuquerque & Pearson 2024, §3), so variation of constants over a step
$t_0 \to t_1 = t_0 + h$ is exact:

$$
w_i(t_1) = e^{c_i h}\, w_i(t_0)
- \int_{t_0}^{t_1} c_i\, e^{c_i (t_1 - \tau)}\, D_i(\tau)\, d\tau .
$$

Only the denoiser is approximated. With $x_i = c_i h$, $\varphi_k(x) = \sum_{j \ge 0}
x^j/(j+k)!$ and the kernel moments $\int_0^h c\, e^{c(h-\sigma)}\, \sigma^k/k!\, d\sigma
= h^k\, x\,\varphi_{k+1}(x)$, a model $D(t_0+\sigma) \approx D_0 + \sigma D'$ integrates to

$$w(t_1) = e^{x} w(t_0) - (e^{x} - 1)\, D_0 - h\, x\varphi_2(x)\, D' .$$

* `ExponentialEuler`: $D' = 0$; first order, one evaluation per step.
* `ExponentialMultistep`: $D'$ from previous evaluations; order 2 (or 3) with one
  evaluation per step, on any grid.
* `ExponentialMidpoint`: $D'$ from a predictor to the midpoint; second order, two
  evaluations per step, adaptive.

These are the data-prediction integrators of the diffusion literature (DPM-Solver++
1/2M/2S, DEIS) with per-direction rates. A divergence accumulator (state ``(v, acc)``)
is integrated with the same polynomial model, keeping each solver's order on the
log-determinant. The solvers need ``diffrax.ODETerm(PFODEField(...))`` and declare
``evals_per_step`` and ``initial_evals``, which the flow's NFE count reads.

Examples:
    >>> import jax.numpy as jnp
    >>> import numpyro_inflow as nif
    >>> gm = nif.GaussianMixtureScore(jnp.ones(2) / 2, jnp.array([[-1.0, 0], [1, 0]]),
    ...                               jnp.tile(0.1 * jnp.eye(2), (2, 1, 1)))
    >>> schedule = nif.InflationSchedule.from_moments(*gm.moments())
    >>> flow = nif.InflationaryFlow(schedule, gm, solver=nif.ExponentialMultistep(),
    ...                             dt0=schedule.t_end / 40)
    >>> z, info = flow.encode_with_info(jnp.array([[1.0, 0.0]]))
    >>> int(info.nfe[0])  # 40 steps, one evaluation each, and two to start
    42
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .field import PFODEField

__all__ = ["ExponentialEuler", "ExponentialMidpoint", "ExponentialMultistep"]

# |x| below this uses the Taylor series of x*phi_k(x) (avoids cancellation in e^x - 1 - ...).
_SERIES_CUTOFF = 0.5
_SERIES_TERMS = 10


def _xphi(k: int, x: jax.Array) -> jax.Array:
    r"""$x\,\varphi_k(x) = (e^x - \sum_{j<k} x^j/j!)/x^{k-1}$, stable for small ``|x|``."""
    if k == 1:
        return jnp.expm1(x)
    small = jnp.abs(x) < _SERIES_CUTOFF
    xs = jnp.where(small, x, 0.0)
    series = sum(xs ** (j + 1) / math.factorial(j + k) for j in range(_SERIES_TERMS))
    xd = jnp.where(small, 1.0, x)  # safe value in the unused branch (finite gradients)
    head = jnp.expm1(xd) - sum(xd**j / math.factorial(j) for j in range(1, k))
    return jnp.where(small, series, head / xd ** (k - 1))


def _field(terms) -> PFODEField:
    """The `PFODEField` of the ``ODETerm`` inside diffeqsolve's wrapper of the terms."""
    is_term = lambda n: isinstance(n, diffrax.ODETerm)  # noqa: E731
    nodes = [n for n in jax.tree.leaves(terms, is_leaf=is_term) if is_term(n)]
    field = nodes[0].vector_field if len(nodes) == 1 else None
    if not isinstance(field, PFODEField):
        raise ValueError(
            "terms: expected diffrax.ODETerm(PFODEField(...)) (the pfODE of an "
            "InflationaryFlow, whose semi-linear structure these exponential integrators "
            f"use); got a term with vector field {type(field).__name__}"
        )
    return field


def _start(terms, t0, t1, y0):
    """Field, start time and step in the field's time, state, and the evaluation ``d, div``."""
    field = _field(terms)
    # An ODE term's control from 0 to t is the time its field sees at t: t itself, or -t
    # in the negated time in which diffeqsolve runs a solve with t1 < t0.
    ta, tb = terms.contr(0.0, t0), terms.contr(0.0, t1)
    v0, acc0 = (y0, None) if field.probes is None else y0
    return (field, ta, tb - ta, v0, acc0, *field.evaluate(ta, v0))


def _propagate(field, t0, h, v0, d0, slope=None, curv=None) -> jax.Array:
    r"""$v(t_0+h)$ for $D(t_0+\sigma) = D_0 + \sigma\,\mathrm{slope} + \sigma^2\,\mathrm{curv}$."""
    sch = field.schedule
    x = 0.5 * sch.rates * h
    w0 = v0 / sch.scale(t0)
    w1 = jnp.exp(x) * w0 - _xphi(1, x) * d0
    if slope is not None:
        w1 = w1 - h * _xphi(2, x) * slope
    if curv is not None:
        w1 = w1 - 2.0 * h**2 * _xphi(3, x) * curv
    return sch.scale(t0 + h) * w1


def _midpoint(field, t0, h, v0, d0):
    """Exponential Euler predictor to ``t0 + h/2`` and the evaluation ``(t, d, div)`` there."""
    t_mid = t0 + 0.5 * h
    return t_mid, *field.evaluate(t_mid, _propagate(field, t0, 0.5 * h, v0, d0))


def _pack(v, acc):
    return v if acc is None else (v, acc)


class _AbstractExponentialSolver(diffrax.AbstractSolver):
    """Shared plumbing: term structure, interpolation, vector-field evaluation."""

    term_structure: ClassVar = diffrax.ODETerm
    interpolation_cls: ClassVar[Callable[..., diffrax.LocalLinearInterpolation]] = (
        diffrax.LocalLinearInterpolation
    )
    evals_per_step: ClassVar[int]
    initial_evals: ClassVar[int] = 0
    method_order: ClassVar[int]

    def order(self, terms):
        return self.method_order

    def init(self, terms, t0, t1, y0, args):
        _field(terms)  # validates the terms; single-step solvers keep no state
        return None

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


class ExponentialEuler(_AbstractExponentialSolver):
    r"""Exponential Euler for the pfODE: the denoiser is frozen over each step ($D' = 0$).

    First order, one evaluation per step, no error estimate (use ``ConstantStepSize`` or
    ``StepTo``). The log-density accumulator takes an explicit Euler step.
    """

    evals_per_step: ClassVar[int] = 1
    method_order: ClassVar[int] = 1

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        field, ta, h, v0, acc0, d0, div0 = _start(terms, t0, t1, y0)
        v1 = _propagate(field, ta, h, v0, d0)
        y1 = _pack(v1, None if acc0 is None else acc0 + h * div0)
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful


class ExponentialMultistep(_AbstractExponentialSolver):
    r"""Exponential multistep integrator (2M or 3M): one evaluation per step.

    The denoiser is the polynomial through the current and ``order - 1`` previous
    evaluations: $D' = (D_0 - D_{-1})/(t_0 - t_{-1})$ for ``order=2``; for ``order=3`` the
    Newton form $D_0 + d_1\sigma + d_2\sigma(\sigma + t_0 - t_{-1})$ (divided differences).
    An exponential Euler predictor to the first step's midpoint gives a start-up history
    point (``initial_evals = 2``; a first-order start would cap the order at 2). After a
    jump the history is dropped. Any grid works; no error estimate, so no adaptive
    controller. The log-density accumulator takes the matching Adams–Bashforth step.

    Args:
        order: 2 (default) or 3.

    Raises:
        ValueError: for another ``order``.
    """

    method_order: int = eqx.field(static=True, default=2)
    evals_per_step: ClassVar[int] = 1
    initial_evals: ClassVar[int] = 2

    def __init__(self, order: int = 2):
        if isinstance(order, bool) or order not in (2, 3):
            raise ValueError(f"order: expected 2 or 3; got {order!r}")
        self.method_order = int(order)

    def init(self, terms, t0, t1, y0, args):
        # diffrax passes the end of the *first step* as t1.
        field, ta, h, v0, _, d0, _ = _start(terms, t0, t1, y0)
        t_mid, d_mid, div_mid = _midpoint(field, ta, h, v0, d0)
        # History, newest first: times, D's, divergences, and the count of valid entries.
        hist = self.method_order - 1
        return (t_mid,) * hist, (d_mid,) * hist, (div_mid,) * hist, jnp.where(h == 0, 0, 1)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        ts, ds, divs, n_hist = solver_state
        n_hist = jnp.where(made_jump, 0, n_hist)
        field, ta, h, v0, acc0, d0, div0 = _start(terms, t0, t1, y0)

        def coeffs(f0, fs):
            # Newton divided differences over (ta, ts[0], ts[1]) with safe denominators
            # where the history is missing (the unused values keep gradients finite).
            ok1 = n_hist >= 1
            g1 = jnp.where(ok1, ta - ts[0], 1.0)
            d1 = jnp.where(ok1, (f0 - fs[0]) / g1, 0.0)
            if self.method_order == 2:
                return d1, None
            ok2 = n_hist >= 2
            g1p = jnp.where(ok2, ts[0] - ts[1], 1.0)
            g2 = jnp.where(ok2, ta - ts[1], 1.0)
            d1p = jnp.where(ok2, (fs[0] - fs[1]) / g1p, 0.0)
            d2 = jnp.where(ok2, (d1 - d1p) / g2, 0.0)
            # D0 + d1 s + d2 s (s + g1) = D0 + (d1 + d2 g1) s + d2 s^2
            return d1 + d2 * jnp.where(ok1, g1, 0.0), d2

        slope, curv = coeffs(d0, ds)
        v1 = _propagate(field, ta, h, v0, d0, slope, curv)
        acc1 = None
        if acc0 is not None:
            dslope, dcurv = coeffs(div0, divs)
            acc1 = acc0 + h * div0 + 0.5 * h**2 * dslope
            if dcurv is not None:
                acc1 = acc1 + h**3 / 3.0 * dcurv
        y1 = _pack(v1, acc1)
        hist = self.method_order - 1
        push = lambda new, old: (new, *old[: hist - 1])  # noqa: E731
        state = (push(ta, ts), push(d0, ds), push(div0, divs), jnp.minimum(n_hist + 1, hist))
        return y1, None, dict(y0=y0, y1=y1), state, diffrax.RESULTS.successful


class ExponentialMidpoint(_AbstractExponentialSolver, diffrax.AbstractAdaptiveSolver):
    r"""Second-order single-step exponential integrator (2S, midpoint), adaptive.

    An exponential Euler predictor to $t_0 + h/2$ gives $D_{1/2}$; the line through $D_0$
    and $D_{1/2}$ is integrated exactly. Two evaluations per step; the difference from
    exponential Euler, $h\,x\varphi_2(x)\,D'$, is the error estimate for
    ``diffrax.PIDController``. The log-density accumulator uses the midpoint rule.
    """

    evals_per_step: ClassVar[int] = 2
    method_order: ClassVar[int] = 2

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        field, ta, h, v0, acc0, d0, div0 = _start(terms, t0, t1, y0)
        _, d_mid, div_mid = _midpoint(field, ta, h, v0, d0)
        half = jnp.where(h == 0, 1.0, 0.5 * h)  # a zero-length step has a zero slope term
        slope = (d_mid - d0) / half
        v1 = _propagate(field, ta, h, v0, d0, slope)
        x = 0.5 * field.schedule.rates * h
        v_err = field.schedule.scale(ta + h) * h * _xphi(2, x) * slope
        y1 = _pack(v1, None if acc0 is None else acc0 + h * div_mid)
        y_err = _pack(v_err, None if acc0 is None else h * (div_mid - div0))
        return y1, y_err, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful
