r"""Inflationary flows as NumPyro transforms, a distribution and a reparameterization.

`InflationaryFlowTransform` and `ReducedLatentTransform` are NumPyro ``Transform`` objects,
`InflationaryFlowDistribution` a ``TransformedDistribution`` (de Albuquerque & Pearson 2024)
and `LatentReparam` a ``TransformReparam`` from the standardized latent. A failed ODE solve
gives log-density $-\infty$ (a divergence), counted by `SolveFailureCounter`.
"""

from __future__ import annotations

import threading

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import AffineTransform, IndependentTransform, Transform
from numpyro.infer.reparam import TransformReparam
from numpyro.primitives import Messenger

from .flow import InflationaryFlow

__all__ = [
    "InflationaryFlowDistribution",
    "InflationaryFlowTransform",
    "LatentReparam",
    "ReducedLatentTransform",
    "SolveFailureCounter",
    "reject_failed_solves",
]


_ACTIVE_COUNTERS: list[SolveFailureCounter] = []
_LOCK = threading.Lock()


def _host_record(n_failed) -> None:
    n = int(np.sum(n_failed))
    with _LOCK:
        for counter in _ACTIVE_COUNTERS:
            counter._count += n


def _succeeded(a: jax.Array, event_ndim: int) -> jax.Array:
    # a host callback counts the non-finite points (under vmap per element, maybe with 0)
    ok = jnp.all(jnp.isfinite(a), axis=tuple(range(a.ndim - event_ndim, a.ndim)))
    n = jnp.sum(~ok, dtype=jnp.int32)
    jax.lax.cond(n > 0, lambda: jax.debug.callback(_host_record, n), lambda: None)
    return ok


class SolveFailureCounter:
    """Context manager counting failed ODE solves inside the NumPyro objects of this module.

    Each failed point of an `InflationaryFlowDistribution` or `LatentReparam` site adds
    one while the counter is active, also under ``jit``, ``vmap`` and ``grad``.

    Examples:
        >>> import numpyro_inflow as nif
        >>> with nif.SolveFailureCounter() as failures:
        ...     pass  # mcmc.run(...)
        >>> failures.count
        0
    """

    def __init__(self):
        self._count = 0

    @property
    def count(self) -> int:
        """Number of failed solves recorded (waits for pending callbacks first)."""
        jax.effects_barrier()
        return self._count

    def reset(self) -> None:
        """Set the count back to zero."""
        jax.effects_barrier()
        self._count = 0

    def __enter__(self) -> SolveFailureCounter:
        with _LOCK:
            _ACTIVE_COUNTERS.append(self)
        return self

    def __exit__(self, *exc) -> None:
        jax.effects_barrier()
        with _LOCK:
            _ACTIVE_COUNTERS.remove(self)

    def __repr__(self) -> str:
        return f"SolveFailureCounter(count={self._count})"


def reject_failed_solves(name: str, x) -> jax.Array:
    r"""Inside a NumPyro model, reject every trace in which decoding ``x`` failed.

    Adds the factor ``"<name>_solve_failed"``: $0$ per finite point of ``x``, $-\infty$
    per point with a NaN (a failed solve of a ``throw=False`` flow).

    Args:
        name: the site name the factor is named after.
        x: decoded points ``(..., D)``.

    Returns:
        ``x``, unchanged.

    Examples:
        >>> import jax.numpy as jnp, numpyro
        >>> tr = numpyro.handlers.trace(
        ...     lambda: reject_failed_solves("x", jnp.array([[0.0, 1.0], [jnp.nan, 0.0]]))
        ... ).get_trace()
        >>> tr["x_solve_failed"]["fn"].log_factor.tolist()
        [0.0, -inf]
    """
    numpyro.factor(f"{name}_solve_failed", jnp.where(_succeeded(x, 1), 0.0, -jnp.inf))
    return x


def _flow_arg(flow) -> InflationaryFlow:
    if not isinstance(flow, InflationaryFlow):
        raise ValueError(f"flow: expected an InflationaryFlow; got {type(flow).__name__}")
    return flow


def _last_axis(shape, name: str, dim: int, new_dim: int | None = None) -> tuple:
    # ``shape`` with its last axis ``dim`` replaced by ``new_dim`` (default: kept)
    if len(shape) == 0 or shape[-1] != dim:
        raise ValueError(
            f"{name}: expected a shape ending in {dim} (..., {dim}); got shape {tuple(shape)}"
        )
    return (*tuple(shape)[:-1], dim if new_dim is None else new_dim)


