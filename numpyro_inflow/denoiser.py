r"""Learned denoisers: EDM-style preconditioning per eigen-direction, and the DSM loss.

Per eigen-direction, with data variance $\lambda_i$ and noise variance $\gamma_i(t)$
(EDM generalised by de Albuquerque & Pearson 2024, section 3 and appendix B):

$$
c_{in} = \frac{1}{\sqrt{\lambda + \gamma}},\quad
c_{skip} = \frac{\lambda}{\lambda + \gamma},\quad
c_{out} = \sqrt{\frac{\lambda\gamma}{\lambda + \gamma}},\quad
D(w, t) = c_{skip}\, w + c_{out}\, F_\theta(c_{in} w, c_{noise}(t)).
$$

$c_{skip} w$ is the Wiener filter and $c_{out}^2$ its posterior variance, so the target
$(u_0 - c_{skip} w)/c_{out}$ has unit variance (for Gaussian data the optimum is $F = 0$).
The noise label $c_{noise} = t / T_{ref}$ is affine in every direction's log noise level
and lies in ``[0, 1]``, where the fixed-frequency embedding of `numpyro_inflow.nets`
resolves it smoothly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp

from ._checks import check_positive, check_positive_int
from .nets import NETWORKS, build_network
from .schedule import InflationSchedule
from .scores import AbstractScore

__all__ = ["LearnedDenoiser", "denoising_loss", "denoising_loss_terms", "preconditioning"]

_SPACES = ("eigen", "data")
_CONFIG_VERSION = 1


def preconditioning(schedule: InflationSchedule, t, t_ref: float | None = None):
    r"""EDM coefficients per eigen-direction at time ``t``.

    Args:
        schedule: the inflation schedule (gives $\lambda$ and $\gamma(t)$).
        t: time, a scalar (``vmap`` for batches).
        t_ref: the time mapped to ``c_noise = 1`` (default: ``schedule.t_end``).

    Returns:
        ``(c_in, c_skip, c_out, c_noise)``; the first three have shape ``(D,)``,
        ``c_noise`` is a scalar.
    """
    lam, gamma = schedule.eigenvalues, schedule.gamma(t)
    total = lam + gamma
    c_noise = jnp.asarray(t, lam.dtype) / (schedule.t_end if t_ref is None else t_ref)
    return jax.lax.rsqrt(total), lam / total, jnp.sqrt(lam * gamma / total), c_noise


def denoising_loss_terms(
    score: AbstractScore, schedule: InflationSchedule, u0: jax.Array, t: jax.Array, eps: jax.Array
) -> jax.Array:
    r"""Per-example denoising loss $\sum_i ((D_i(u_0 + n, t) - u_{0i})/c_{out,i})^2$.

    Deterministic given the draws, so a validation set can be scored with fixed noise.

    Args:
        score: any score object (a `LearnedDenoiser` or an exact oracle).
        schedule: the schedule.
        u0: clean eigen coordinates ``(B, D)``.
        t: times ``(B,)``.
        eps: standard normal draws ``(B, D)``; the noise is $\sqrt{\gamma(t)}\,\epsilon$.

    Returns:
        Losses ``(B,)``.
    """

    def one(u, ti, e):
        _, _, c_out, _ = preconditioning(schedule, ti)
        w = u + jnp.sqrt(schedule.gamma(ti)) * e
        d = score.denoise(w, ti, schedule)
        return jnp.sum(((d - u) / c_out) ** 2)

    return jax.vmap(one)(u0, t, eps)


def denoising_loss(
    score: AbstractScore,
    schedule: InflationSchedule,
    u0: jax.Array,
    key: jax.Array,
    t_min: float = 1e-7,
) -> jax.Array:
    r"""Denoising score-matching loss, averaged over a batch.

    Draws $t \sim U[t_{min}, T]$ and $n \sim N(0, \operatorname{diag}\gamma(t))$ per
    example: the batch mean of `denoising_loss_terms` (at least ``D`` for Gaussian data).

    Args:
        score: the denoiser.
        schedule: the schedule.
        u0: clean eigen coordinates ``(B, D)``.
        key: PRNG key.
        t_min: smallest time drawn.

    Returns:
        The scalar loss.
    """
    kt, kn = jax.random.split(key)
    t = jax.random.uniform(kt, u0.shape[:1], u0.dtype, t_min, schedule.t_end)
    eps = jax.random.normal(kn, u0.shape, u0.dtype)
    return jnp.mean(denoising_loss_terms(score, schedule, u0, t, eps))


def _hyperparameters(net: nn.Module) -> dict:
    skip = ("parent", "name", "dim")
    values = {f.name: getattr(net, f.name) for f in dataclasses.fields(net) if f.name not in skip}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _network(architecture: str, dim: int, dtype, hyperparameters: dict, name: str) -> nn.Module:
    try:
        return build_network(architecture, dim, dtype=str(jnp.dtype(dtype)), **hyperparameters)
    except TypeError as err:
        raise ValueError(
            f"{name}: expected hyperparameters of {architecture!r}; got {err}"
        ) from None


def _init_params(net: nn.Module, key: jax.Array | None = None):
    dt = jnp.dtype(net.dtype)
    x, c = jnp.zeros((1, net.dim), dt), jnp.zeros((1,), dt)
    return net.init(jax.random.key(0) if key is None else key, x, c)["params"]


class LearnedDenoiser(AbstractScore):
    r"""A trained denoiser $D(w,t) = c_{skip} w + c_{out} F_\theta(c_{in} w, c_{noise})$.

    Array leaves are the weights, the flax module is static. Build one with `init`;
    `numpyro_inflow.fit` trains it; `config` and `from_config` rebuild a skeleton.

    Attributes:
        params: the flax parameter pytree.
        network: the flax module (static).
        architecture: ``"mlp"`` or ``"unet"``.
        space: ``"eigen"`` (the network sees eigen coordinates) or ``"data"`` (rotated
            to data space and back; for convolutional networks on images).
        t_ref: the time mapped to ``c_noise = 1`` (the schedule's end time at training).
    """

    params: Any
    network: nn.Module = eqx.field(static=True)
    architecture: str = eqx.field(static=True)
    space: str = eqx.field(static=True)
    t_ref: float = eqx.field(static=True)

    def __init__(self, params, network: nn.Module, architecture: str, space: str, t_ref: float):
        if architecture not in NETWORKS:
            raise ValueError(
                f"architecture: expected one of {sorted(NETWORKS)}; got {architecture!r}"
            )
        if space not in _SPACES:
            raise ValueError(f"space: expected one of {_SPACES}; got {space!r}")
        self.params = params
        self.network = network
        self.architecture = architecture
        self.space = space
        self.t_ref = check_positive(t_ref, "t_ref")

    @classmethod
    def init(
        cls,
        key: jax.Array,
        dim: int,
        t_ref: float,
        architecture: str = "mlp",
        space: str | None = None,
        dtype: str = "float32",
        **hyperparameters,
    ) -> LearnedDenoiser:
        """A freshly initialised denoiser.

        Args:
            key: PRNG key for the weights.
            dim: data dimension ``D``.
            t_ref: time mapped to ``c_noise = 1`` (use ``schedule.t_end``).
            architecture: ``"mlp"`` or ``"unet"``.
            space: ``"eigen"`` or ``"data"``; default ``"eigen"`` for the MLP and
                ``"data"`` for the U-Net.
            dtype: ``"float32"`` or ``"float64"``.
            **hyperparameters: network attributes (e.g. ``width``, ``depth``).

        Returns:
            The denoiser.

        Raises:
            ValueError: for unknown architectures, spaces or hyperparameters.

        Examples:
            >>> import jax
            >>> den = LearnedDenoiser.init(jax.random.key(0), 2, t_ref=10.0, width=16, depth=1)
            >>> den.dim
            2
        """
        dim = check_positive_int(dim, "dim")
        if space is None:
            space = "data" if architecture == "unet" else "eigen"
        net = _network(architecture, dim, dtype, hyperparameters, "hyperparameters")
        return cls(_init_params(net, key), net, architecture, space, t_ref)

    @property
    def dim(self) -> int:
        return self.network.dim

    @property
    def num_parameters(self) -> int:
        """Number of trained weights."""
        return sum(int(p.size) for p in jax.tree.leaves(self.params))

    def config(self) -> dict:
        """JSON-serialisable description from which `from_config` rebuilds a skeleton.

        Returns:
            ``{"type", "version", "architecture", "hyperparameters", "dim", "dtype",
            "space", "t_ref"}``.
        """
        hp = _hyperparameters(self.network)
        dtype = hp.pop("dtype")
        return {
            "type": "LearnedDenoiser",
            "version": _CONFIG_VERSION,
            "architecture": self.architecture,
            "hyperparameters": hp,
            "dim": self.dim,
            "dtype": dtype,
            "space": self.space,
            "t_ref": self.t_ref,
        }

    @classmethod
    def from_config(cls, config: dict) -> LearnedDenoiser:
        """A skeleton from `config` with ``jax.ShapeDtypeStruct`` weights (no memory).

        Fill it with ``eqx.tree_deserialise_leaves(path, skeleton)``.

        Raises:
            ValueError: for a malformed or incompatible configuration.
        """
        required = ("architecture", "hyperparameters", "dim", "dtype", "space", "t_ref")
        missing = [k for k in required if k not in config]
        if missing:
            raise ValueError(f"config: expected the keys {list(required)}; missing {missing}")
        version = config.get("version", _CONFIG_VERSION)
        if version > _CONFIG_VERSION:
            raise ValueError(
                f"config: expected a LearnedDenoiser config of version <= {_CONFIG_VERSION}; "
                f"got version {version} (saved by a newer numpyro_inflow)"
            )
        hp, arch = config["hyperparameters"], config["architecture"]
        net = _network(arch, int(config["dim"]), config["dtype"], hp, "config")
        return eqx.filter_eval_shape(
            lambda: cls(_init_params(net), net, arch, config["space"], config["t_ref"])
        )

    def apply(self, x_in: jax.Array, c_noise: jax.Array) -> jax.Array:
        r"""The raw network output $F_\theta$ for inputs ``(..., D)`` and labels ``(...)``."""
        return self.network.apply({"params": self.params}, x_in, c_noise)

    def denoise(self, w, t, schedule):
        c_in, c_skip, c_out, c_noise = preconditioning(schedule, t, self.t_ref)
        if self.space == "data":
            f = self.apply(c_in * w @ schedule.eigenvectors.T, c_noise) @ schedule.eigenvectors
        else:
            f = self.apply(c_in * w, c_noise)
        return c_skip * w + c_out * f.astype(w.dtype)
