"""Built-in data sets (the paper's recipes, checked by their geometry) and user files."""

import numpy as np
import pytest

import numpyro_inflow as nif
from numpyro_inflow import datasets

DIMS = {"circles": 2, "moons": 2, "sine": 2, "s_curve": 3, "swirl": 3, "digits": 64}


def test_names_are_the_documented_ones():
    assert set(datasets.names()) == set(DIMS)
    assert datasets.NAMES == datasets.names()


@pytest.mark.parametrize("name", list(DIMS))
def test_shape_dtype_and_determinism(name):
    x = nif.datasets.load(name, n=300, seed=4)
    assert x.shape == (300, DIMS[name]) and x.dtype == np.float32
    assert np.all(np.isfinite(x))
    np.testing.assert_array_equal(x, datasets.load(name, n=300, seed=4))
    assert not np.array_equal(x, datasets.load(name, n=300, seed=5))


@pytest.mark.parametrize("name", ["circles", "moons", "sine", "s_curve", "swirl"])
def test_toy_sets_are_z_scored(name):
    x = datasets.load(name, n=500, seed=0).astype(np.float64)
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(0), 1.0, atol=1e-5)


def test_toy_default_size():
    assert datasets.load("moons").shape == (2000, 2)


def test_circles_radius_ratio_is_one_half():
    # make_circles(factor=0.5): two concentric rings, half the points on each. Both
    # columns have the same spread, so z-scoring scales the radii uniformly.
    x = datasets.load("circles", n=4000, seed=1)
    r = np.sort(np.hypot(x[:, 0], x[:, 1]))
    inner, outer = np.median(r[:2000]), np.median(r[2000:])
    assert inner / outer == pytest.approx(0.5, abs=0.03)


def test_sine_follows_sin_4pi_x_over_4():
    # x ~ U(-1, 1) has sd 1/sqrt(3), so the raw x is about x_z / sqrt(3); then
    # corr(y, sin(4 pi x)) = sqrt(signal / (signal + noise)) with signal var 1/32 and
    # noise var 0.15^2: about 0.76. A cosine (wrong recipe) is uncorrelated.
    x = datasets.load("sine", n=5000, seed=2).astype(np.float64)
    u = x[:, 0] / np.sqrt(3.0)
    assert np.abs(u).max() == pytest.approx(1.0, abs=0.03)
    expected = np.sqrt((1 / 32) / (1 / 32 + 0.15**2))
    assert np.corrcoef(x[:, 1], np.sin(4 * np.pi * u))[0, 1] == pytest.approx(expected, abs=0.04)
    assert abs(np.corrcoef(x[:, 1], np.cos(4 * np.pi * u))[0, 1]) < 0.1


@pytest.mark.parametrize("name", ["s_curve", "swirl"])
def test_3d_sets_have_a_uniform_width_axis(name):
    # Both generators draw the second coordinate uniformly (kurtosis 1.8); the other
    # axes are curved manifolds, and a Gaussian would have kurtosis 3.
    x = datasets.load(name, n=4000, seed=3).astype(np.float64)
    kurt = np.mean(x**4, axis=0)  # columns are already standardised
    assert kurt[1] == pytest.approx(1.8, abs=0.25)
    assert np.all(kurt < 2.6)