class _FlowTransform(Transform):
    # the flow's arrays are pytree leaves, the rest static aux data: jit never retraces
    domain = constraints.real_vector
    codomain = constraints.real_vector
    _trace_key: jax.Array | None = None
    _in_dim = "dim"  # the flow attribute giving the input dimension

    def __init__(self, flow: InflationaryFlow):
        self._params, self._static = eqx.partition(_flow_arg(flow), eqx.is_array)

    @property
    def flow(self) -> InflationaryFlow:
        """The wrapped `InflationaryFlow`."""
        return eqx.combine(self._params, self._static)

    def tree_flatten(self):
        aux = (("_params", "_trace_key"), {"_static": self._static})
        return (self._params, self._trace_key), aux

    def eq(self, other, static: bool = False):
        if type(other) is not type(self) or self._static != other._static:
            return False
        mine, theirs = self.tree_flatten()[0], other.tree_flatten()[0]
        if static:  # the same leaf objects, decided without comparing values
            mine, theirs = jax.tree.map(id, mine), jax.tree.map(id, theirs)
        return eqx.tree_equal(mine, theirs)

    def forward_shape(self, shape) -> tuple:
        return _last_axis(shape, "shape", getattr(self.flow, self._in_dim), self.flow.dim)

    def inverse_shape(self, shape) -> tuple:
        return _last_axis(shape, "shape", self.flow.dim, getattr(self.flow, self._in_dim))


class InflationaryFlowTransform(_FlowTransform):
    r"""The flow's decoder as a NumPyro bijection: latent $z \in R^D$ -> data $x$.

    ``__call__`` decodes, ``inv`` encodes; `call_with_intermediates` also returns
    $\log|\det\partial x/\partial z|$ from the same solve. For a PR-reducing flow this is
    the full ``D``-dimensional map; failed solves raise or give NaN per ``flow.throw``.

    Args:
        flow: an `InflationaryFlow`.
        trace_key: a fixed PRNG key for the Hutchinson probes (if ``flow.needs_trace_key``).

    Raises:
        ValueError: if ``flow`` is not an ``InflationaryFlow``.

    Examples:
        >>> import jax.numpy as jnp, numpyro.distributions as dist, numpyro_inflow as nif
        >>> gm = nif.GaussianMixtureScore(jnp.ones(1), jnp.zeros((1, 2)), jnp.eye(2)[None])
        >>> flow = nif.InflationaryFlow(nif.InflationSchedule.from_moments(*gm.moments()), gm)
        >>> t = nif.InflationaryFlowTransform(flow)
        >>> d = dist.TransformedDistribution(dist.Normal(0, 1).expand([2]).to_event(1), t)
        >>> d.event_shape
        (2,)
    """

    def __init__(self, flow: InflationaryFlow, *, trace_key: jax.Array | None = None):
        super().__init__(flow)
        self._trace_key = trace_key

    @property
    def trace_key(self) -> jax.Array | None:
        """The PRNG key of the Hutchinson probes (``None`` for an exact trace)."""
        return self._trace_key

    def __call__(self, x) -> jax.Array:
        return self.flow.decode(x)

    def _inverse(self, y) -> jax.Array:
        return self.flow.encode(y)

    def call_with_intermediates(self, x) -> tuple[jax.Array, jax.Array]:
        """Decoded point and $\\log|\\det\\partial x/\\partial z|$ from one solve."""
        return self.flow.decode_with_log_det(x, self._trace_key)

    def log_abs_det_jacobian(self, x, y, intermediates=None) -> jax.Array:
        r"""$\log|\det \partial y/\partial x|$ ``(...)``: ``intermediates`` or one encode solve."""
        if intermediates is not None:
            return intermediates
        return -self.flow.encode_with_log_det(y, self._trace_key)[1]


class ReducedLatentTransform(_FlowTransform):
    r"""The decoder of a PR-reducing flow from its reduced latent: $R^k \to R^D$.

    ``__call__`` is `from_latent`, ``_inverse`` its left inverse `to_latent`. **Not a
    bijection** of $R^D$ (`log_abs_det_jacobian` raises): it pushes latent samples
    forward, as `LatentReparam` does.

    Args:
        flow: an `InflationaryFlow` (if PR-preserving, ``k = D``: the full decoder).

    Raises:
        ValueError: if ``flow`` is not an ``InflationaryFlow``.
    """

    _in_dim = "latent_dim"

    def __call__(self, x) -> jax.Array:
        return self.flow.from_latent(x)

    def _inverse(self, y) -> jax.Array:
        return self.flow.to_latent(y)

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        raise ValueError(
            "ReducedLatentTransform: expected a bijection to take a Jacobian determinant; got "
            f"a map R^{self.flow.latent_dim} -> R^{self.flow.dim}. Sample with LatentReparam, or "
            "use InflationaryFlowTransform for the epsilon-regularised density."
        )


