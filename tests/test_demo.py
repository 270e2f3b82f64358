"""Smoke tests of the end-to-end demos (digits inpainting, the default; the oracle demo)."""

import json

import numpy as np
import pytest

from numpyro_inflow import demo


@pytest.mark.slow
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
    assert not list(out.glob("*.tmp*")) and not list(out.glob(".*"))
    summary = json.loads((out / "summary.json").read_text())
    inp = summary["inpainting"]
    assert inp["missing_pixels"] == 16
    assert np.isfinite(inp["psnr_posterior_mean"])
    assert 0 <= inp["coverage_90_missing"] <= 1
    assert inp["draws"] == 10 and np.isfinite(inp["psnr_latent_map"])
    assert summary["coverage"]["digits"] == [1, 2]
    cov = summary["coverage"]
    assert 0 <= cov["coverage_90_missing"] <= 1
    assert len(cov["levels"]) == len(cov["coverage_missing_by_level"]) == 19
    # the verdict follows the stated rule: 90 % coverage of the missing pixels in [85 %, 95 %]
    verdict = (out / "summary.txt").read_text().splitlines()[-2]
    passed = 0.85 <= cov["coverage_90_missing"] <= 0.95
    assert verdict.startswith("verdict: PASS" if passed else "verdict: FAIL")
    assert str(out.resolve()) in capsys.readouterr().out


def test_digits_demo_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(["--help"])
    assert exc.value.code == 0 and "--coverage-digits" in capsys.readouterr().out
    for bad in (["--digit", "297"], ["--missing", "1.5"], ["--noise", "0"]):
        with pytest.raises(SystemExit) as exc:
            demo.main(bad)
        assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        demo.main(["--oracle", "--help"])
    assert exc.value.code == 0 and "--num-points" in capsys.readouterr().out


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
