"""Atomic writes: the one place where the package puts files on disk.

Everything the package writes goes through `atomic_directory` or `atomic_file`: the
result appears complete or not at all, with the user's umask permissions (not those of
``tempfile``), and nothing at the path is replaced unless ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_directory", "atomic_file"]


def check_target(path, overwrite: bool, *, kind: str = "directory", name: str = "path") -> Path:
    """Check that ``path`` may be written: its parent exists, and it is new or ``overwrite``.

    Args:
        path: the final location.
        overwrite: whether an existing ``path`` (of the same kind) may be replaced.
        kind: ``"directory"`` or ``"file"``: what ``path`` will be.
        name: the argument name used in error messages.

    Raises:
        ValueError: if the parent directory is missing or not writable, ``path`` exists
            and ``overwrite`` is false, or ``path`` exists as the other kind.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(
            f"{name}: expected a location whose parent directory exists; got {str(path)!r}"
        )
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: expected a location in a writable directory; got {str(path)!r}")
    if path.exists() or path.is_symlink():
        if not (path.is_dir() if kind == "directory" else path.is_file()):
            other = "file" if kind == "directory" else "directory"
            raise ValueError(
                f"{name}: expected a {kind} or a new name; got the existing {other} {str(path)!r}"
            )
        if not overwrite:
            raise ValueError(
                f"{name}: expected a path that does not exist yet (pass overwrite=True to "
                f"replace it); got the existing {str(path)!r}"
            )
    return path


def _atomic(path, overwrite: bool, kind: str, name: str) -> Iterator[Path]:
    """A temporary ``kind`` next to ``path`` (same file system), renamed onto it at the end."""
    path, is_dir = check_target(path, overwrite, kind=kind, name=name), kind == "directory"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(tmp, (0o777 if is_dir else 0o666) & ~umask)
    try:
        yield tmp
        check_target(path, overwrite, kind=kind, name=name)  # it may have appeared meanwhile
        if is_dir and path.exists():
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
            os.replace(tmp, path)  # an atomic rename, replacing a file
    except BaseException:
        if is_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(path, overwrite: bool = False, *, name: str = "path") -> Iterator[Path]:
    """Write a directory atomically: everything or nothing appears at ``path``.

    Args:
        path: the final directory.
        overwrite: replace an existing directory at ``path`` (moved aside only once the
            new one is complete, and deleted after the swap).
        name: the argument name used in error messages.

    Yields:
        A fresh, empty temporary directory next to ``path``, moved there when the
        ``with`` block finishes and deleted if an exception escapes it.

    Raises:
        ValueError: as `check_target` (``path`` exists and ``overwrite`` is false, is a
            file, or its parent directory does not exist).

    Examples:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_directory(root / "out") as tmp:
        ...     _ = (tmp / "a.txt").write_text("hi")
        >>> (root / "out" / "a.txt").read_text()
        'hi'
    """
    yield from _atomic(path, overwrite, "directory", name)


@contextlib.contextmanager
def atomic_file(path, overwrite: bool = False, *, name: str = "path") -> Iterator[Path]:
    """Write a file atomically: the complete file or nothing appears at ``path``.

    Args:
        path: the final file.
        overwrite: replace an existing file at ``path``.
        name: the argument name used in error messages.

    Yields:
        An empty temporary file next to ``path``, renamed to ``path`` when the ``with``
        block finishes and deleted if an exception escapes it.

    Raises:
        ValueError: as `check_target` (``path`` exists and ``overwrite`` is false, is a
            directory, or its parent directory does not exist).

    Examples:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_file(root / "a.txt") as tmp:
        ...     _ = tmp.write_text("hi")
        >>> (root / "a.txt").read_text()
        'hi'
    """
    yield from _atomic(path, overwrite, "file", name)
