r"""Toy data sets of the paper, sklearn's 8x8 digits, and user data files.

`load` returns a ``float32`` NumPy array ``(N, D)``:

=============  ===  ==========================================================
name           D    recipe (de Albuquerque & Pearson 2024, appendix C)
=============  ===  ==========================================================
``circles``    2    ``make_circles(n, factor=0.5, noise=0.08)``, z-scored
``moons``      2    ``make_moons(n, noise=0.08)``, z-scored
``sine``       2    $x \sim U(-1, 1)$, $y = \sin(4\pi x)/4 + N(0, 0.15^2)$,
                    z-scored (the paper's "sine2")
``s_curve``    3    ``make_s_curve(n, noise=0.2)``, z-scored
``swirl``      3    ``make_swiss_roll(n, noise=1.25)``, z-scored
``digits``     64   sklearn's bundled 8x8 digits (1,797 images, no download),
                    pixels mapped from ``0..16`` to ``[-1, 1]`` by $p/8 - 1$
=============  ===  ==========================================================

"z-scored": each column standardised with the sample's mean and standard deviation
(``ddof=0``), as in the authors' code. User data: a ``.npy``, ``.npz`` or ``.csv`` path
(see `load_file`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

__all__ = ["NAMES", "load", "load_file", "names"]

#: Names accepted by `load`.
NAMES: tuple[str, ...] = ("circles", "moons", "sine", "s_curve", "swirl", "digits")
_FILE_SUFFIXES = (".npy", ".npz", ".csv")
_DEFAULT_N = 2000  # the authors' default simulation size
_SKLEARN = {  # name: (sklearn generator, its options)
    "circles": ("make_circles", dict(factor=0.5, noise=0.08)),
    "moons": ("make_moons", dict(noise=0.08)),
    "s_curve": ("make_s_curve", dict(noise=0.2)),
    "swirl": ("make_swiss_roll", dict(noise=1.25)),
}


def names() -> tuple[str, ...]:
    """The built-in data set names, in a fixed order.

    Examples:
        >>> names()
        ('circles', 'moons', 'sine', 's_curve', 'swirl', 'digits')
    """
    return NAMES


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / x.std(0)


def _toy(name: str, n: int, seed: int) -> np.ndarray:
    from sklearn import datasets as skd  # imported on use: sklearn is slow to import

    if name in _SKLEARN:
        make, options = _SKLEARN[name]
        x, _ = getattr(skd, make)(n, random_state=np.random.RandomState(seed), **options)
    else:  # sine (the paper's sine2)
        rng = np.random.default_rng(seed)
        u = rng.uniform(-1.0, 1.0, n)
        x = np.stack([u, np.sin(4 * np.pi * u) / 4 + rng.normal(0.0, 0.15, n)], axis=-1)
    return _zscore(np.asarray(x, dtype=np.float64))


def _digits(n: int | None, seed: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    pixels = load_digits().data  # (1797, 64), integers 0..16, bundled with sklearn
    total = pixels.shape[0]
    if n is not None and n > total:
        raise ValueError(f"n: expected at most {total} for 'digits'; got {n}")
    order = np.random.default_rng(seed).permutation(total)[: total if n is None else n]
    return pixels[order] / 8.0 - 1.0


def _check_int(value, name: str, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name}: expected {what}; got {value!r}")
    return int(value)


def _check_n(n, minimum: int = 1) -> int | None:
    return None if n is None else _check_int(n, "n", minimum, f"an integer >= {minimum} or None")


def load(name, n: int | None = None, seed: int = 0, *, key: str | None = None) -> np.ndarray:
    """Load a built-in data set by name, or a user data file by path.

    Args:
        name: One of `NAMES` (see the module docstring), or a path ending in ``.npy``,
            ``.npz`` or ``.csv`` (a `Path` is always read as a file).
        n: Number of points. Toy sets: points drawn (default 2000, at least 2). Digits
            and files: size of a random subset (default: all rows; digits shuffled).
        seed: Seed of the draw or of the subset.
        key: Array name inside an ``.npz`` file holding several arrays.

    Returns:
        A ``float32`` array ``(N, D)``.

    Raises:
        ValueError: For an unknown name, a bad ``n`` or ``seed``, or a file problem.

    Examples:
        >>> x = load("moons", n=500, seed=1)
        >>> x.shape, x.dtype
        ((500, 2), dtype('float32'))
    """
    seed = _check_int(seed, "seed", 0, "a non-negative integer")
    if isinstance(name, str) and name in NAMES:
        if key is not None:
            raise ValueError(f"key: only meaningful for .npz files; got key={key!r} with {name!r}")
        if name == "digits":
            x = _digits(_check_n(n), seed)
        else:
            x = _toy(name, _check_n(n, minimum=2) or _DEFAULT_N, seed)
        return np.ascontiguousarray(x, dtype=np.float32)
    if isinstance(name, os.PathLike) or (
        isinstance(name, str) and Path(name).suffix.lower() in _FILE_SUFFIXES
    ):
        x = load_file(name, key=key)
        count = _check_n(n)
        if count is not None:
            if count > x.shape[0]:
                raise ValueError(f"n: expected at most {x.shape[0]} (rows in {name}); got {count}")
            x = x[np.sort(np.random.default_rng(seed).choice(x.shape[0], count, replace=False))]
        return x
    raise ValueError(
        f"name: expected one of {', '.join(NAMES)} or a path ending in "
        f"{', '.join(_FILE_SUFFIXES)}; got {name!r}"
    )


def load_file(path, key: str | None = None) -> np.ndarray:
    """Read user data ``(N, D)`` from a ``.npy``, ``.npz`` or ``.csv`` file.

    An ``.npz`` file's only array or the one named ``key``; a ``.csv`` file of
    comma-separated numbers, one point per line, after an optional header line. Integer
    data are converted to ``float32``; no scaling is applied.

    Args:
        path: The file.
        key: Array name inside an ``.npz`` file (needed when it holds several).

    Returns:
        A ``float32`` array ``(N, D)`` with ``N >= 1``.

    Raises:
        ValueError: Naming the problem (file, ``.npz`` key, CSV cell, shape, dtype, NaN/inf).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in _FILE_SUFFIXES:
        raise ValueError(
            f"path: expected a file ending in {', '.join(_FILE_SUFFIXES)}; got {str(p)!r}"
        )
    if not p.is_file():
        what = "does not exist" if not p.exists() else "is not a file"
        raise ValueError(f"path: expected an existing data file; got {str(p)!r}, which {what}")
    if key is not None and suffix != ".npz":
        raise ValueError(f"key: only meaningful for .npz files; got key={key!r} with {str(p)!r}")
    if suffix == ".csv":
        x = _read_csv(p)
    else:
        try:
            obj = np.load(p, allow_pickle=False)
        except Exception as e:
            raise ValueError(f"{p}: expected a readable {suffix} file; got {e}") from None
        if suffix == ".npz":
            with obj:
                keys = list(obj.keys())
                if key is None:
                    if len(keys) != 1:
                        raise ValueError(
                            f"{p}: expected a single array or a key= naming one; "
                            f"got {len(keys)} arrays {keys}"
                        )
                    key = keys[0]
                elif key not in keys:
                    raise ValueError(f"key: expected one of {keys} in {p}; got {key!r}")
                try:
                    x = obj[key]
                except Exception as e:
                    raise ValueError(f"{p}: cannot read array {key!r}: {e}") from None
        else:
            x = obj
    return _validate(x, str(p))