class InflationaryFlowDistribution(dist.TransformedDistribution):
    r"""The distribution of "draw the latent from the base, decode": a prior over data.

    NumPyro's ``TransformedDistribution`` of $N(0, \operatorname{diag}(\text{base variance}))$
    under an `InflationaryFlowTransform`. ``log_prob`` reuses the log-det of the sampling
    solve when given its intermediates, else runs one augmented encode solve. A
    PR-reducing flow's density concentrates near a ``k``-dimensional set that data-space
    samplers cannot explore: ``log_prob`` raises unless ``regularized_density=True``.

    Args:
        flow: an `InflationaryFlow` of dimension ``D``.
        robust: rebuild the flow with ``throw=False``: a failed solve gives
            ``log_prob = -inf`` (a NaN sample), counted by `SolveFailureCounter`.
        regularized_density: allow ``log_prob`` for PR-reducing flows (the
            $\epsilon$-regularised density).
        trace_key: a fixed PRNG key for the Hutchinson probes when
            ``flow.needs_trace_key`` (a smooth but randomly perturbed density).
        validate_args: NumPyro's argument/sample validation flag.

    Raises:
        ValueError: for a non-flow argument; from ``log_prob``, for a stochastic-trace
            flow without ``trace_key`` or a PR-reducing one without ``regularized_density``.

    Examples:
        >>> import jax, jax.numpy as jnp, numpyro_inflow as nif
        >>> gm = nif.GaussianMixtureScore(jnp.ones(1), jnp.zeros((1, 2)), jnp.eye(2)[None])
        >>> flow = nif.InflationaryFlow(nif.InflationSchedule.from_moments(*gm.moments()), gm)
        >>> prior = nif.InflationaryFlowDistribution(flow)
        >>> prior.sample(jax.random.key(0), (3,)).shape
        (3, 2)
    """

    pytree_aux_fields = ("_regularized", "robust")

    def __init__(
        self,
        flow: InflationaryFlow,
        *,
        robust: bool = True,
        regularized_density: bool = False,
        trace_key: jax.Array | None = None,
        validate_args: bool | None = None,
    ):
        flow = _flow_arg(flow)
        flow = flow.replace(throw=False) if robust and flow.throw else flow
        self._regularized, self.robust = bool(regularized_density), bool(robust)
        base = dist.Normal(jnp.zeros((), flow.dtype), jnp.sqrt(flow.base_variance))
        transform = InflationaryFlowTransform(flow, trace_key=trace_key)
        super().__init__(base.to_event(1), transform, validate_args=validate_args)

    # event_dim=1 tells NumPyro's class-level checks (infer_shapes) the event is a vector
    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self):
        return constraints.real_vector

    @classmethod
    def infer_shapes(cls, flow=None, **kwargs) -> tuple[tuple, tuple]:
        """``(batch_shape, event_shape) = ((), (D,))`` for ``flow`` itself (not its shape).

        Raises:
            NotImplementedError: if ``flow`` is not an `InflationaryFlow`.
        """
        if isinstance(flow, InflationaryFlow):
            return (), (flow.dim,)
        raise NotImplementedError(
            "InflationaryFlowDistribution.infer_shapes: the event shape (D,) is the flow's; pass it"
        )

    @property
    def flow(self) -> InflationaryFlow:
        """The (possibly ``throw=False``) flow this distribution wraps."""
        return self.transforms[0].flow

    @property
    def is_reducing(self) -> bool:
        """True when the flow is PR-reducing (reduced latent of dimension ``k < D``)."""
        return self.flow.latent_dim < self.event_shape[-1]

    def _density_error(self) -> ValueError | None:
        flow = self.flow
        if self.is_reducing and not self._regularized:
            return ValueError(
                "flow: expected a PR-preserving flow where a data-space density is needed; got "
                f"a PR-reducing flow (keep={flow.latent_dim} < D={flow.dim}). Sample the site "
                "with LatentReparam or pass regularized_density=True (epsilon-regularised)"
            )
        if flow.needs_trace_key and self.transforms[0].trace_key is None:
            return ValueError(
                "trace_key: expected a PRNG key for this flow's stochastic divergence "
                f"(trace={flow.trace!r}, D={flow.dim}); got None. Pass trace_key=..., build "
                "the flow with trace='exact', or use LatentReparam (no density needed)"
            )
        return None

    def _counted(self, x) -> jax.Array:
        if self.robust:
            _succeeded(x, 1)
        return x

    def sample(self, key, sample_shape=()) -> jax.Array:
        return self._counted(super().sample(key, sample_shape))

    def sample_with_intermediates(self, key, sample_shape=()) -> tuple[jax.Array, list]:
        if self._density_error() is not None:  # no density to reuse a log-det for
            return self.sample(key, sample_shape), []
        x, intermediates = super().sample_with_intermediates(key, sample_shape)
        return self._counted(x), intermediates

    def log_prob(self, value, intermediates=None) -> jax.Array:
        if (error := self._density_error()) is not None:
            raise error
        _last_axis(jnp.shape(value), "value", self.event_shape[-1])
        # validate the raw value as NumPyro does: a concrete value warns even under jit
        in_support = self._validate_sample(value) if self._validate_args else None
        if in_support is not None:
            value = jnp.where(jnp.expand_dims(in_support, -1), value, 0.0)
        flow = self.flow  # base_log_prob: base_dist's without validating a NaN z
        if intermediates:  # [[z, log|det dx/dz|]]
            ((z, log_det),) = intermediates
            lp = flow.base_log_prob(z) - log_det
            ok = jnp.isfinite(lp)  # a failed sample was counted when it was drawn
        else:
            z, log_det = flow.encode_with_log_det(value, self.transforms[0].trace_key)
            lp = flow.base_log_prob(z) + log_det
            ok = _succeeded(lp, 0)
        if self.robust:
            lp = jnp.where(ok, lp, -jnp.inf)
        return lp if in_support is None else jnp.where(in_support, lp, -jnp.inf)


