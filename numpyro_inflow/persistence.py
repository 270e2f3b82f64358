"""Saving and loading inflationary flows as versioned directories.

Work in progress: :func:`atomic_directory` is final; :func:`save_flow` and
:func:`load_flow` follow.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(path, overwrite: bool = False) -> Iterator[Path]:
    """Write a directory atomically: everything or nothing appears at ``path``.

    Yields a fresh, empty temporary directory next to ``path`` (same file system,
    so the final move is a rename). When the ``with`` block finishes without an
    exception the temporary directory is moved to ``path``; if an exception
    escapes, it is deleted and nothing at ``path`` changes.

    Args:
        path: The final directory.
        overwrite: Replace an existing ``path``. The old content is removed only
            after the new one is complete.

    Yields:
        The temporary directory to write into.

    Raises:
        ValueError: If ``path`` exists and ``overwrite`` is false, or ``path``
            exists and is not a directory, or its parent does not exist.

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
    try:
        yield tmp
        # Re-check: the target may have appeared while the block ran.
        _check_target(path, overwrite)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)  # step 1: move the old content aside (a rename)
            try:
                os.replace(tmp, path)  # step 2: put the new content in place
            except BaseException:
                os.replace(old, path)  # undo step 1
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_target(path: Path, overwrite: bool) -> None:
    if not path.parent.is_dir():
        raise ValueError(f"path: expected a location whose parent directory exists; got {str(path)!r}")
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise ValueError(f"path: expected a directory or a new name; got the existing file {str(path)!r}")
        if not overwrite:
            raise ValueError(
                f"path: expected a path that does not exist yet (pass overwrite=True to replace it); "
                f"got the existing {str(path)!r}"
            )
