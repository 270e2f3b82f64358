"""Input validation shared by the public entry points.

Every check raises `ValueError` phrased "``name``: expected X; got Y". Value checks
(finiteness) run only on concrete arrays: inside ``jit`` the ODE solve itself flags
non-finite states.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when ``x`` holds values now (not an abstract tracer under a transform)."""
    return not isinstance(x, jax.core.Tracer)


def as_float_array(x, name: str, *, min_ndim: int = 0, dtype=None) -> jax.Array:
    """Convert ``x`` to a floating-point JAX array, refusing integer and boolean input."""
    arr = x if isinstance(x, jax.Array) else jnp.asarray(np.asarray(x))  # tracers included
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise ValueError(
            f"{name}: expected a floating-point array; got dtype {arr.dtype} "
            f"(convert with {name}.astype('float32') if the values are meant as reals)"
        )
    if dtype is not None:
        arr = arr.astype(dtype)
    if arr.ndim < min_ndim:
        raise ValueError(
            f"{name}: expected at least {min_ndim} dimension(s); got shape {arr.shape}"
        )
    return arr


def check_finite(x, name: str) -> None:
    """Raise if a concrete array holds NaN or infinity (checked in NumPy, so also while an
    outer function is traced)."""
    if is_concrete(x) and not (finite := np.isfinite(np.asarray(x))).all():
        raise ValueError(
            f"{name}: expected finite values; got {int((~finite).sum())} NaN/inf entries"
        )


def check_event_dim(x, name: str, dim: int) -> None:
    """Raise unless the last axis of ``x`` has length ``dim``."""
    if x.ndim == 0 or x.shape[-1] != dim:
        raise ValueError(
            f"{name}: expected an array whose last dimension is {dim} (shape (..., {dim})); "
            f"got shape {tuple(x.shape)}"
        )


def check_positive(value, name: str) -> float:
    """Return ``value`` as a float, raising unless it is finite and > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = np.nan
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name}: expected a positive finite number; got {value!r}")
    return v


def event_input(x, name: str, dim: int) -> jax.Array:
    """Validate a batch of points ``(..., dim)``: float dtype, last axis, finite values."""
    arr = as_float_array(x, name, min_ndim=1)
    check_event_dim(arr, name, dim)
    check_finite(arr, name)
    return arr


def check_positive_int(value, name: str) -> int:
    """Return ``value`` as an int, raising unless it is an integer (not a bool) >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: expected a positive integer; got {value!r}")
    return int(value)