class _Renamed(Messenger):
    # TransformReparam's base site is name + "_base"; ours is name + latent_suffix
    def __init__(self, old: str, new: str):
        super().__init__()
        self.old, self.new = old, new

    def process_message(self, msg):
        if msg["name"] == self.old:
            msg["name"] = self.new


class LatentReparam(TransformReparam):
    r"""Sample an `InflationaryFlowDistribution` site in the flow's standardized latent.

    Replaces the site ``x`` by a standard-normal site ``"x_latent"`` $\xi$ and makes ``x``
    the deterministic ``flow.decode_standardized(xi, reduced=...)``: one plain decode per
    evaluation. With a ``robust`` prior a failed decode is rejected (`reject_failed_solves`).

    Args:
        reduced: use the ``k``-dimensional latent of a PR-reducing flow (else all ``D``).
        latent_suffix: the latent site is named ``name + latent_suffix``.

    Raises:
        ValueError: at an observed site or one that is not an `InflationaryFlowDistribution`.

    Examples:
        >>> import numpyro, numpyro_inflow as nif
        >>> def model(flow):
        ...     return numpyro.sample("x", nif.InflationaryFlowDistribution(flow))
        >>> latent_model = numpyro.handlers.reparam(model, config={"x": nif.LatentReparam()})
    """

    def __init__(self, reduced: bool = True, latent_suffix: str = "_latent"):
        if not isinstance(latent_suffix, str) or not latent_suffix:
            raise ValueError(f"latent_suffix: expected a non-empty string; got {latent_suffix!r}")
        self.reduced, self.latent_suffix = bool(reduced), latent_suffix

    def __call__(self, name, fn, obs):
        if obs is not None:
            raise ValueError(
                f"LatentReparam: expected a latent (unobserved) site; got observed site {name!r}"
            )
        prior, expand_shape, event_dim = self._unwrap(fn)
        if not isinstance(prior, InflationaryFlowDistribution):
            raise ValueError(
                f"LatentReparam: expected an InflationaryFlowDistribution at site {name!r} "
                f"(e.g. InflationaryFlowDistribution(flow)); got {type(prior).__name__}"
            )
        flow = prior.flow
        if self.reduced and prior.is_reducing:
            n, transforms = flow.latent_dim, [ReducedLatentTransform(flow)]
        else:
            scale = IndependentTransform(AffineTransform(0.0, jnp.sqrt(flow.base_variance)), 1)
            n, transforms = flow.dim, [scale, prior.transforms[0]]
        base = dist.Normal(jnp.zeros((), flow.dtype), 1.0).expand([n]).to_event(1)
        standard = dist.TransformedDistribution(base, transforms)
        with _Renamed(f"{name}_base", name + self.latent_suffix):
            _, x = super().__call__(name, self._wrap(standard, expand_shape, event_dim), None)
        return None, reject_failed_solves(name, x) if prior.robust else x
