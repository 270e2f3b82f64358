r"""Inflationary flows as NumPyro objects: a transform, a distribution and a reparameterizer.

Three ways to use a trained (or oracle) `InflationaryFlow` as a
prior in a NumPyro model:

* `InflationaryFlowDistribution` (also ``InflationaryFlowDistribution(flow)``): a distribution over
  data space. ``numpyro.sample("x", InflationaryFlowDistribution(flow))`` works without any handler; NUTS
  then moves in data space and evaluates $\log q(x)$ by one augmented ODE solve
  per gradient (the instantaneous change of variables, DESIGN.md §2).
* `LatentReparam`: with ``numpyro.handlers.reparam(config={"x": LatentReparam()})``
  NUTS samples the flow's latent instead (``k``-dimensional for PR-reducing flows) and
  ``x`` becomes the decoded point, a deterministic site. No density and no Jacobian
  is needed, so each gradient is one plain decode solve; the latent posterior is
  also much better conditioned. This is the fast path.
* `InflationaryFlowTransform` / `ReducedLatentTransform`: the underlying
  NumPyro transforms (latent -> data), usable in ``TransformedDistribution`` and
  anywhere NumPyro takes a ``Transform``.

Failed ODE solves (step limit reached, non-finite state) never crash a NumPyro run:
the distribution and the reparameterizer rebuild the flow with ``throw=False``, so a
failure turns the log-density into $-\infty$ and the proposal is rejected like
a divergence. Count such events with `SolveFailureCounter`.
"""

from __future__ import annotations

import threading
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import Transform
from numpyro.infer.reparam import Reparam

from .flow import InflationaryFlow

__all__ = [
    "InflationaryFlowDistribution",
    "InflationaryFlowTransform",
    "LatentReparam",
    "ReducedLatentTransform",
    "SolveFailureCounter",
]


# ---------------------------------------------------------------------- failure counting
_ACTIVE_COUNTERS: list[SolveFailureCounter] = []
_LOCK = threading.Lock()


def _host_record(n_failed) -> None:
    n = int(jnp.sum(jnp.asarray(n_failed)))
    with _LOCK:
        for counter in _ACTIVE_COUNTERS:
            counter._count += n


def _record_failures(failed: jax.Array) -> None:
    """Report ``sum(failed)`` failed solves to every active `SolveFailureCounter`.

    The host callback runs only when something failed (under ``vmap`` the ``cond``
    becomes a ``select`` and it runs for every batch element, reporting 0 or more).
    """
    n = jnp.sum(failed.astype(jnp.int32))
    jax.lax.cond(n > 0, lambda: jax.debug.callback(_host_record, n), lambda: None)


