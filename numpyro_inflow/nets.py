r"""Flax networks for learned denoisers: an MLP for vectors and a small U-Net for images.

Both map a preconditioned input ``x`` ``(..., D)`` and a noise label ``c_noise`` ``(...)``
to the output $F_\theta$ ``(..., D)`` of `numpyro_inflow.denoiser`. Flax *linen*: a module
is an immutable, hashable description (a static field of `LearnedDenoiser`, its
hyperparameters the JSON configuration) with the weights in a separate pytree.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["MLP", "NETWORKS", "UNet", "build_network", "fourier_embedding"]


def fourier_embedding(c: jax.Array, num_frequencies: int, max_frequency: float) -> jax.Array:
    r"""Sinusoidal embedding of a scalar label ``c`` ``(...)`` -> ``(..., 2F + 1)``.

    Features are $[c, \sin(2\pi f_k c), \cos(2\pi f_k c)]$ with ``F`` frequencies
    $f_k$ spaced geometrically from 1 to ``max_frequency``.
    """
    freqs = jnp.exp(jnp.linspace(0.0, math.log(max_frequency), num_frequencies)).astype(c.dtype)
    ang = 2 * jnp.pi * c[..., None] * freqs
    return jnp.concatenate([c[..., None], jnp.sin(ang), jnp.cos(ang)], axis=-1)


def _dtypes(dtype: str) -> dict:
    dt = jnp.dtype(dtype)
    return dict(dtype=dt, param_dtype=dt)


def _out_init(scale: float):
    if scale == 0:
        return nn.initializers.zeros
    return nn.initializers.variance_scaling(scale**2, "fan_in", "truncated_normal")


class MLP(nn.Module):
    """Residual MLP with a time embedding, for vector data (the default for toys).

    ``x -> Dense(width)``, ``depth`` blocks ``h += Dense(SiLU(Dense(SiLU(LN(h))) + Dense(emb)))``,
    ``Dense(dim)``. The output layer starts at zero by default, so the untrained
    denoiser is the Wiener filter ``c_skip * w``.

    Attributes:
        dim: input/output dimension ``D``.
        width: hidden width.
        depth: number of residual blocks.
        num_frequencies: frequencies of the time embedding.
        max_frequency: largest embedding frequency (``c_noise`` lies in ``[0, 1]``).
        output_scale: standard deviation scale of the output layer's initial weights.
        dtype: parameter and computation dtype.
    """

    dim: int
    width: int = 128
    depth: int = 3
    num_frequencies: int = 16
    max_frequency: float = 64.0
    output_scale: float = 0.0
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, c_noise: jax.Array) -> jax.Array:
        kw = _dtypes(self.dtype)
        dense = lambda n: nn.Dense(n, **kw)  # noqa: E731
        c = jnp.broadcast_to(c_noise, x.shape[:-1]).astype(kw["dtype"])
        emb = fourier_embedding(c, self.num_frequencies, self.max_frequency)
        emb = nn.silu(dense(self.width)(emb))
        h = dense(self.width)(x.astype(kw["dtype"]))
        for _ in range(self.depth):
            r = dense(self.width)(nn.silu(nn.LayerNorm(**kw)(h))) + dense(self.width)(emb)
            h = h + dense(self.width)(nn.silu(r))
        h = nn.silu(nn.LayerNorm(**kw)(h))
        return nn.Dense(self.dim, kernel_init=_out_init(self.output_scale), **kw)(h)


class _ResBlock(nn.Module):
    channels: int
    dtype: str

    @nn.compact
    def __call__(self, h, emb):
        kw = _dtypes(self.dtype)
        norm = lambda a: nn.silu(nn.GroupNorm(math.gcd(8, a.shape[-1]), **kw)(a))  # noqa: E731
        r = nn.Conv(self.channels, (3, 3), **kw)(norm(h))
        r = r + nn.Dense(self.channels, **kw)(emb)[..., None, None, :]
        r = nn.Conv(self.channels, (3, 3), **kw)(norm(r))
        if h.shape[-1] != self.channels:
            h = nn.Conv(self.channels, (1, 1), **kw)(h)
        return h + r


class UNet(nn.Module):
    """Small convolutional U-Net for images flattened to vectors (e.g. 8x8 digits).

    The input ``(..., H*W*C)`` is reshaped to ``(..., H, W, C)``, passed through one
    time-conditioned residual block per resolution down and up (with skips), and
    flattened back. Use it with ``space="data"`` so the convolutions see pixels.

    Attributes:
        image_shape: ``(H, W, C)``; ``H`` and ``W`` divisible by ``2**(len(channels)-1)``.
        channels: channels per resolution, highest resolution first.
        num_frequencies, max_frequency: time embedding (as for `MLP`).
        embed_width: width of the embedding MLP.
        output_scale: initial weight scale of the output convolution (0: zeros).
        dtype: parameter and computation dtype.
    """

    image_shape: tuple[int, int, int] = (8, 8, 1)
    channels: tuple[int, ...] = (32, 64)
    num_frequencies: int = 16
    max_frequency: float = 64.0
    embed_width: int = 128
    output_scale: float = 0.0
    dtype: str = "float32"

    @property
    def dim(self) -> int:
        return math.prod(self.image_shape)

    @nn.compact
    def __call__(self, x: jax.Array, c_noise: jax.Array) -> jax.Array:
        kw = _dtypes(self.dtype)
        batch = x.shape[:-1]
        h = x.reshape(-1, *self.image_shape).astype(kw["dtype"])
        c = jnp.broadcast_to(c_noise, batch).astype(kw["dtype"]).reshape(-1)
        emb = fourier_embedding(c, self.num_frequencies, self.max_frequency)
        for _ in range(2):
            emb = nn.silu(nn.Dense(self.embed_width, **kw)(emb))
        h = nn.Conv(self.channels[0], (3, 3), **kw)(h)
        skips = []
        for i, ch in enumerate(self.channels):
            h = _ResBlock(ch, self.dtype)(h, emb)
            skips.append(h)
            if i < len(self.channels) - 1:
                h = nn.avg_pool(h, (2, 2), strides=(2, 2))
        for i, ch in reversed(list(enumerate(self.channels))):
            if i < len(self.channels) - 1:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest upsampling
            h = jnp.concatenate([h, skips[i]], axis=-1)
            h = _ResBlock(ch, self.dtype)(h, emb)
        h = nn.silu(nn.GroupNorm(math.gcd(8, self.channels[0]), **kw)(h))
        out_init = _out_init(self.output_scale)
        h = nn.Conv(self.image_shape[-1], (3, 3), kernel_init=out_init, **kw)(h)
        return h.reshape(*batch, self.dim)


NETWORKS = {"mlp": MLP, "unet": UNet}


def build_network(architecture: str, dim: int, **hyperparameters) -> nn.Module:
    """Instantiate a registered network by name (``"mlp"`` or ``"unet"``).

    Args:
        architecture: a key of `NETWORKS`.
        dim: data dimension ``D``; for ``"unet"`` it must equal ``H * W * C``
            (``image_shape`` defaults to a square single-channel image).
        **hyperparameters: the module's attributes.

    Returns:
        The (parameter-free) flax module.

    Raises:
        ValueError: for an unknown architecture or inconsistent shapes.
    """
    if architecture not in NETWORKS:
        raise ValueError(f"architecture: expected one of {sorted(NETWORKS)}; got {architecture!r}")
    if architecture == "mlp":
        return MLP(dim=dim, **hyperparameters)
    hp = dict(hyperparameters)
    if "image_shape" not in hp:
        side = math.isqrt(dim)
        if side * side != dim:
            raise ValueError(
                f"image_shape: expected (H, W, C) for a non-square dimension {dim}; got none"
            )
        hp["image_shape"] = (side, side, 1)
    hp["image_shape"] = tuple(int(s) for s in hp["image_shape"])
    if "channels" in hp:
        hp["channels"] = tuple(int(c) for c in hp["channels"])
    net = UNet(**hp)
    if net.dim != dim:
        raise ValueError(
            f"image_shape: expected H*W*C = {dim}; got {hp['image_shape']} (= {net.dim})"
        )
    factor = 2 ** (len(net.channels) - 1)
    if net.image_shape[0] % factor or net.image_shape[1] % factor:
        raise ValueError(
            f"image_shape: expected H and W divisible by {factor} for {len(net.channels)} "
            f"resolutions; got {net.image_shape}"
        )
    return net