def test_digits_scaling_and_subsets():
    from sklearn.datasets import load_digits

    raw = load_digits().data
    x = datasets.load("digits")
    assert x.shape == (1797, 64)
    assert x.min() == -1.0 and x.max() == 1.0
    pixels = (x + 1.0) * 8.0  # documented map: p / 8 - 1
    np.testing.assert_array_equal(pixels, np.round(pixels))
    # A shuffled copy of the full set (compare as sorted rows).
    np.testing.assert_array_equal(np.unique(pixels, axis=0), np.unique(raw, axis=0))
    sub = datasets.load("digits", n=50, seed=7)
    assert sub.shape == (50, 64)
    rows = {tuple(r) for r in raw / 8.0 - 1.0}
    assert all(tuple(r) in rows for r in sub.astype(np.float64))
    assert not np.array_equal(sub, datasets.load("digits", n=50, seed=8))
    with pytest.raises(ValueError, match="n: expected at most 1797"):
        datasets.load("digits", n=1798)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "blobs"}, "name: expected one of circles, moons"),
        ({"name": "moons", "n": 1}, "n: expected an integer >= 2"),
        ({"name": "moons", "n": 2.5}, "n: expected an integer"),
        ({"name": "moons", "seed": -1}, "seed: expected a non-negative integer"),
        ({"name": "moons", "key": "x"}, "key: only meaningful for .npz"),
        ({"name": "data.txt"}, "name: expected one of"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        datasets.load(**kwargs)


# --------------------------------------------------------------------------- files
def test_npy_npz_csv(tmp_path):
    a = np.arange(12, dtype=np.int64).reshape(4, 3)
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "one.npz", a)
    np.savez(tmp_path / "two.npz", x=a, y=2 * a)
    (tmp_path / "a.csv").write_text("p,q,r\n0,1,2\n3,4,5\n\n6,7,8\n9,10,11\n")
    (tmp_path / "b.csv").write_text("0.5, 1e-3\n-2,3\n")
    for path in ("a.npy", "one.npz", "a.csv"):
        x = datasets.load(str(tmp_path / path))
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, a)
    np.testing.assert_array_equal(datasets.load_file(tmp_path / "two.npz", key="y"), 2 * a)
    np.testing.assert_array_equal(
        datasets.load(tmp_path / "b.csv"), np.float32([[0.5, 1e-3], [-2, 3]])
    )
    sub = datasets.load(tmp_path / "a.npy", n=2, seed=1)  # a random subset of rows
    assert sub.shape == (2, 3) and {tuple(r) for r in sub} <= {tuple(r) for r in a}
    with pytest.raises(ValueError, match="n: expected at most 4"):
        datasets.load(tmp_path / "a.npy", n=5)


@pytest.mark.parametrize(
    ("filename", "write", "kwargs", "message"),
    [
        ("x.txt", lambda p: p.write_text("1,2"), {}, r"expected a file ending in \.npy"),
        ("x.npy", None, {}, "which does not exist"),
        ("x.npy", lambda p: p.write_bytes(b"garbage"), {}, r"expected a readable \.npy"),
        ("x.npy", lambda p: np.save(p, np.ones(5)), {}, r"2-D array .*reshape.*got shape \(5,\)"),
        ("x.npy", lambda p: np.save(p, np.ones((2, 2, 2))), {}, "got shape"),
        ("x.npy", lambda p: np.save(p, np.ones((0, 2))), {}, "at least one row"),
        ("x.npy", lambda p: np.save(p, np.array([["a", "b"]])), {}, "expected real numbers"),
        (
            "x.npy",
            lambda p: np.save(p, np.array([[0, 1], [np.nan, 1], [2, 2], [1, np.inf]])),
            {},
            r"NaN/inf in 2 row\(s\) \(0-based rows 1, 3\)",
        ),
        (
            "x.npz",
            lambda p: np.savez(p, x=np.ones((2, 2)), y=np.ones((2, 2))),
            {},
            r"got 2 arrays \['x', 'y'\]",
        ),
        ("x.npz", lambda p: np.savez(p, x=np.ones((2, 2))), {"key": "z"}, "key: expected one of"),
        ("x.npy", lambda p: np.save(p, np.ones((2, 2))), {"key": "z"}, "only meaningful"),
        ("x.csv", lambda p: p.write_text("1,2\n3,oops\n"), {}, "line 2, column 2.*'oops'"),
        ("x.csv", lambda p: p.write_text("1,2\n3,4,5\n"), {}, "line 2: expected 2"),
        ("x.csv", lambda p: p.write_text("a,b\n"), {}, "at least one line of numbers"),
        ("x.csv", lambda p: p.write_text("1,2\nnan,4\n"), {}, r"rows 1\)"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, filename, write, kwargs, message):
    path = tmp_path / filename
    if write is not None:
        write(path)
    with pytest.raises(ValueError, match=message):
        datasets.load_file(path, **kwargs)


def test_directory_is_not_a_file(tmp_path):
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(ValueError, match="which is not a file"):
        datasets.load(tmp_path / "d.npy")
