"""Saving and loading flows: bit-for-bit round trips, atomic writes, clear errors."""

import json

import diffrax
import jax
import numpy as np
import pytest
from conftest import random_mixture, ring_mixture

import numpyro_inflow as nif
from numpyro_inflow._io import atomic_directory
from numpyro_inflow.persistence import FORMAT_VERSION, read_config


def _gm_flow(keep=None, **kwargs):
    gm = random_mixture(3, n_comp=3, dim=3)
    schedule = nif.InflationSchedule.from_moments(*gm.moments(), keep=keep)
    return nif.InflationaryFlow(schedule, gm, **kwargs), gm


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A PR-reducing oracle flow with non-default solver settings, saved once."""
    flow, gm = _gm_flow(
        keep=1,
        stepsize_controller=diffrax.PIDController(rtol=1e-4, atol=1e-4, pcoeff=0.2, icoeff=0.5),
        max_steps=2000,
    )
    path = tmp_path_factory.mktemp("saved") / "flow"
    nif.save_flow(flow, path)
    return flow, gm, path


def _round_trip_equal(flow, loaded, x):
    z = flow.encode(x)
    np.testing.assert_array_equal(np.asarray(loaded.encode(x)), np.asarray(z))
    np.testing.assert_array_equal(np.asarray(loaded.decode(z)), np.asarray(flow.decode(z)))


# --------------------------------------------------------------------------- round trips
def test_gaussian_mixture_round_trip_is_bit_for_bit(saved):
    flow, gm, path = saved
    loaded = nif.load_flow(path)
    x = gm.sample(jax.random.key(1), 6)
    _round_trip_equal(flow, loaded, x)
    # The reloaded flow is the same pytree (arrays and static settings), leaf for leaf.
    assert jax.tree.structure(loaded) == jax.tree.structure(flow)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(flow), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_empirical_score_and_fixed_step_solver_round_trip(tmp_path):
    x = np.asarray(ring_mixture().sample(jax.random.key(0), 37))
    emp = nif.EmpiricalScore(x, chunk_size=16)  # 37 rows -> 3 padded chunks
    flow = nif.InflationaryFlow(
        nif.InflationSchedule.from_data(x),
        emp,
        solver=diffrax.Heun(),
        stepsize_controller=diffrax.ConstantStepSize(),
        dt0=0.05,
        throw=False,
    )
    nif.save_flow(flow, tmp_path / "f")
    loaded = nif.load_flow(tmp_path / "f")
    assert type(loaded.solver) is diffrax.Heun
    assert type(loaded.stepsize_controller) is diffrax.ConstantStepSize
    assert (loaded.dt0, loaded.throw) == (0.05, False)
    assert loaded.score.n_data == 37 and loaded.score.chunk_size == 16
    _round_trip_equal(flow, loaded, x[:4])


def test_package_solver_and_settings_are_rebuilt(tmp_path):
    flow, _ = _gm_flow(
        solver=nif.ExponentialMidpoint(),
        stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-6, dtmax=0.5),
        adjoint=diffrax.RecursiveCheckpointAdjoint(checkpoints=7),
        trace="hutchinson",
        num_probes=3,
        max_steps=123,
    )
    nif.save_flow(flow, tmp_path / "f")
    loaded = nif.load_flow(tmp_path / "f")
    assert type(loaded.solver) is nif.ExponentialMidpoint
    c = loaded.stepsize_controller
    assert (type(c), c.rtol, c.atol, c.dtmax) == (diffrax.PIDController, 1e-3, 1e-6, 0.5)
    assert loaded.adjoint.checkpoints == 7
    assert (loaded.trace, loaded.num_probes, loaded.max_steps) == ("hutchinson", 3, 123)


def test_config_json_is_readable_and_matches_the_flow(saved):
    flow, _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["format_version"] == FORMAT_VERSION
    assert cfg["package_version"] == nif.__version__
    s = cfg["schedule"]
    sch = flow.schedule
    assert (s["dim"], s["keep"], s["dtype"]) == (3, 1, "float32")
    assert (s["gamma0"], s["rho"], s["A0"], s["t_end"]) == (sch.gamma0, sch.rho, sch.A0, sch.t_end)
    assert s["proportional"] is False
    f = cfg["flow"]  # the flow's settings, in their closed vocabulary of plain values
    assert f == flow.settings()
    assert f["solver"] == {"name": "Tsit5"}
    assert f["stepsize_controller"] == {
        "name": "PIDController",
        "rtol": 1e-4,
        "atol": 1e-4,
        "pcoeff": 0.2,
        "icoeff": 0.5,
    }
    assert f["max_steps"] == 2000
    assert cfg["score"] == {
        "class": "GaussianMixtureScore",
        "config": {"n_components": 3, "dim": 3, "dtype": "float32"},
    }
    # The summary is for people; it agrees with an independent eigen-decomposition. The
    # flow is float32: its eigenvalues (0.32 to 13.6 here) carry an absolute error of about
    # eps32 * lam_max = 1e-6, a relative 3e-6 at most, well inside rtol = 1e-4.
    lam = np.linalg.eigvalsh(np.asarray(flow.score.moments()[1], np.float64))[::-1]
    np.testing.assert_allclose(cfg["summary"]["eigenvalues"], lam, rtol=1e-4)


def test_metadata_is_stored_and_bad_metadata_writes_nothing(tmp_path):
    flow, _ = _gm_flow()
    meta = {"training": {"steps": np.int64(10), "lr": 1e-3, "data": "moons"}}
    nif.save_flow(flow, tmp_path / "a", metadata=meta)
    assert read_config(tmp_path / "a")["metadata"] == {
        "training": {"steps": 10, "lr": 1e-3, "data": "moons"}
    }
    with pytest.raises(ValueError, match="metadata: expected JSON-serialisable"):
        nif.save_flow(flow, tmp_path / "b", metadata={"f": print})
    with pytest.raises(ValueError, match="metadata: expected a dict"):
        nif.save_flow(flow, tmp_path / "b", metadata=[1])
    assert not (tmp_path / "b").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temporary leftovers


def test_unsupported_score_is_refused_before_writing(tmp_path):
    class Shifted(nif.AbstractScore):
        @property
        def dim(self):
            return 3

        def denoise(self, w, t, schedule):
            return 0.5 * w

    flow, _ = _gm_flow()
    odd = nif.InflationaryFlow(flow.schedule, Shifted())
    with pytest.raises(ValueError, match=r"flow\.score: expected one of the savable"):
        nif.save_flow(odd, tmp_path / "x")
    # A solver outside the settings vocabulary is refused too, before anything is written.
    implicit = flow.replace(solver=diffrax.Kvaerno5())
    with pytest.raises(ValueError, match="solver: expected one of"):
        nif.save_flow(implicit, tmp_path / "x")
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- overwrite
def test_refuses_to_overwrite_and_keeps_the_old_flow(tmp_path, saved):
    flow, _, _ = saved
    path = tmp_path / "f"
    nif.save_flow(flow, path)
    other, _ = _gm_flow()  # PR-preserving: a different config
    with pytest.raises(ValueError, match="pass overwrite=True"):
        nif.save_flow(other, path)
    assert read_config(path)["schedule"]["keep"] == 1
    nif.save_flow(other, path, overwrite=True)
    assert read_config(path)["schedule"]["keep"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    with pytest.raises(ValueError, match="parent directory exists"):
        nif.save_flow(other, tmp_path / "missing" / "f")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="existing file"):
        nif.save_flow(other, tmp_path / "file", overwrite=True)


def test_atomic_directory_all_or_nothing(tmp_path):
    target = tmp_path / "d"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a").write_text("new")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # nothing created, temporary removed

    with atomic_directory(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target and not target.exists()
        (tmp / "a").write_text("one")
    assert (target / "a").read_text() == "one"

    with pytest.raises(RuntimeError):  # a failed overwrite leaves the old content intact
        with atomic_directory(target, overwrite=True) as tmp:
            (tmp / "a").write_text("two")
            raise RuntimeError("boom")
    assert (target / "a").read_text() == "one"

    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "b").write_text("three")
        assert (target / "a").read_text() == "one"  # old content still there meanwhile
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]

    with pytest.raises(ValueError, match="does not exist yet"):
        with atomic_directory(target):
            pass


# --------------------------------------------------------------------------- broken dirs
def _copy(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def _edit_config(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def _set(section, key, value):
    return lambda c: c[section].__setitem__(key, value)


def _truncate(p):
    w = p / "weights.eqx"
    w.write_bytes(w.read_bytes()[:-40])


def _truncate_unchecked(p):
    _truncate(p)
    _edit_config(p, lambda c: c["weights"].pop("sha256"))


def _append_unchecked(p):
    w = p / "weights.eqx"
    w.write_bytes(w.read_bytes() + np.zeros(3).tobytes())
    _edit_config(p, lambda c: c["weights"].pop("sha256"))


def _flip_byte(p):
    w = p / "weights.eqx"
    b = bytearray(w.read_bytes())
    b[-3] ^= 0xFF
    w.write_bytes(bytes(b))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "config.json").unlink(), r"config\.json: missing"),
        (lambda p: (p / "weights.eqx").unlink(), r"weights\.eqx: missing"),
        (lambda p: (p / "config.json").write_text("{not json"), "expected valid JSON"),
        (lambda p: (p / "config.json").write_text("[1, 2]"), "expected format"),
        (
            lambda p: _edit_config(p, lambda c: c.__setitem__("format_version", 99)),
            f"expected format_version {FORMAT_VERSION}.*got 99",
        ),
        (lambda p: _edit_config(p, lambda c: c.pop("flow")), "expected a 'flow' section"),
        (lambda p: _edit_config(p, lambda c: c["schedule"].pop("t_end")), "'t_end'"),
        (
            lambda p: _edit_config(
                p, lambda c: c["score"]["config"].__setitem__("n_components", 4)
            ),
            r"array score\.weights: expected shape \(4,\).*got shape \(3,\)",
        ),
        (
            lambda p: _edit_config(p, _set("schedule", "dim", 2)),
            r"array schedule\.mean: expected shape \(2,\)",
        ),
        (lambda p: _edit_config(p, _set("schedule", "dtype", "float64")), "jax_enable_x64"),
        (
            lambda p: _edit_config(p, _set("score", "class", "Mystery")),
            "score.class: expected one of",
        ),
        (
            lambda p: _edit_config(p, _set("flow", "solver", {"name": "os.system"})),
            r"settings\['solver'\]: expected \{'name': one of",
        ),
        (
            lambda p: _edit_config(p, lambda c: c["flow"].pop("max_steps")),
            r"settings\['max_steps'\]: expected an entry",
        ),
        (_truncate, "SHA-256"),
        (_flip_byte, "SHA-256"),
        (_truncate_unchecked, "truncated or corrupt at array"),
        (_append_unchecked, "extra data"),
    ],
    ids=[
        "no-config",
        "no-weights",
        "bad-json",
        "not-a-flow",
        "unknown-version",
        "no-section",
        "missing-field",
        "score-shape",
        "schedule-shape",
        "float64",
        "unknown-score",
        "foreign-class",
        "missing-setting",
        "truncated",
        "bit-flip",
        "truncated-no-checksum",
        "extra-data",
    ],
)
def test_damaged_directory_gives_a_clear_error(saved, tmp_path, damage, message):
    _, _, path = saved
    broken = _copy(path, tmp_path / "broken")
    damage(broken)
    with pytest.raises(ValueError, match=message):
        nif.load_flow(broken)


def test_load_missing_or_non_directory(tmp_path):
    with pytest.raises(ValueError, match="which does not exist"):
        nif.load_flow(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="which is not a directory"):
        nif.load_flow(tmp_path / "file")


def test_saving_is_deterministic(tmp_path, saved):
    flow, _, path = saved
    nif.save_flow(flow, tmp_path / "again")
    assert (tmp_path / "again" / "weights.eqx").read_bytes() == (path / "weights.eqx").read_bytes()
    a = json.loads((path / "config.json").read_text())
    b = json.loads((tmp_path / "again" / "config.json").read_text())
    assert a == b


def test_unwritable_location_gives_a_clear_error_and_writes_nothing(tmp_path):
    # A path under a regular file cannot be created (permissions cannot be used: tests may
    # run as root); the error names the argument, and the file beside it is untouched.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("user data")
    with pytest.raises(ValueError, match="path"):
        nif.save_flow(_gm_flow()[0], blocker / "flow")
    assert blocker.read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-dir"]
