"""Smoke tests of the end-to-end demos (digits inpainting, the default; the oracle demo)."""

import json

import numpy as np

from numpyro_inflow import demo


def test_digits_demo_writes_report(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "unrelated.txt").write_text("keep me")
    args = ["--out", str(out), "--quick", "--quiet", "--coverage-digits", "2"]
    args += ["--warmup", "10", "--samples", "10"]
    assert demo.main(args) == 0
    for name in (
        "summary.txt",
        "summary.json",
        "inpainting.png",
        "posterior_samples.png",
        "calibration.png",
    ):
        assert (out / name).stat().st_size > 0
    assert (out / "unrelated.txt").read_text() == "keep me"
    assert not list(out.glob("*.tmp*"))
    summary = json.loads((out / "summary.json").read_text())
    inp = summary["inpainting"]
    assert inp["missing_pixels"] == 16
    assert np.isfinite(inp["psnr_posterior_mean"])
    assert 0 <= inp["coverage_90_missing"] <= 1
    assert inp["draws"] == 10 and np.isfinite(inp["psnr_latent_map"])
    assert summary["coverage"]["digits"] == [1, 2]
    assert 0 <= summary["coverage"]["coverage_90_missing"] <= 1
    assert str(out.resolve()) in capsys.readouterr().out


def test_block_mask_hides_a_4x4_block():
    m = demo.block_mask().reshape(8, 8)
    assert (~m).sum() == 16 and not m[2:6, 2:6].any() and m[:2].all()


def test_psnr_against_closed_form():
    # MSE 0.04 on a peak-to-peak range of 2: 10 log10(4 / 0.04) = 20 dB
    assert abs(demo.psnr(np.full(64, 0.2), np.zeros(64)) - 20.0) < 1e-9


def test_oracle_demo_writes_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(["--oracle", "--out", str(out), "-n", "40", "--grid", "40", "--quiet"]) == 0
    for name in ("flow.png", "log_density.png", "summary.json"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    # The oracle flow is exact: its log-density matches the analytic one and integrates to 1.
    assert summary["log_prob"]["mass_weighted_mean_abs_error"] < 1e-2
    assert abs(summary["log_prob"]["integral_on_grid"] - 1) < 2e-2
    assert str(out.resolve()) in capsys.readouterr().out
