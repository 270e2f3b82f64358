r"""Pretrained flows shipped inside the package: ``nif.pretrained("digits")``.

Each lives in ``numpyro_inflow/pretrained/<name>/`` as saved by `save_flow` and is
checked against its recorded SHA-256. Both model sklearn's 8x8 digits in $[-1, 1]$ (64-D)
with a residual MLP (width 256, depth 2) in eigen coordinates, trained for 4,000 steps of
256 on ``nif.datasets.load("digits", seed=0)[:1500]`` (see ``docs/tutorials/digits.md``):

- ``"digits"`` (the default): PR-preserving, a 64-D standard-normal latent.
- ``"digits-k16"``: PR-reducing with ``k = 16`` (inflation gap 1): a 16-D latent whose
  prior is a surface in data space (see ``docs/limitations.md``).

Reproduced by ``python benchmarks/train_digits.py --ship prp prr16``.
"""

from __future__ import annotations

from pathlib import Path

from .flow import InflationaryFlow
from .persistence import load_flow

__all__ = ["available", "pretrained", "pretrained_path"]

_ROOT = Path(__file__).with_name("pretrained")
_DIGITS = "8x8 digits in [-1, 1] (64-D), {}; reproduce: python benchmarks/train_digits.py --ship {}"

#: name (also the directory under ``numpyro_inflow/pretrained/``) -> one-line description.
_REGISTRY = {
    "digits": _DIGITS.format("PR-preserving, 64-D latent", "prp"),
    "digits-k16": _DIGITS.format("PR-reducing, k=16 latent", "prr16"),
}

#: Name loaded by `pretrained` when none is given.
DEFAULT = "digits"


def available() -> dict[str, str]:
    """Names of the shipped flows, each with a one-line description.

    Examples:
        >>> import numpyro_inflow as nif
        >>> "digits" in nif.pretrained.available()
        True
    """
    return dict(_REGISTRY)


def pretrained_path(name: str = DEFAULT) -> Path:
    """The directory of a shipped flow (readable with `read_config`).

    Args:
        name: a key of `available`.

    Returns:
        The directory, a `Path` inside the installed package.

    Raises:
        ValueError: for an unknown name (the message lists the available ones) or a
            missing directory (an incomplete installation).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        listing = "; ".join(f"{n!r} ({d})" for n, d in _REGISTRY.items())
        raise ValueError(f"name: expected one of the shipped flows: {listing}; got {name!r}")
    path = _ROOT / name
    if not (path / "config.json").is_file():
        raise ValueError(
            f"name: the shipped flow {name!r} is missing from {str(path)!r}; the installation "
            "is incomplete (reinstall numpyro_inflow, or regenerate it with "
            "`python benchmarks/train_digits.py --ship prp prr16`)"
        )
    return path


def pretrained(name: str = DEFAULT, **changes) -> InflationaryFlow:
    """Load a flow shipped with the package.

    Args:
        name: a key of `available` (``nif.pretrained.available()``).
        **changes: passed to `replace` (e.g. a cheap fixed-step solver:
            ``solver=nif.ExponentialMultistep(), dt0=flow.t_end / 40``).

    Returns:
        The `InflationaryFlow` (as saved: adaptive Tsit5, ``rtol = atol = 1e-5``).

    Raises:
        ValueError: for an unknown name (the message lists the available ones), a
            missing or corrupt directory, or an unknown change.

    Examples:
        >>> import numpyro_inflow as nif
        >>> flow = nif.pretrained("digits")
        >>> flow.dim, flow.latent_dim
        (64, 64)
        >>> nif.pretrained("digits-k16").latent_dim
        16
    """
    flow = load_flow(pretrained_path(name))
    return flow.replace(**changes) if changes else flow


pretrained.available = available  # nif.pretrained.available()
pretrained.path = pretrained_path  # nif.pretrained.path("digits")