def _read_csv(p: Path) -> np.ndarray:
    rows: list[list[float]] = []
    width = None
    with open(p, newline="", encoding="utf-8-sig") as f:
        for line_no, cells in enumerate(csv.reader(f), start=1):
            if not cells or all(not c.strip() for c in cells):
                continue  # blank line
            values = [_number(c) for c in cells]
            if line_no == 1 and all(v is None for v in values):
                continue  # header of column names
            if width is None:
                width = len(cells)
            elif len(cells) != width:
                raise ValueError(
                    f"{p}: line {line_no}: expected {width} comma-separated values; "
                    f"got {len(cells)}"
                )
            if None in values:
                col = values.index(None)
                raise ValueError(
                    f"{p}: line {line_no}, column {col + 1}: expected a number; got {cells[col]!r}"
                )
            rows.append(values)
    if not rows:
        raise ValueError(f"{p}: expected at least one line of numbers; got none")
    return np.asarray(rows, dtype=np.float64)


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _validate(x, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"{where}: expected real numbers; got dtype {x.dtype}")
    if x.ndim != 2:
        hint = " (use x.reshape(-1, 1) for one-dimensional data)" if x.ndim == 1 else ""
        raise ValueError(f"{where}: expected a 2-D array (N, D){hint}; got shape {x.shape}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{where}: expected at least one row and one column; got {x.shape}")
    x = x.astype(np.float32)
    bad = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
    if bad.size:
        shown = ", ".join(str(i) for i in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise ValueError(
            f"{where}: expected finite values; got NaN/inf in {bad.size} row(s) "
            f"(0-based rows {shown})"
        )
    return x
