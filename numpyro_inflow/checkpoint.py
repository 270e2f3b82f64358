"""Training checkpoints: a folder of ``step_XXXXXXXXX`` snapshots, each written atomically.

A snapshot is the training state as ``state.eqx`` (`equinox.tree_serialise_leaves`) and a
``meta.json`` with the run's fingerprint and history; a snapshot of another run is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ._checks import check_positive_int
from ._io import atomic_directory
from ._version import __version__

__all__ = ["Checkpoints", "fingerprint"]

FORMAT_VERSION = 1


def fingerprint(tree: Any, settings: dict) -> str:
    """SHA-256 of a pytree (structure, shapes, dtypes, values) and a JSON-able dict."""
    leaves, treedef = jax.tree.flatten(tree)
    h = hashlib.sha256(str(treedef).encode())
    for a in map(np.asarray, leaves):
        h.update(f"{a.shape}{a.dtype}".encode() + np.ascontiguousarray(a).tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """Where and how often training writes checkpoints, and whether it resumes.

    Args:
        directory: the folder of ``step_XXXXXXXXX`` snapshots (created when needed).
        every: steps between snapshots (``None``: only when training ends or stops).
        keep: how many of the most recent snapshots to keep.
        resume: ``True`` to continue from the latest snapshot in ``directory`` (if any),
            or the path of a snapshot (or of a folder of them). The data and settings
            must be those of the run that wrote it.

    Raises:
        ValueError: for ``every`` or ``keep`` below 1.

    Examples:
        >>> Checkpoints("ckpt", every=5_000, resume=True).keep
        2
    """

    directory: str | Path
    every: int | None = None
    keep: int = 2
    resume: bool | str | Path = False

    def __post_init__(self):
        object.__setattr__(self, "directory", Path(self.directory))
        object.__setattr__(self, "keep", check_positive_int(self.keep, "keep"))
        if self.every is not None:
            object.__setattr__(self, "every", check_positive_int(self.every, "every"))

    def snapshots(self, root=None) -> list[Path]:
        """The complete snapshots in ``root`` (default ``directory``), oldest first."""
        found = Path(self.directory if root is None else root).glob("step_*/meta.json")
        return sorted(p.parent for p in found if p.parent.name[5:].isdigit())

    def save(self, state: Any, meta: dict) -> Path:
        """Write ``state`` at step ``meta["step"]``; drop the oldest snapshots beyond `keep`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"step_{int(meta['step']):09d}"
        with atomic_directory(path, overwrite=True, name="checkpoints.directory") as tmp:
            eqx.tree_serialise_leaves(tmp / "state.eqx", jax.device_get(state))
            meta = {"format": FORMAT_VERSION, "version": __version__, **meta}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        for old in self.snapshots()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def restore(self, like: Any, fingerprint: str) -> tuple[Any, dict] | None:
        """``(state, meta)`` of the snapshot to resume from, or ``None`` if there is none.

        Args:
            like: a pytree with the state's structure, shapes and dtypes.
            fingerprint: the current run's `fingerprint`; the snapshot's must match.

        Raises:
            ValueError: for a missing, unreadable, foreign or corrupt snapshot.
        """
        if self.resume is False:
            return None
        path = self.directory if self.resume is True else Path(self.resume)
        found = [path] if (path / "meta.json").is_file() else self.snapshots(path)
        if not found:
            if self.resume is True:
                return None
            raise ValueError(f"resume: expected a checkpoint written by training; got {path}")
        where = f"in {str(found[-1])!r}"
        try:
            meta = json.loads((found[-1] / "meta.json").read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"resume: unreadable checkpoint metadata {where}: {err}") from None
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"resume: expected checkpoint format {FORMAT_VERSION} {where}")
        if meta.get("fingerprint") != fingerprint:
            raise ValueError(
                f"resume: the checkpoint {where} was written for different data or training "
                "settings; pass the same data and arguments, or start afresh without resume"
            )
        try:
            return eqx.tree_deserialise_leaves(found[-1] / "state.eqx", like), meta
        except Exception as err:
            raise ValueError(f"resume: corrupt checkpoint state {where}: {err}") from None
