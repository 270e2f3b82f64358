"""The ``inflow`` command, end to end in-process (plus one real subprocess)."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import random_mixture

import numpyro_inflow as nif
from numpyro_inflow.cli import main

SUBCOMMANDS = ["train", "encode", "decode", "sample", "info", "sbc"]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """A saved PR-reducing 3-D oracle flow (keep=2) and mixture samples as .npy."""
    root = tmp_path_factory.mktemp("cli")
    gm = random_mixture(5, n_comp=2, dim=3)
    schedule = nif.InflationSchedule.from_moments(*gm.moments(), keep=2)
    flow = nif.InflationaryFlow(schedule, gm, rtol=1e-5, atol=1e-5)
    nif.save_flow(flow, root / "flow")
    x = np.asarray(gm.sample(jax.random.key(2), 5))
    np.save(root / "x.npy", x)
    return root, flow, x


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err, *needles):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "error" in lines[0]
    for n in needles:
        assert n in lines[0], lines[0]


def test_encode_decode_round_trip(oracle, tmp_path, capsys):
    root, flow, x = oracle
    z_path, x_path = tmp_path / "z.npy", tmp_path / "xr.npy"
    assert _run(["encode", root / "flow", root / "x.npy", "--out", z_path], capsys)[0] == 0
    assert _run(["decode", root / "flow", z_path, "--out", x_path], capsys)[0] == 0
    z, xr = np.load(z_path), np.load(x_path)
    assert z.shape == x.shape
    # The commands are the library's maps, bit for bit (the accuracy of the round trip
    # itself is tested against closed forms in float64 in test_flow_oracle.py).
    np.testing.assert_array_equal(z, np.asarray(flow.encode(x)))
    np.testing.assert_array_equal(xr, np.asarray(flow.decode(z)))
    # PR-reducing: the squeezed latent coordinate is tiny, as the base variance says.
    eps = float(flow.base_variance[2])
    assert np.all(np.abs(z[:, 2]) < 6 * np.sqrt(eps))


def test_reduced_latent(oracle, tmp_path, capsys):
    root, _, _ = oracle
    zk, xk = tmp_path / "zk.npy", tmp_path / "xk.npy"
    assert _run(["encode", root / "flow", root / "x.npy", "--out", zk, "--reduced"], capsys)[0] == 0
    assert np.load(zk).shape == (5, 2)
    assert _run(["decode", root / "flow", zk, "--out", xk, "--reduced"], capsys)[0] == 0
    assert np.load(xk).shape == (5, 3)
    bad = ["decode", root / "flow", root / "x.npy", "--out", tmp_path / "o.npy", "--reduced"]
    code, _, err = _run(bad, capsys)
    assert code == 1  # three columns given, the reduced latent has two
    _one_error_line(err, "expected reduced latents with 2 columns", "(5, 3)")


def test_sample_is_seeded(oracle, tmp_path, capsys):
    root, _, _ = oracle
    a, b, c = (tmp_path / f"{n}.npy" for n in "abc")
    for path, seed in ((a, 1), (b, 1), (c, 2)):
        assert (
            _run(["sample", root / "flow", "-n", 3, "--seed", seed, "--out", path], capsys)[0] == 0
        )
    assert np.load(a).shape == (3, 3) and np.all(np.isfinite(np.load(a)))
    np.testing.assert_array_equal(np.load(a), np.load(b))
    assert not np.array_equal(np.load(a), np.load(c))


def test_info(oracle, capsys):
    root, flow, _ = oracle
    code, out, _ = _run(["info", root / "flow"], capsys)
    assert code == 0
    assert "dimension 3" in out and "PR-reducing, latent dimension 2" in out
    assert "GaussianMixtureScore(n_components=2" in out and "solver:      Tsit5()" in out
    assert "controller:  PIDController(rtol=1e-05, atol=1e-05)" in out
    code, out, _ = _run(["info", root / "flow", "--json"], capsys)
    assert code == 0 and json.loads(out)["schedule"]["t_end"] == flow.t_end


def test_bad_input_gives_one_line_and_nonzero_exit(oracle, tmp_path, capsys):
    root, _, _ = oracle
    flow_dir, x_npy = root / "flow", root / "x.npy"
    np.save(tmp_path / "two.npy", np.ones((4, 2), np.float32))
    existing = tmp_path / "exists.npy"
    np.save(existing, np.zeros(1))
    cases = [
        (["encode", tmp_path / "nope", x_npy, "--out", tmp_path / "o.npy"], "does not exist"),
        (["encode", flow_dir, tmp_path / "missing.npy", "--out", tmp_path / "o.npy"], "missing"),
        (["encode", flow_dir, tmp_path / "two.npy", "--out", tmp_path / "o.npy"], "3 columns"),
        (["encode", flow_dir, x_npy, "--out", existing], "--overwrite"),
        (["encode", flow_dir, x_npy, "--out", tmp_path / "o.txt"], "ending in .npy"),
        (["decode", flow_dir, x_npy, "--out", tmp_path / "no" / "o.npy"], "parent directory"),
        (["sample", flow_dir, "-n", 0, "--out", tmp_path / "o.npy"], "positive integer"),
        (["info", x_npy], "not a directory"),
        (["train", "blobs", "--out", tmp_path / "t"], "name: expected one of"),
        (["train", "moons", "--out", flow_dir], "--overwrite"),
        (["train", "moons", "--steps", 0, "--out", tmp_path / "t"], "--steps"),
        (["sbc", flow_dir, "--noise", 0], "--noise"),
        (["sbc", flow_dir, "--out", tmp_path / "r.txt"], "ending in .json"),
        (["sbc", flow_dir, "--out", existing.with_suffix(".json")], "--overwrite"),
    ]
    existing.with_suffix(".json").write_text("{}")
    for argv, needle in cases:
        code, _, err = _run(argv, capsys)
        assert code == 1, (argv, err)
        _one_error_line(err, needle)
    np.testing.assert_array_equal(np.load(existing), np.zeros(1))  # not overwritten
    assert not (tmp_path / "o.npy").exists() and not (tmp_path / "t").exists()


def test_overwrite_flag(oracle, tmp_path, capsys):
    root, flow, x = oracle
    out = tmp_path / "z.npy"
    np.save(out, np.zeros(1))
    argv = ["encode", root / "flow", root / "x.npy", "--out", out, "--overwrite"]
    assert _run(argv, capsys)[0] == 0
    np.testing.assert_array_equal(np.load(out), np.asarray(flow.encode(x)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.npy"]  # no temporary left


def test_output_files_get_the_umask_mode(oracle, tmp_path, capsys):
    # Written through a temporary file, yet with the mode of a plain open() (not 0o600).
    root, _, _ = oracle
    out = tmp_path / "z.npy"
    assert _run(["encode", root / "flow", root / "x.npy", "--out", out], capsys)[0] == 0
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert out.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help_of_every_subcommand(sub, capsys):
    code, out, _ = _run([sub, "--help"], capsys)
    assert code == 0
    assert out.startswith(f"usage: inflow {sub}") and "example" in out


def test_usage_errors_exit_2_with_one_line(capsys):
    for argv in ([], ["frobnicate"], ["encode"], ["sample", "d", "-n", "many"]):
        code, _, err = _run(argv, capsys)
        assert code == 2
        _one_error_line(err, "inflow")


def test_demo_forwards_arguments(tmp_path, capsys):
    code, out, _ = _run(["demo", "--help"], capsys)
    assert code == 0 and "--out" in out
    assert _run(["demo", "--no-such-option"], capsys)[0] == 2


def test_console_script_help():
    exe = Path(sys.executable).parent / "inflow"
    res = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for sub in [*SUBCOMMANDS, "demo"]:
        assert sub in res.stdout


def test_train_end_to_end(tmp_path, capsys):
    np.save(tmp_path / "data.npy", nif.datasets.load("s_curve", n=150, seed=3))
    out = tmp_path / "flow"
    argv = ["train", tmp_path / "data.npy", "--keep", 2, "--steps", 5, "--batch-size", 16]
    code, _, err = _run([*argv, "--out", out, "--quiet"], capsys)
    assert code == 0, err
    flow = nif.load_flow(out)
    assert (flow.dim, flow.latent_dim) == (3, 2)
    meta = nif.read_config(out)["metadata"]["training"]
    assert (meta["steps"], meta["batch_size"], meta["keep"]) == (5, 16, 2)
    code, _, err = _run([*argv, "--out", out], capsys)  # exists: refused before training
    assert code == 1
    _one_error_line(err, "--overwrite")


@pytest.mark.slow
# Tiny chains (plumbing only): coarse ranks and degenerate ESS estimates are expected.
@pytest.mark.filterwarnings("ignore:.*ranks are coarse:UserWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_sbc_end_to_end(oracle, tmp_path, capsys):
    root, _, _ = oracle
    report = tmp_path / "sbc.json"
    argv = ["sbc", root / "flow", "--simulations", 4, "--warmup", 5, "--samples", 8]
    argv += ["--chains", 1, "--kernel", "mala", "--quiet", "--out", report]
    code, out, _ = _run(argv, capsys)
    assert code == 0 and "SBC (4 simulations, mala)" in out
    rep = json.loads(report.read_text())
    assert rep["num_simulations"] == 4 and set(rep["adjusted_pvalues"]) == {
        "x_latent[0]",
        "x_latent[1]",
    }