class SolveFailureCounter:
    """Context manager counting failed ODE solves inside NumPyro objects of this module.

    Every log-density or decode evaluation of an `InflationaryFlowDistribution`
    or a `LatentReparam` site whose solve fails (step limit reached, non-finite
    state) adds one per failed point while a counter is active. Under NUTS such an
    evaluation has log-density $-\\infty$, so the proposal is rejected and the
    trajectory is marked divergent; the count says how many of the divergences came
    from the ODE solver. Counting works under ``jit``, ``vmap`` and ``grad`` (a JAX
    host callback that runs only when a solve failed).

    Attributes:
        count: failed solves seen so far (read it after the run).

    Example:
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


def _finite_rows(*arrays_and_event_ndims) -> jax.Array:
    ok = None
    for a, ndim in arrays_and_event_ndims:
        f = jnp.isfinite(a)
        if ndim:
            f = jnp.all(f, axis=tuple(range(-ndim, 0)))
        ok = f if ok is None else ok & f
    return ok


# ---------------------------------------------------------------------- flow storage
def _check_flow(flow, name: str = "flow") -> InflationaryFlow:
    if not isinstance(flow, InflationaryFlow):
        raise ValueError(f"{name}: expected an InflationaryFlow; got {type(flow).__name__}")
    return flow


def _robust(flow: InflationaryFlow, robust: bool) -> InflationaryFlow:
    return flow.replace(throw=False) if robust and flow.throw else flow


def _check_last(shape, name: str, dim: int) -> None:
    if len(shape) == 0 or shape[-1] != dim:
        raise ValueError(
            f"{name}: expected a shape ending in {dim} (..., {dim}); got shape {tuple(shape)}"
        )


class _FlowTransformBase(Transform):
    # The flow is kept split in two: its arrays (pytree leaves, traced under jit/vmap/grad)
    # and everything else (hashable static aux data), so a jitted function taking or
    # returning the transform never retraces for new weights.
    _params: InflationaryFlow
    _static: InflationaryFlow

    def __init__(self, flow: InflationaryFlow):
        flow = _check_flow(flow)
        self._params, self._static = eqx.partition(flow, eqx.is_array)

    @property
    def flow(self) -> InflationaryFlow:
        """The wrapped `InflationaryFlow`."""
        return eqx.combine(self._params, self._static)

    @property
    def domain(self):
        return constraints.real_vector

    @property
    def codomain(self):
        return constraints.real_vector

    def tree_flatten(self):
        return (self._params,), self._static

    @classmethod
    def tree_unflatten(cls, aux_data, params):
        self = cls.__new__(cls)
        self._params = params[0]
        self._static = aux_data
        return self

    def eq(self, other, static: bool = False):
        if type(other) is not type(self) or self._static != other._static:
            return False
        mine, theirs = jax.tree.leaves(self._params), jax.tree.leaves(other._params)
        if static:
            return all(a is b for a, b in zip(mine, theirs, strict=True))
        same = [jnp.array_equal(a, b) for a, b in zip(mine, theirs, strict=True)]
        return jnp.all(jnp.stack(same)) if same else True


class InflationaryFlowTransform(_FlowTransformBase):
    r"""The flow's decoder as a NumPyro bijection: latent $z \in R^D$ -> data $x$.

    ``__call__`` decodes (integrates the pfODE ``T -> 0``), ``inv``/``_inverse`` encodes.
    `call_with_intermediates` returns the decoded point together with
    $\log|\det\partial x/\partial z|$ from the same augmented solve, which
    `log_abs_det_jacobian` reuses, so a ``TransformedDistribution`` sample and its
    log-density cost one solve. Without intermediates the log-det comes from one
    augmented encode solve of ``y``: $-\log|\det \partial z/\partial x|$.

    For a PR-reducing flow this is the map of the full ``D``-dimensional latent, whose
    squeezed coordinates have the tiny base variances $\epsilon_i$; its log-det is a
    valid Jacobian (of the $\epsilon$-regularised density). Use
    `ReducedLatentTransform` for the ``k``-dimensional latent.

    The transform is a pytree: the flow's arrays are leaves and the rest is static aux
    data, so it works under ``jit``/``vmap``/``grad`` and can be passed to and returned
    from jitted functions. Failed solves raise or give NaN according to ``flow.throw``.

    Args:
        flow: an `InflationaryFlow`.

    Raises:
        ValueError: if ``flow`` is not an ``InflationaryFlow``.

    Example:
        >>> import jax.numpy as jnp, numpyro.distributions as dist
        >>> import numpyro_inflow as nif
        >>> gm = nif.GaussianMixtureScore(jnp.ones(1), jnp.zeros((1, 2)), jnp.eye(2)[None])
        >>> flow = nif.InflationaryFlow(nif.InflationSchedule.from_moments(*gm.moments()), gm)
        >>> t = nif.InflationaryFlowTransform(flow)
        >>> d = dist.TransformedDistribution(dist.Normal(0, 1).expand([2]).to_event(1), t)
        >>> d.event_shape
        (2,)
    """

    def __call__(self, x):
        return self.flow.decode(x)

    def _inverse(self, y):
        return self.flow.encode(y)

    def call_with_intermediates(self, x):
        """Decoded point and $\\log|\\det\\partial x/\\partial z|$ from one solve."""
        y, log_det = self.flow.decode_with_log_det(x)
        return y, log_det

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        r"""$\log|\det \partial y/\partial x|$, shape ``x.shape[:-1]``.

        Args:
            x: latent points ``(..., D)``.
            y: their decoded data points ``(..., D)``.
            intermediates: the log-det returned by `call_with_intermediates`;
                when ``None`` it is recomputed from ``y`` by one augmented encode solve.
        """
        if intermediates is not None:
            return intermediates
        _, log_det_encode = self.flow.encode_with_log_det(y)
        return -log_det_encode

    @property
    def sign(self):
        raise NotImplementedError(
            "InflationaryFlowTransform: a multivariate map has no single derivative sign"
        )

    def forward_shape(self, shape):
        _check_last(shape, "shape", self.flow.dim)
        return tuple(shape)

    def inverse_shape(self, shape):
        _check_last(shape, "shape", self.flow.dim)
        return tuple(shape)


class ReducedLatentTransform(_FlowTransformBase):
    r"""The decoder of a PR-reducing flow from its reduced latent: $R^k \to R^D$.

    ``__call__`` decodes ``z_k`` with the squeezed latent coordinates set to zero
    (`from_latent`); its image is a
    ``k``-dimensional surface in data space. ``_inverse`` is the left inverse
    `to_latent` (encode, keep the first ``k``
    coordinates): exact on the surface, a projection off it.

    Semantics: this map is **not a bijection** of $R^D$, so it has no Jacobian
    determinant and `log_abs_det_jacobian` raises. Distributions over data space
    built from it would be singular (supported on a ``k``-dimensional set); use it to
    push latent samples forward (`LatentReparam` does exactly this) or take the
    $\epsilon$-regularised full density of `InflationaryFlowTransform`.

    Args:
        flow: an `InflationaryFlow` (PR-reducing or not; for a
            PR-preserving flow ``k = D`` and this equals the full decoder).

    Raises:
        ValueError: if ``flow`` is not an ``InflationaryFlow``.
    """

    def __call__(self, x):
        return self.flow.from_latent(x)

    def _inverse(self, y):
        return self.flow.to_latent(y)

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        raise ValueError(
            "ReducedLatentTransform: expected a bijection to take a Jacobian determinant; "
            f"got a map from R^{self.flow.latent_dim} to R^{self.flow.dim} (PR-reducing). "
            "Use LatentReparam to sample in the reduced latent, or InflationaryFlowTransform "
            "for the epsilon-regularised full-dimensional density."
        )

    def forward_shape(self, shape):
        f = self.flow
        _check_last(shape, "shape", f.latent_dim)
        return (*tuple(shape)[:-1], f.dim)

    def inverse_shape(self, shape):
        f = self.flow
        _check_last(shape, "shape", f.dim)
        return (*tuple(shape)[:-1], f.latent_dim)


# ---------------------------------------------------------------------- the distribution
class InflationaryFlowDistribution(dist.Distribution):
    r"""The distribution of "draw the latent from the base, decode": a prior over data.

    ``sample`` draws $z \sim N(0, \operatorname{diag}(\text{base\_var}))$ and decodes
    it; ``log_prob`` is $\log q(x) = \log N(z) + \log|\det\partial z/\partial x|$
    from ONE augmented encode solve (NumPyro's generic ``TransformedDistribution``
    would solve once for the inverse and once more for the log-det). The event shape is
    ``(D,)``, the batch shape ``()``; ``expand`` and plates give batches of i.i.d.
    points, evaluated as one batched solve.

    Used as ``numpyro.sample("x", InflationaryFlowDistribution(flow))`` without any handler, NUTS works in data
    space with this density (support ``real_vector``, identity transform); this is
    correct but slower than `LatentReparam` (see the tutorial for numbers).

    Robustness: with ``robust=True`` (default) the flow is rebuilt with
    ``throw=False`` and a failed solve gives ``log_prob = -inf`` (a NaN sample when
    sampling); failures are counted by an active `SolveFailureCounter`.

    PR-reducing flows: their data-space density concentrates on a ``k``-dimensional set
    with widths $\sqrt{\epsilon_i}$ (tiny), a geometry that samplers in data space
    cannot explore. ``log_prob`` therefore raises unless ``regularized_density=True``;
    the intended use is ``LatentReparam``, which needs no density. Sampling always works.

    Args:
        flow: an `InflationaryFlow` of dimension ``D``.
        robust: rebuild the flow with ``throw=False`` (see above).
        regularized_density: allow ``log_prob`` for PR-reducing flows (the
            $\epsilon$-regularised density of
            `log_prob`).
        trace_key: a fixed PRNG key for Hutchinson probes when the flow estimates the
            divergence stochastically (``trace="hutchinson"``, or ``"auto"`` with
            ``D > 16``). The same probes are used at every evaluation, so the density is
            a smooth but randomly perturbed approximation: prefer ``LatentReparam``.
        validate_args: NumPyro's argument/sample validation flag.

    Raises:
        ValueError: for a non-flow argument; from ``log_prob``, for a stochastic-trace
            flow without ``trace_key`` or a PR-reducing flow without
            ``regularized_density=True``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import numpyro_inflow as nif
        >>> gm = nif.GaussianMixtureScore(jnp.ones(1), jnp.zeros((1, 2)), jnp.eye(2)[None])
        >>> flow = nif.InflationaryFlow(nif.InflationSchedule.from_moments(*gm.moments()), gm)
        >>> prior = InflationaryFlowDistribution(flow)
        >>> prior.sample(jax.random.key(0), (3,)).shape
        (3, 2)
    """

    arg_constraints: ClassVar[dict] = {}
    pytree_data_fields = ("_params", "_trace_key")
    pytree_aux_fields = ("_static", "_regularized", "_robust")

    def __init__(
        self,
        flow: InflationaryFlow,
        *,
        robust: bool = True,
        regularized_density: bool = False,
        trace_key: jax.Array | None = None,
        validate_args: bool | None = None,
    ):
        flow = _robust(_check_flow(flow), robust)
        self._params, self._static = eqx.partition(flow, eqx.is_array)
        self._trace_key = trace_key
        self._regularized = bool(regularized_density)
        self._robust = bool(robust)
        super().__init__(batch_shape=(), event_shape=(flow.dim,), validate_args=validate_args)

    @property
    def flow(self) -> InflationaryFlow:
        """The (possibly ``throw=False``) flow this distribution wraps."""
        return eqx.combine(self._params, self._static)

    @property
    def robust(self) -> bool:
        """Whether failed solves give ``-inf``/NaN instead of raising."""
        return self._robust

    @property
    def support(self):
        return constraints.real_vector

    @property
    def is_reducing(self) -> bool:
        """True when the flow is PR-reducing (reduced latent of dimension ``k < D``)."""
        return self._static.schedule.keep < self.event_shape[-1]

    def sample(self, key, sample_shape=()):
        flow = self.flow
        z = flow.sample_latent(key, tuple(sample_shape) + self.batch_shape)
        x = flow.decode(z)
        if self._robust:
            _record_failures(~_finite_rows((x, 1)))
        return x

    def log_prob(self, value, intermediates=None):
        flow = self.flow
        if self.is_reducing and not self._regularized:
            raise ValueError(
                f"flow: expected a PR-preserving flow where a full data-space density is "
                f"needed; got a PR-reducing flow (keep={flow.latent_dim} < D={flow.dim}), "
                "whose density is concentrated on a k-dimensional set. Sample the site with "
                "LatentReparam (numpyro.handlers.reparam(config={name: nif.LatentReparam()})) "
                "or pass regularized_density=True to accept the epsilon-regularised density"
            )
        if self._trace_key is None:
            try:  # sampling and LatentReparam never need the key: check only here
                flow._probes_for((), None, flow.schedule.eigenvalues.dtype)
            except ValueError:
                raise ValueError(
                    "trace_key: expected a PRNG key because this flow estimates the "
                    f"divergence stochastically (trace={flow.trace!r}, D={flow.dim}); got None. "
                    "Pass trace_key=... to the distribution, build the flow with "
                    "trace='exact', or use LatentReparam, which needs no density"
                ) from None
        value = jnp.asarray(value)
        _check_last(jnp.shape(value), "value", flow.dim)
        if self._validate_args:  # NumPyro's behaviour: warn, and -inf outside the support
            in_support = self._validate_sample(value)
            value = jnp.where(in_support[..., None], value, 0.0)
        z, log_det = flow.encode_with_log_det(value, self._trace_key)
        lp = flow.base_log_prob(z) + log_det
        if self._robust:
            ok = _finite_rows((lp, 0))
            _record_failures(~ok)
            lp = jnp.where(ok, lp, -jnp.inf)
        if self._validate_args:
            lp = jnp.where(in_support, lp, -jnp.inf)
        return lp

    @property
    def mean(self):
        raise NotImplementedError("InflationaryFlowDistribution: the mean has no closed form")

    @property
    def variance(self):
        raise NotImplementedError("InflationaryFlowDistribution: the variance has no closed form")


# ---------------------------------------------------------------------- the reparameterizer
class LatentReparam(Reparam):
    r"""Sample an `InflationaryFlowDistribution` site in the flow's latent space.

    ``numpyro.handlers.reparam(model, config={"x": LatentReparam()})`` replaces the site
    ``x`` by a standard-normal latent site ``"x_latent"`` and makes ``x`` the decoded
    point (a deterministic site). Samplers then move in the latent, where the prior is
    $N(0, I)$, and only the likelihood is evaluated in data space: no density,
    no Jacobian, one plain decode solve per evaluation.

    Latent dimension: for a PR-preserving flow the latent is ``D``-dimensional and the
    site has exactly the prior ``InflationaryFlowDistribution(flow)``. For a PR-reducing flow ``reduced=True``
    (default) samples the ``k`` kept coordinates and decodes with the squeezed ones set
    to zero: the prior is then the push-forward of $N(0, I_k)$ onto a
    ``k``-dimensional surface in data space (the model's intended low-dimensional
    prior). ``reduced=False`` samples all ``D`` standardized coordinates and scales the
    squeezed ones by $\sqrt{\epsilon_i}$, reproducing ``InflationaryFlowDistribution(flow)`` exactly
    (including its thin $\epsilon$ spread off the surface).

    Failed solves: with ``robust=True`` (inherited from the distribution) a failed decode
    gives a NaN site value and a ``numpyro.factor`` ``"<name>_solve_failed"`` of
    $-\infty$, so the proposal is rejected like a divergence; active
    `SolveFailureCounter` objects count it.

    Args:
        reduced: use the ``k``-dimensional latent of a PR-reducing flow.
        latent_suffix: the latent site is named ``name + latent_suffix``.

    Raises:
        ValueError: at an observed site or a site whose distribution is not an
            `InflationaryFlowDistribution`.

    Example:
        >>> import numpyro
        >>> import numpyro_inflow as nif
        >>> def model(flow):
        ...     return numpyro.sample("x", InflationaryFlowDistribution(flow))
        >>> latent_model = numpyro.handlers.reparam(model, config={"x": nif.LatentReparam()})
    """

    def __init__(self, reduced: bool = True, latent_suffix: str = "_latent"):
        if not isinstance(latent_suffix, str) or not latent_suffix:
            raise ValueError(f"latent_suffix: expected a non-empty string; got {latent_suffix!r}")
        self.reduced = bool(reduced)
        self.latent_suffix = latent_suffix

    def __call__(self, name, fn, obs):
        if obs is not None:
            raise ValueError(
                f"LatentReparam: expected a latent (unobserved) site; got observed site {name!r}"
            )
        base, expand_shape, event_dim = self._unwrap(fn)
        if not isinstance(base, InflationaryFlowDistribution):
            raise ValueError(
                f"LatentReparam: expected an InflationaryFlowDistribution at site {name!r} "
                f"(e.g. InflationaryFlowDistribution(flow)); got {type(base).__name__}"
            )
        flow = base.flow
        n_latent = flow.latent_dim if self.reduced else flow.dim
        latent_fn = dist.Normal(jnp.zeros((), flow.schedule.eigenvalues.dtype), 1.0)
        latent_fn = latent_fn.expand((*expand_shape, n_latent)).to_event(event_dim)
        xi = numpyro.sample(name + self.latent_suffix, latent_fn)
        return None, decode_standard_latent(base, xi, reduced=self.reduced, name=name)


def decode_standard_latent(prior, xi, *, reduced: bool = True, name: str = "x") -> jax.Array:
    r"""Decode a standardized latent ``xi`` inside a model, as `LatentReparam` does.

    ``xi`` is ``(..., k)`` with ``reduced=True`` (the kept coordinates; the squeezed
    ones are set to zero) or ``(..., D)`` with ``reduced=False`` (every coordinate,
    scaled by $\sqrt{\text{base variance}}$); the result is the data point ``(..., D)``.
    With a ``robust`` prior, a failed solve adds a ``numpyro.factor``
    ``"<name>_solve_failed"`` of $-\infty$ and is counted by active
    `SolveFailureCounter` objects.

    Args:
        prior: the `InflationaryFlowDistribution` (``InflationaryFlowDistribution(flow)``).
        xi: standardized latent values.
        reduced: whether ``xi`` holds only the ``k`` kept coordinates.
        name: the site name used in the failure factor's name.
    """
    flow = prior.flow
    if reduced and flow.latent_dim < flow.dim:
        pad = jnp.zeros((*jnp.shape(xi)[:-1], flow.dim - flow.latent_dim), xi.dtype)
        z = jnp.concatenate([xi, pad], axis=-1)
    else:
        z = xi * jnp.sqrt(flow.base_variance)
    x = flow.decode(z)
    if prior.robust:
        ok = _finite_rows((x, 1))
        _record_failures(~ok)
        numpyro.factor(f"{name}_solve_failed", jnp.where(ok, 0.0, -jnp.inf))
    return x
