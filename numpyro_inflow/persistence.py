"""Saving and loading inflationary flows as versioned directories, written atomically.

A saved flow holds ``config.json`` (format version, schedule, `InflationaryFlow.settings`,
score class and config, a read-only ``summary``, caller ``metadata``, the weights' SHA-256)
and ``weights.eqx`` (the arrays of ``(schedule, score)``, `equinox.tree_serialise_leaves`).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._io import atomic_directory, check_target
from ._version import __version__
from .denoiser import LearnedDenoiser
from .flow import InflationaryFlow
from .schedule import InflationSchedule
from .scores import EmpiricalScore, GaussianMixtureScore

__all__ = ["FORMAT_VERSION", "load_flow", "read_config", "save_flow"]

#: Version of the on-disk layout written by `save_flow`.
FORMAT_VERSION = 2
_FORMAT_NAME = "numpyro_inflow.InflationaryFlow"
_CONFIG = "config.json"
_WEIGHTS = "weights.eqx"
_SCHEDULE_FIELDS = {"keep": int, "gamma0": float, "rho": float, "A0": float, "t_end": float}
_SCHEDULE_FIELDS["proportional"] = bool


def _dtype(name: str):
    try:
        dt = np.dtype(name)
    except TypeError:
        raise ValueError(f"config.json: dtype: expected a NumPy dtype name; got {name!r}") from None
    if dt.itemsize == 8 and not jax.config.jax_enable_x64:
        raise ValueError(
            f"config.json: dtype: the flow was saved in {dt}; enable it before loading with "
            f"jax.config.update('jax_enable_x64', True)"
        )
    return dt


# Score classes: name -> (class, config of an instance, skeleton from a config); the oracles'
# skeletons are cheap valid placeholders (their constructors check values).
def _mixture(cfg: dict) -> GaussianMixtureScore:
    m, d, dt = int(cfg["n_components"]), int(cfg["dim"]), _dtype(cfg["dtype"])
    eye = jnp.tile(jnp.eye(d, dtype=dt), (m, 1, 1))
    return GaussianMixtureScore(jnp.ones(m, dt), jnp.zeros((m, d), dt), eye)


def _empirical(cfg: dict) -> EmpiricalScore:
    data = jnp.zeros((int(cfg["n_data"]), int(cfg["dim"])), _dtype(cfg["dtype"]))
    return EmpiricalScore(data, chunk_size=int(cfg["chunk_size"]))


def _shape_config(score) -> dict:
    if isinstance(score, EmpiricalScore):
        sizes = {"n_data": score.n_data, "chunk_size": score.chunk_size}
        return sizes | {"dim": score.dim, "dtype": str(score.data.dtype)}
    return {"n_components": len(score.weights), "dim": score.dim, "dtype": str(score.means.dtype)}


_SCORES = {
    "GaussianMixtureScore": (GaussianMixtureScore, _shape_config, _mixture),
    "EmpiricalScore": (EmpiricalScore, _shape_config, _empirical),
    "LearnedDenoiser": (LearnedDenoiser, LearnedDenoiser.config, LearnedDenoiser.from_config),
}


def save_flow(flow: InflationaryFlow, path, overwrite: bool = False, metadata=None) -> Path:
    """Save ``flow`` to the directory ``path`` (layout in the module docstring).

    Args:
        flow: The flow; its score a `GaussianMixtureScore`, `EmpiricalScore` or
            `LearnedDenoiser`, its settings in the vocabulary of `InflationaryFlow.settings`.
        path: Directory to create.
        overwrite: Replace an existing directory (only once the new one is complete).
        metadata: Optional JSON-serialisable dict stored under ``"metadata"``.

    Returns:
        The directory, as a `Path`.

    Raises:
        ValueError: If ``path`` exists without ``overwrite``, its parent is missing, the
            score or a setting cannot be recorded, or ``metadata`` is not JSON data.

    Examples:
        >>> import tempfile, pathlib, jax.numpy as jnp
        >>> import numpyro_inflow as nif
        >>> gm = nif.GaussianMixtureScore(jnp.ones(1), jnp.zeros((1, 2)), jnp.eye(2)[None])
        >>> flow = nif.InflationaryFlow(nif.InflationSchedule.from_moments(*gm.moments()), gm)
        >>> d = pathlib.Path(tempfile.mkdtemp()) / "flow"
        >>> _ = save_flow(flow, d, metadata={"note": "example"})
        >>> nif.load_flow(d).dim
        2
    """
    if not isinstance(flow, InflationaryFlow):
        raise ValueError(f"flow: expected an InflationaryFlow; got {type(flow).__name__}")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"metadata: expected a dict or None; got {type(metadata).__name__}")
    path = check_target(path, overwrite)  # fail before any work
    name = type(flow.score).__name__
    if _SCORES.get(name, (None,))[0] is not type(flow.score):
        raise ValueError(
            f"flow.score: expected one of the savable score types {sorted(_SCORES)}; "
            f"got {type(flow.score).__module__}.{name}"
        )
    buf, sch = io.BytesIO(), flow.schedule
    eqx.tree_serialise_leaves(buf, (sch, flow.score))
    lam = np.asarray(sch.eigenvalues, dtype=np.float64)
    config = {
        "format": _FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "schedule": {"dim": sch.dim, "dtype": str(flow.dtype)}
        | {k: getattr(sch, k) for k in _SCHEDULE_FIELDS},
        "flow": flow.settings(),
        "score": {"class": name, "config": _SCORES[name][1](flow.score)},
        "summary": {
            "kind": "PR-reducing" if sch.is_reducing else "PR-preserving",
            "latent_dim": sch.keep,
            "eigenvalues": lam.tolist(),
            "participation_ratio": float(lam.sum() ** 2 / (lam**2).sum()),
            "base_variance": np.asarray(sch.base_variance, dtype=np.float64).tolist(),
        },
        "weights": {"file": _WEIGHTS, "sha256": hashlib.sha256(buf.getvalue()).hexdigest()},
        "metadata": metadata or {},
    }
    try:
        text = json.dumps(config, indent=2, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"metadata: expected JSON-serialisable values (numbers, strings, lists, dicts); "
            f"got an error from json: {e}"
        ) from e
    with atomic_directory(path, overwrite=overwrite) as tmp:
        (tmp / _WEIGHTS).write_bytes(buf.getvalue())
        (tmp / _CONFIG).write_text(text + "\n", encoding="utf-8")
    return path


def _json_default(obj):
    # NumPy scalars and small arrays in caller metadata (e.g. np.int64 step counts).
    if isinstance(obj, np.generic | np.ndarray | jax.Array):
        return np.asarray(obj).tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def read_config(path) -> dict:
    """Read and check the ``config.json`` of a saved flow (no arrays are loaded).

    Args:
        path: A directory written by `save_flow`.

    Returns:
        The configuration dict (see the module docstring), including ``"metadata"``.

    Raises:
        ValueError: If ``config.json`` is missing, invalid, or of another format version.
    """
    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise ValueError(f"path: expected a saved-flow directory; got {str(path)!r}, which {what}")
    cfg_path = path / _CONFIG
    if not cfg_path.is_file():
        raise ValueError(f"{cfg_path}: missing; the directory is incomplete or not a saved flow")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_path}: expected valid JSON; got a parse error: {e}") from None
    if not isinstance(config, dict) or config.get("format") != _FORMAT_NAME:
        raise ValueError(f"{cfg_path}: expected format {_FORMAT_NAME!r}; got something else")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{cfg_path}: expected format_version {FORMAT_VERSION} (this is numpyro_inflow "
            f"{__version__}); got {version!r}, written by numpyro_inflow "
            f"{config.get('package_version', '?')}"
        )
    for key in ("schedule", "flow", "score", "weights"):
        if not isinstance(config.get(key), dict):
            raise ValueError(f"{cfg_path}: expected a {key!r} section; it is missing")
    return config


def load_flow(path) -> InflationaryFlow:
    """Load a flow saved with `save_flow`, bit for bit.

    Args:
        path: The directory.

    Returns:
        The flow.

    Raises:
        ValueError: Naming the problem (missing file, invalid config, checksum mismatch,
            truncated weights, an array's shape or dtype unlike the config's).
    """
    path = Path(path)
    config = read_config(path)
    try:
        like = _skeleton(config)
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"{path / _CONFIG}: expected an entry {e} that is missing or invalid"
        ) from e
    w_path = path / _WEIGHTS
    if not w_path.is_file():
        raise ValueError(f"{w_path}: missing; the directory is incomplete")
    data = w_path.read_bytes()
    expected = config["weights"].get("sha256")
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(
            f"{w_path}: expected the SHA-256 recorded in config.json; got a different one "
            f"(the file is corrupt, truncated or from another save)"
        )
    f = io.BytesIO(data)
    spec = jax.tree_util.tree_map_with_path(lambda p, _: _checked_reader(p, w_path), like)
    try:
        schedule, score = eqx.tree_deserialise_leaves(f, like, filter_spec=spec)
    except Exception as e:  # equinox wraps the reader's ValueError with the leaf's path
        while e.__cause__ is not None:
            e = e.__cause__
        raise e if isinstance(e, ValueError) else ValueError(f"{w_path}: {e}") from None
    if f.read(1):
        raise ValueError(
            f"{w_path}: expected exactly the {len(jax.tree.leaves(like))} arrays that "
            f"config.json implies; got extra data after them"
        )
    return InflationaryFlow.from_settings(schedule, score, config["flow"])


def _checked_reader(key_path, where: Path):
    """A per-leaf ``filter_spec`` naming the array in its errors."""
    name = ("schedule", "score")[key_path[0].idx] + jax.tree_util.keystr(key_path[1:])

    def read(f, like):
        try:
            out = eqx.default_deserialise_filter_spec(f, like)
        except Exception as e:
            raise ValueError(
                f"{where}: truncated or corrupt at array {name} (expected shape "
                f"{tuple(like.shape)}): {type(e).__name__}: {e}"
            ) from None
        if hasattr(like, "shape") and (out.shape, out.dtype) != (like.shape, like.dtype):
            raise ValueError(
                f"{where}: array {name}: expected shape {tuple(like.shape)} and dtype "
                f"{like.dtype} (from config.json); got shape {out.shape} and dtype {out.dtype}"
            )
        return out

    return read


def _skeleton(config: dict):
    s, sc = config["schedule"], config["score"]
    d, dt = int(s["dim"]), _dtype(s["dtype"])
    shapes = {"mean": (d,), "eigenvectors": (d, d), "eigenvalues": (d,), "g": (d,)}
    statics = {k: cast(s[k]) for k, cast in _SCHEDULE_FIELDS.items()}
    schedule = InflationSchedule(
        **{k: jax.ShapeDtypeStruct(v, dt) for k, v in shapes.items()}, **statics
    )
    if sc["class"] not in _SCORES:
        raise ValueError(
            f"config.json: score.class: expected one of {sorted(_SCORES)}; got {sc['class']!r}"
        )
    return schedule, _SCORES[sc["class"]][2](sc["config"])
