"""Saving and loading inflationary flows as versioned directories.

A saved flow is a directory with two files:

``config.json``
    Human-readable description: format name and version, the package version that
    wrote it, the schedule (dimension, dtype and every static field), a ``summary``
    for reading only (eigenvalues, participation ratio, latent dimension; ignored
    when loading), the solver settings (diffrax solver, step-size
    controller and adjoint recorded by class name and the fields that differ from
    their defaults), the score (class name and its config), caller metadata (for
    example training settings) and a SHA-256 checksum of the weights file.

``weights.eqx``
    The arrays of the pair ``(schedule, score)``, written with
    `equinox.tree_serialise_leaves` (a plain sequence of ``.npy`` records in
    tree order). Equinox serialisation was chosen over orbax because a flow is an
    Equinox module, the file is a single small deterministic byte string (so a
    checksum can detect corruption), it needs no extra dependency or asynchronous
    machinery, and loading validates every array against a skeleton rebuilt from
    ``config.json`` (shape, dtype, count), so an inconsistent directory is reported
    instead of silently loaded. The solver objects are not in the weights: they are
    rebuilt from ``config.json``, which stays the single place to read or edit them.

Writes are atomic (`atomic_directory`): a reader sees either the complete old
directory or the complete new one, never a half-written one.

Score classes are handled by a small registry mapping the class name to a pair
``(to_config, skeleton_from_config)``: the config records the array shapes, and the
skeleton is a same-shaped instance whose arrays are then replaced by the saved ones.
``LearnedDenoiser`` (``numpyro_inflow.denoiser``) is resolved lazily through its own
``config()`` / ``from_config()`` methods.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._version import __version__
from .flow import InflationaryFlow
from .schedule import InflationSchedule
from .scores import EmpiricalScore, GaussianMixtureScore

__all__ = ["FORMAT_VERSION", "atomic_directory", "load_flow", "read_config", "save_flow"]

#: Version of the on-disk layout written by `save_flow`.
FORMAT_VERSION = 1
_FORMAT_NAME = "numpyro_inflow.InflationaryFlow"
_CONFIG = "config.json"
_WEIGHTS = "weights.eqx"


# --------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_directory(path, overwrite: bool = False) -> Iterator[Path]:
    """Write a directory atomically: everything or nothing appears at ``path``.

    Yields a fresh, empty temporary directory next to ``path`` (same file system,
    so the final move is a rename). When the ``with`` block finishes without an
    exception the temporary directory is moved to ``path``; if an exception
    escapes, it is deleted and nothing at ``path`` changes.

    Args:
        path: The final directory.
        overwrite: Replace an existing directory at ``path``. The old content is
            removed only after the new one is complete.

    Yields:
        The temporary directory to write into.

    Raises:
        ValueError: If ``path`` exists and ``overwrite`` is false, if ``path`` is an
            existing file, or if its parent directory does not exist.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_directory(root / "out") as tmp:
        ...     _ = (tmp / "a.txt").write_text("hi")
        >>> (root / "out" / "a.txt").read_text()
        'hi'
    """
    path = Path(path)
    _check_target(path, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    with contextlib.suppress(OSError):  # mkdtemp makes 0o700; use the usual umask mode
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
        _check_target(path, overwrite)  # the target may have appeared meanwhile
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)  # 1: move the complete old content aside (a rename)
            try:
                os.replace(tmp, path)  # 2: put the complete new content in place
            except BaseException:
                os.replace(old, path)  # undo 1
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_target(path: Path, overwrite: bool) -> None:
    if not path.parent.is_dir():
        raise ValueError(
            f"path: expected a location whose parent directory exists; got {str(path)!r}"
        )
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise ValueError(
                f"path: expected a directory or a new name; got the existing file {str(path)!r}"
            )
        if not overwrite:
            raise ValueError(
                f"path: expected a path that does not exist yet (pass overwrite=True to "
                f"replace it); got the existing {str(path)!r}"
            )


# --------------------------------------------------------------------------- score registry
def _gm_config(score: GaussianMixtureScore) -> dict:
    m, d = score.means.shape
    return {"n_components": m, "dim": d, "dtype": str(score.means.dtype)}


def _gm_skeleton(cfg: dict) -> GaussianMixtureScore:
    m, d, dt = int(cfg["n_components"]), int(cfg["dim"]), _dtype(cfg["dtype"])
    # A valid placeholder (the constructor checks its values); every array is replaced.
    return GaussianMixtureScore(
        jnp.ones(m, dt), jnp.zeros((m, d), dt), jnp.tile(jnp.eye(d, dtype=dt), (m, 1, 1))
    )


def _emp_config(score: EmpiricalScore) -> dict:
    return {
        "n_data": score.n_data,
        "chunk_size": score.chunk_size,
        "dim": score.dim,
        "dtype": str(score.data.dtype),
    }


def _emp_skeleton(cfg: dict) -> EmpiricalScore:
    dt = _dtype(cfg["dtype"])
    return EmpiricalScore(
        jnp.zeros((int(cfg["n_data"]), int(cfg["dim"])), dt), chunk_size=int(cfg["chunk_size"])
    )


def _learned_class():
    from .denoiser import LearnedDenoiser  # imported lazily: training code is optional here

    return LearnedDenoiser


def _own_config(score) -> dict:
    return score.config()


def _learned_skeleton(cfg: dict):
    return _learned_class().from_config(cfg)


# class name -> (to_config, skeleton_from_config, class getter)
_SCORES: dict[str, tuple[Callable, Callable, Callable]] = {
    "GaussianMixtureScore": (_gm_config, _gm_skeleton, lambda: GaussianMixtureScore),
    "EmpiricalScore": (_emp_config, _emp_skeleton, lambda: EmpiricalScore),
    "LearnedDenoiser": (_own_config, _learned_skeleton, _learned_class),
}


def _score_entry(score) -> tuple[str, Callable]:
    name = type(score).__name__
    entry = _SCORES.get(name)
    if entry is not None:
        try:
            cls = entry[2]()
        except ImportError:
            cls = None
        if cls is type(score):
            return name, entry[0]
    raise ValueError(
        f"flow.score: expected one of the savable score types {sorted(_SCORES)}; "
        f"got {type(score).__module__}.{name}"
    )


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


# --------------------------------------------------------------------------- solver objects
_JSON_SCALARS = (type(None), bool, int, float, str)


def _encode_object(obj, where: str) -> dict:
    """Record a diffrax (or numpyro_inflow) module as its class and non-default fields."""
    cls = type(obj)
    if getattr(diffrax, cls.__name__, None) is cls:
        name = f"diffrax.{cls.__name__}"
    elif cls.__module__.split(".")[0] == "numpyro_inflow":
        name = f"{cls.__module__}.{cls.__qualname__}"
    else:
        raise ValueError(
            f"{where}: expected a public diffrax object (or one from numpyro_inflow); "
            f"got {cls.__module__}.{cls.__qualname__}"
        )
    fields = {}
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if default is not dataclasses.MISSING and _same(value, default):
            continue
        fields[f.name] = _encode_value(value, f"{where}.{f.name}")
    return {"class": name, "fields": fields}


def _same(a, b) -> bool:
    if a is b:
        return True
    if type(a) is not type(b) or not isinstance(a, (*_JSON_SCALARS, tuple)):
        return False
    try:
        return bool(a == b)
    except Exception:
        return False


def _encode_value(value, where: str):
    if isinstance(value, bool | type(None) | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, np.generic | np.ndarray | jax.Array) and np.ndim(value) == 0:
        return _encode_value(np.asarray(value).item(), where)
    if isinstance(value, np.ndarray | jax.Array):  # e.g. the time grid of diffrax.StepTo
        arr = np.asarray(value)
        if arr.dtype.kind in "fiub":
            return {"array": arr.tolist(), "dtype": str(arr.dtype)}
    if isinstance(value, tuple | list):
        return {"tuple": [_encode_value(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if dataclasses.is_dataclass(value) and isinstance(value, eqx.Module):
        return {"object": _encode_object(value, where)}
    raise ValueError(
        f"{where}: expected a number, string, boolean, None, tuple or diffrax object that "
        f"config.json can record; got {type(value).__name__}"
    )


def _decode_value(value, where: str):
    if isinstance(value, dict):
        if set(value) == {"float"}:
            return float(value["float"])
        if set(value) == {"tuple"}:
            return tuple(_decode_value(v, where) for v in value["tuple"])
        if set(value) == {"array", "dtype"}:
            return jnp.asarray(np.asarray(value["array"], dtype=_dtype(value["dtype"])))
        if set(value) == {"object"}:
            return _decode_object(value["object"], where)
        raise ValueError(f"config.json: {where}: expected a recorded value; got {value!r}")
    return value


def _decode_object(rec, where: str):
    if not isinstance(rec, dict) or not isinstance(rec.get("class"), str):
        raise ValueError(f"config.json: {where}: expected {{'class': ..., 'fields': ...}}")
    name, fields = rec["class"], rec.get("fields", {})
    module, _, attr = name.rpartition(".")
    cls = None
    if module == "diffrax" or module.split(".")[0] == "numpyro_inflow":
        try:
            cls = getattr(importlib.import_module(module), attr, None)
        except ImportError:
            cls = None
    if not isinstance(cls, type):
        raise ValueError(
            f"config.json: {where}: expected a diffrax or numpyro_inflow class; got {name!r}"
        )
    kwargs = {k: _decode_value(v, f"{where}.{k}") for k, v in fields.items()}
    try:
        return cls(**kwargs)
    except Exception as e:
        raise ValueError(f"config.json: {where}: cannot rebuild {name}({kwargs}): {e}") from e


# --------------------------------------------------------------------------- save
def save_flow(flow: InflationaryFlow, path, overwrite: bool = False, metadata=None) -> Path:
    """Save ``flow`` to the directory ``path`` (see the module docstring for the layout).

    Args:
        flow: The flow to save. Its score must be a `GaussianMixtureScore`, an
            `EmpiricalScore` or a ``LearnedDenoiser``.
        path: Directory to create.
        overwrite: Replace an existing directory (only once the new one is complete).
        metadata: Optional JSON-serialisable dict stored under ``"metadata"`` in
            ``config.json``, for example training settings; read it back with
            `read_config`.

    Returns:
        The directory, as a `Path`.

    Raises:
        ValueError: If ``path`` exists and ``overwrite`` is false, its parent does not
            exist, the score type or a solver setting cannot be recorded, or
            ``metadata`` is not a JSON-serialisable dict.

    Example:
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
    path = Path(path)
    _check_target(path, overwrite)  # fail before any work
    score_name, to_config = _score_entry(flow.score)
    sch = flow.schedule
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, (sch, flow.score))
    weights = buf.getvalue()
    lam = np.asarray(sch.eigenvalues, dtype=np.float64)
    config = {
        "format": _FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "schedule": {
            "dim": sch.dim,
            "dtype": str(sch.eigenvalues.dtype),
            "keep": sch.keep,
            "gamma0": sch.gamma0,
            "rho": sch.rho,
            "A0": sch.A0,
            "t_end": sch.t_end,
            "proportional": sch.proportional,
        },
        "flow": {
            "rtol": flow.rtol,
            "atol": flow.atol,
            "dt0": flow.dt0,
            "max_steps": flow.max_steps,
            "throw": flow.throw,
            "trace": flow.trace,
            "num_probes": flow.num_probes,
            "solver": _encode_object(flow.solver, "flow.solver"),
            "stepsize_controller": _encode_object(
                flow.stepsize_controller, "flow.stepsize_controller"
            ),
            "adjoint": _encode_object(flow.adjoint, "flow.adjoint"),
        },
        "score": {"class": score_name, "config": to_config(flow.score)},
        "summary": {
            "kind": "PR-reducing" if sch.is_reducing else "PR-preserving",
            "latent_dim": sch.keep,
            "eigenvalues": lam.tolist(),
            "participation_ratio": float(lam.sum() ** 2 / (lam**2).sum()),
            "base_variance": np.asarray(sch.base_variance, dtype=np.float64).tolist(),
        },
        "weights": {"file": _WEIGHTS, "sha256": hashlib.sha256(weights).hexdigest()},
        "metadata": metadata if metadata is not None else {},
    }
    try:
        text = json.dumps(config, indent=2, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"metadata: expected JSON-serialisable values (numbers, strings, lists, dicts); "
            f"got an error from json: {e}"
        ) from e
    with atomic_directory(path, overwrite=overwrite) as tmp:
        (tmp / _WEIGHTS).write_bytes(weights)
        (tmp / _CONFIG).write_text(text + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- load
def read_config(path) -> dict:
    """Read and check the ``config.json`` of a saved flow (no arrays are loaded).

    Args:
        path: A directory written by `save_flow`.

    Returns:
        The configuration dict (see the module docstring), including ``"metadata"``.

    Raises:
        ValueError: If the directory or its ``config.json`` is missing, not valid JSON,
            not a saved flow, or of an unknown format version.
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
    """Load a flow saved with `save_flow` (or `InflationaryFlow.save`).

    Every array is checked against the shape and dtype that ``config.json``
    implies, the number of arrays must match, and the weights file must match its
    recorded checksum, so that the loaded flow reproduces the saved one bit for bit.

    Args:
        path: The directory.

    Returns:
        The flow.

    Raises:
        ValueError: Naming the problem, for a missing directory or file, invalid JSON,
            an unknown format version or score type, a checksum mismatch, truncated
            weights, or an array whose shape or dtype differs from the config.
    """
    path = Path(path)
    config = read_config(path)
    cfg_path = path / _CONFIG
    try:
        skeleton = _skeleton(config)
        flow_kwargs = _flow_kwargs(config["flow"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{cfg_path}: expected an entry {e} that is missing or invalid") from e
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
    schedule, score = _read_leaves(data, skeleton, w_path)
    return InflationaryFlow(schedule, score, **flow_kwargs)


def _skeleton(config: dict):
    s = config["schedule"]
    d, dt = int(s["dim"]), _dtype(s["dtype"])
    schedule = InflationSchedule(
        mean=jnp.zeros(d, dt),
        eigenvectors=jnp.zeros((d, d), dt),
        eigenvalues=jnp.zeros(d, dt),
        g=jnp.zeros(d, dt),
        gamma0=float(s["gamma0"]),
        rho=float(s["rho"]),
        A0=float(s["A0"]),
        t_end=float(s["t_end"]),
        keep=int(s["keep"]),
        proportional=bool(s["proportional"]),
    )
    sc = config["score"]
    name = sc["class"]
    if name not in _SCORES:
        raise ValueError(
            f"config.json: score.class: expected one of {sorted(_SCORES)}; got {name!r}"
        )
    try:
        score = _SCORES[name][1](sc["config"])
    except ImportError as e:
        raise ValueError(
            f"config.json: score.class {name!r} needs a module that cannot be imported: {e}"
        ) from e
    return schedule, score


def _flow_kwargs(f: dict) -> dict:
    return {
        "rtol": float(f["rtol"]),
        "atol": float(f["atol"]),
        "dt0": None if f["dt0"] is None else float(f["dt0"]),
        "max_steps": int(f["max_steps"]),
        "throw": bool(f["throw"]),
        "trace": f["trace"],
        "num_probes": int(f["num_probes"]),
        "solver": _decode_object(f["solver"], "flow.solver"),
        "stepsize_controller": _decode_object(f["stepsize_controller"], "flow.stepsize_controller"),
        "adjoint": _decode_object(f["adjoint"], "flow.adjoint"),
    }


def _read_leaves(data: bytes, skeleton, where: Path):
    """Inverse of ``eqx.tree_serialise_leaves`` that checks every leaf against ``skeleton``."""
    f = io.BytesIO(data)
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(skeleton)
    out = []
    for kpath, leaf in with_paths:
        name = jax.tree_util.keystr(kpath)
        name = name.replace("[0]", "schedule", 1) if name.startswith("[0]") else name
        name = name.replace("[1]", "score", 1) if name.startswith("[1]") else name
        if not eqx.is_array_like(leaf):  # equinox does not save these leaves either
            out.append(leaf)
            continue
        try:
            arr = np.load(f, allow_pickle=False)
        except Exception as e:
            raise ValueError(
                f"{where}: truncated or corrupt at array {name} (expected shape "
                f"{tuple(np.shape(leaf))}): {type(e).__name__}: {e}"
            ) from None
        want_shape, want_dtype = np.shape(leaf), np.asarray(leaf).dtype
        if arr.shape != want_shape or arr.dtype != want_dtype:
            raise ValueError(
                f"{where}: array {name}: expected shape {tuple(want_shape)} and dtype "
                f"{want_dtype} (from config.json); got shape {arr.shape} and dtype {arr.dtype}"
            )
        if isinstance(leaf, jax.Array):
            out.append(jnp.asarray(arr))
        elif isinstance(leaf, np.ndarray):
            out.append(arr)
        else:
            out.append(type(leaf)(arr.item()))
    if f.read(1):
        raise ValueError(
            f"{where}: expected exactly {len(with_paths)} arrays as config.json implies; "
            f"got extra data after them"
        )
    return jax.tree_util.tree_unflatten(treedef, out)


def _json_default(obj: Any):
    # NumPy scalars and small arrays in caller metadata (e.g. np.int64 step counts).
    if isinstance(obj, np.generic | np.ndarray | jax.Array):
        return np.asarray(obj).tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
