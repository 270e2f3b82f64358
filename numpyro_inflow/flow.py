r"""The inflationary flow: the probability-flow ODE of `PFODEField`, solved with diffrax.

Encoding integrates the pfODE ``0 -> T`` to $z = v(T)/A_0$, decoding back (de Albuquerque
& Pearson 2024); the log-density is one solve augmented with the denoiser's divergence.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from ._checks import check_positive_int, event_input
from .field import PFODEField, SolveConfig, SolveInfo
from .schedule import InflationSchedule
from .scores import AbstractScore
from .solvers import ExponentialEuler, ExponentialMidpoint, ExponentialMultistep

__all__ = ["InflationaryFlow", "PFODEField", "SolveInfo"]

_TRACE_MODES = ("auto", "exact", "hutchinson")
_EXACT_TRACE_MAX_DIM = 16
_FORWARD_MODE_HINT = (
    "InflationaryFlow: forward-mode differentiation (jax.jvp/jacfwd, NumPyro's "
    "forward_mode_differentiation=True) needs flow.replace(adjoint=diffrax.ForwardMode()); "
    "the default RecursiveCheckpointAdjoint supports reverse mode only"
)


class InflationaryFlow(eqx.Module):
    r"""An invertible map between data and a Gaussian latent, given by the pfODE.

    Args:
        schedule: the `InflationSchedule`.
        score: any `AbstractScore` of the same dimension (an oracle or a trained denoiser).
        rtol: relative tolerance of the default adaptive step-size controller.
        atol: absolute tolerance of the default adaptive step-size controller.
        solver: a diffrax solver object (default ``diffrax.Tsit5()``).
        stepsize_controller: a diffrax step-size controller (default as in `SolveConfig`);
            a ``StepTo`` grid runs from 0 to ``T``.
        adjoint: a diffrax adjoint (default ``RecursiveCheckpointAdjoint()``, reverse mode
            only; forward mode needs ``diffrax.ForwardMode()``).
        dt0: initial (adaptive) or fixed step size (``None``: see `SolveConfig`).
        max_steps: step limit of one solve.
        throw: raise when a solve fails; with ``False`` failed outputs are NaN and
            ``*_with_info`` methods report ``success``.
        trace: divergence estimator for `log_prob`: ``"exact"`` (Jacobian diagonal),
            ``"hutchinson"`` (needs a ``key``) or ``"auto"`` (exact up to D = 16).
        num_probes: Hutchinson probe vectors per point.

    Raises:
        ValueError: for a score of another dimension than the schedule, or bad options.

    Examples:
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
    config: SolveConfig
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
        if trace not in _TRACE_MODES:
            raise ValueError(f"trace: expected one of {_TRACE_MODES}; got {trace!r}")
        self.schedule = schedule
        self.score = score
        self.config = SolveConfig(
            rtol, atol, solver, stepsize_controller, adjoint, dt0, max_steps, throw
        )
        self.trace = trace
        self.num_probes = check_positive_int(num_probes, "num_probes")

    rtol = property(lambda self: self.config.rtol, doc="Relative tolerance (default controller).")
    atol = property(lambda self: self.config.atol, doc="Absolute tolerance (default controller).")
    solver = property(lambda self: self.config.solver, doc="The diffrax solver.")
    stepsize_controller = property(
        lambda self: self.config.stepsize_controller, doc="The diffrax step-size controller."
    )
    adjoint = property(lambda self: self.config.adjoint, doc="The diffrax adjoint.")
    dt0 = property(lambda self: self.config.dt0, doc="Initial or fixed step size (or None).")
    max_steps = property(lambda self: self.config.max_steps, doc="Step limit of one solve.")
    throw = property(lambda self: self.config.throw, doc="Whether failed solves raise.")

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
        return self.trace == "hutchinson" or (
            self.trace == "auto" and self.dim > _EXACT_TRACE_MAX_DIM
        )

    def _arguments(self) -> dict:
        return {name: getattr(self, name) for name in _SETTINGS_KEYS}

    def replace(self, **changes) -> InflationaryFlow:
        """A copy with some constructor arguments changed, e.g. ``flow.replace(throw=False)``.

        Changing ``rtol``, ``atol`` or ``solver`` without a new ``stepsize_controller``
        rebuilds the default controller.
        """
        kwargs = dict(schedule=self.schedule, score=self.score, **self._arguments())
        unknown = changes.keys() - kwargs.keys()
        if unknown:
            raise ValueError(f"replace: unknown argument(s) {sorted(unknown)}")
        if {"rtol", "atol", "solver"} & changes.keys():
            del kwargs["stepsize_controller"]
        return InflationaryFlow(**{**kwargs, **changes})

    def settings(self) -> dict:
        """The solve and log-density settings as plain JSON data (no schedule, no score).

        Diffrax objects are described in a closed vocabulary, e.g. ``{"name": "Tsit5"}`` or
        ``{"name": "ExponentialMultistep", "order": 3}``; `from_settings` is the inverse.

        Raises:
            ValueError: naming the argument, for a solver, controller or adjoint (or an
                option of one) outside the vocabulary.

        Examples:
            >>> import jax.numpy as jnp
            >>> import numpyro_inflow as nif
            >>> gm = nif.GaussianMixtureScore(jnp.ones(1), jnp.zeros((1, 2)), jnp.eye(2)[None])
            >>> flow = nif.InflationaryFlow(nif.InflationSchedule.from_moments(*gm.moments()), gm)
            >>> flow.settings()["solver"], flow.settings()["stepsize_controller"]
            ({'name': 'Tsit5'}, {'name': 'PIDController', 'rtol': 1e-05, 'atol': 1e-05})
            >>> back = nif.InflationaryFlow.from_settings(flow.schedule, gm, flow.settings())
            >>> bool(back == flow)
            True
        """
        out = self._arguments()
        for key, table in _VOCABULARY.items():
            out[key] = _encode(out[key], key, table)
        return out

    @classmethod
    def from_settings(cls, schedule, score, settings: dict) -> InflationaryFlow:
        """Rebuild a flow from ``schedule``, ``score`` and the output of `settings`.

        Raises:
            ValueError: naming the key, for a missing or unknown key or a bad value.
        """
        if not isinstance(settings, dict):
            raise ValueError(f"settings: expected a dict; got {type(settings).__name__}")
        for key in _SETTINGS_KEYS:
            if key not in settings:
                raise ValueError(f"settings[{key!r}]: expected an entry; got none")
        for key in settings.keys() - set(_SETTINGS_KEYS):
            raise ValueError(
                f"settings[{key!r}]: expected one of the keys {list(_SETTINGS_KEYS)}; got an "
                "unknown key"
            )
        dtype = schedule.eigenvalues.dtype if isinstance(schedule, InflationSchedule) else None
        kwargs = dict(settings)
        for key, table in _VOCABULARY.items():
            kwargs[key] = _decode(settings[key], f"settings[{key!r}]", table, dtype)
        try:
            return cls(schedule, score, **kwargs)
        except ValueError as e:
            key, _, rest = str(e).partition(":")
            if key in _SETTINGS_KEYS:
                raise ValueError(f"settings[{key!r}]:{rest}") from None
            raise

    def _one(self, a, probes, encode: bool):
        """Encode (``0 -> T``) or decode one point; with ``probes``, also its log-det."""
        sch = self.schedule
        if encode:
            y0, t0, t1 = sch.scale(0.0) * sch.to_eigen(a), 0.0, sch.t_end
        else:
            y0, t0, t1 = sch.A0 * a, sch.t_end, 0.0
        if probes is not None:
            y0 = (y0, jnp.zeros((), y0.dtype))
        y1, info = self.config.solve(PFODEField(sch, self.score, probes), y0, t0, t1)
        v1, acc = (y1, None) if probes is None else y1
        out = v1 / sch.A0 if encode else sch.from_eigen(v1 / sch.scale(0.0))
        if probes is None:
            return out, info
        # log|det dz/dx| without the denoiser integral: sum log s(T) - D log A0 + T sum r / 2.
        linear = (
            jnp.sum(jnp.log(sch.scale(sch.t_end)))
            - sch.dim * jnp.log(sch.A0)
            + 0.5 * sch.t_end * jnp.sum(sch.rates)
        )
        return out, acc + (linear if encode else -linear), info

    def _probes(self, batch_shape, key, dtype):
        if not self.needs_trace_key:
            return "exact"
        if key is None:
            raise ValueError(
                "key: Hutchinson trace estimation (trace='hutchinson', or 'auto' with "
                f"D > {_EXACT_TRACE_MAX_DIM}) needs an explicit PRNG key; got None"
            )
        shape = (*batch_shape, self.num_probes, self.dim)
        return jax.random.rademacher(key, shape, dtype)

    def _run(self, a, name, encode, log_det=False, key=None):
        a = event_input(a, name, self.dim)
        probes = self._probes(a.shape[:-1], key, a.dtype) if log_det else None
        try:
            *out, info = _batched(self, a, probes, encode)
        except TypeError as e:
            if "custom_vjp" not in str(e):
                raise
            raise TypeError(_FORWARD_MODE_HINT) from e
        out = out[0] if len(out) == 1 else tuple(out)
        if self.throw:
            out = eqx.error_if(
                out,
                ~info.success,
                "InflationaryFlow: an ODE solve failed (step limit reached or non-finite "
                "state). Raise max_steps, loosen rtol/atol, or build the flow with "
                "throw=False to get NaN outputs and SolveInfo.success instead.",
            )
        return out, info

    def encode_with_info(self, x) -> tuple[jax.Array, SolveInfo]:
        """Like `encode`, also returning the `SolveInfo` of each solve."""
        return self._run(x, "x", True)

    def decode_with_info(self, z) -> tuple[jax.Array, SolveInfo]:
        """Like `decode`, also returning the `SolveInfo` of each solve."""
        return self._run(z, "z", False)

    def encode(self, x) -> jax.Array:
        """Map data ``x`` ``(..., D)`` to the latent ``z`` ``(..., D)`` (integrate 0 -> T)."""
        return self.encode_with_info(x)[0]

    def decode(self, z) -> jax.Array:
        """Map latents ``z`` ``(..., D)`` to data ``x`` ``(..., D)`` (integrate T -> 0)."""
        return self.decode_with_info(z)[0]

    def encode_with_log_det(self, x, key: jax.Array | None = None):
        r"""Latent ``z`` and $\log|\det \partial z/\partial x|$ from one augmented solve.

        Its ``z`` agrees with `encode`'s to solver accuracy (the log-det enters the error norm).

        Args:
            x: data ``(..., D)``.
            key: PRNG key for Hutchinson probes (needed only when that estimator is used).

        Returns:
            ``(z, log_det)`` with shapes ``(..., D)`` and ``(...)``.
        """
        return self._run(x, "x", True, True, key)[0]

    def decode_with_log_det(self, z, key: jax.Array | None = None):
        r"""Data ``x`` and $\log|\det \partial x/\partial z|$ from one augmented solve."""
        return self._run(z, "z", False, True, key)[0]

    def base_log_prob(self, z) -> jax.Array:
        """Log-density of the latent base ``N(0, diag(base_variance))`` at ``z`` ``(..., D)``."""
        var = self.base_variance
        return -0.5 * jnp.sum(z**2 / var + jnp.log(2 * jnp.pi * var), axis=-1)

    def log_prob(self, x, key: jax.Array | None = None) -> jax.Array:
        r"""Log-density $\log q(x)$ of "draw z from the base, decode" at ``x`` ``(..., D)``.

        For PR-reducing flows the $\epsilon$-regularised density, concentrated near a
        ``k``-dimensional set.
        """
        z, ld = self.encode_with_log_det(x, key)
        return self.base_log_prob(z) + ld

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

        ``reduced=True``: ``xi`` ``(..., k)``, decoded by `from_latent`; ``reduced=False``:
        ``xi`` ``(..., D)``, scaled by $\sqrt{\text{base variance}}$ and decoded.
        """
        if reduced:
            return self.from_latent(xi)
        xi = event_input(xi, "xi", self.dim)
        return self.decode(xi * jnp.sqrt(self.base_variance))

    def sample_latent(self, key: jax.Array, sample_shape=()) -> jax.Array:
        """Draws ``sample_shape + (D,)`` from the latent base (squeezed directions included)."""
        shape = (*tuple(sample_shape), self.dim)
        return jax.random.normal(key, shape, self.dtype) * jnp.sqrt(self.base_variance)

    def sample(self, key: jax.Array, sample_shape=()) -> jax.Array:
        """Draws ``sample_shape + (D,)`` from the flow: base draws, decoded."""
        return self.decode(self.sample_latent(key, sample_shape))


@eqx.filter_jit
def _batched(flow, a, probes, encode):
    flat = a.reshape(-1, flow.dim)
    if probes is None or isinstance(probes, str):
        out = jax.vmap(lambda p: flow._one(p, probes, encode))(flat)
    else:  # Hutchinson probes (..., P, D), one set per point
        per_point = probes.reshape(-1, *probes.shape[-2:])
        out = jax.vmap(lambda p, e: flow._one(p, e, encode))(flat, per_point)
    return jax.tree.map(lambda o: o.reshape(*a.shape[:-1], *o.shape[1:]), out)


# ---------------------------------------------------------------------- settings vocabulary
_SETTINGS_KEYS = tuple(
    "rtol atol solver stepsize_controller adjoint dt0 max_steps throw trace num_probes".split()
)
_RK = "Euler Heun Midpoint Ralston Bosh3 Tsit5 Dopri5 Dopri8".split()
_VOCABULARY = {
    "solver": (
        *(getattr(diffrax, name) for name in _RK),
        *(ExponentialEuler, ExponentialMidpoint, ExponentialMultistep),
    ),
    "stepsize_controller": (diffrax.PIDController, diffrax.ConstantStepSize, diffrax.StepTo),
    "adjoint": (diffrax.RecursiveCheckpointAdjoint, diffrax.ForwardMode, diffrax.DirectAdjoint),
}
_PID = diffrax.PIDController(rtol=1.0, atol=1.0)
_KEEP = object()  # marks an option that is always recorded
# Recorded options of each class, with the default value that is left out.
_OPTIONS = {
    ExponentialMultistep: {"order": _KEEP},
    diffrax.PIDController: {
        "rtol": _KEEP,
        "atol": _KEEP,
        **{k: getattr(_PID, k) for k in ("pcoeff", "icoeff", "dcoeff", "dtmin", "dtmax")},
        **{k: getattr(_PID, k) for k in ("factormin", "factormax", "safety")},
    },
    diffrax.StepTo: {"ts": _KEEP},
    diffrax.RecursiveCheckpointAdjoint: {"checkpoints": None},
}


def _option(obj, key):
    if key == "order":
        return obj.method_order
    value = getattr(obj, key)
    if key == "ts":
        return [float(t) for t in value]
    return value if value is None or isinstance(value, int) else float(value)


def _encode(obj, key: str, classes: tuple) -> dict:
    if type(obj) not in classes:
        names = [c.__name__ for c in classes]
        raise ValueError(
            f"{key}: expected one of {names} to save the flow; got {type(obj).__name__}"
        )
    spec = {"name": type(obj).__name__}
    for option, default in _OPTIONS.get(type(obj), {}).items():
        value = _option(obj, option)
        if default is _KEEP or value != default:
            spec[option] = value
    rebuilt = _decode(spec, key, classes, obj.ts.dtype if "ts" in spec else None)
    if not eqx.tree_equal(rebuilt, obj):
        raise ValueError(
            f"{key}: expected {spec['name']} with options among "
            f"{list(_OPTIONS.get(type(obj), {}))} (other options cannot be saved); got {obj!r}"
        )
    return spec


def _decode(spec, where: str, classes: tuple, dtype):
    names = {c.__name__: c for c in classes}
    if not isinstance(spec, dict) or spec.get("name") not in names:
        raise ValueError(f"{where}: expected {{'name': one of {list(names)}, ...}}; got {spec!r}")
    cls = names[spec["name"]]
    options = _OPTIONS.get(cls, {})
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    for k in kwargs.keys() - options.keys():
        raise ValueError(
            f"{where}: expected options among {list(options)} for {cls.__name__}; got {k!r}"
        )
    if "ts" in kwargs:
        kwargs["ts"] = jnp.asarray(kwargs["ts"], dtype)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{where}: expected valid options for {cls.__name__}; got {spec!r} ({e})"
        ) from None
