"""Smoke test of the end-to-end demo with tiny arguments."""

import json

from numpyro_inflow import demo


def test_demo_writes_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "-n", "40", "--grid", "40", "--quiet"]) == 0
    for name in ("flow.png", "log_density.png", "summary.json"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    # The oracle flow is exact: its log-density matches the analytic one and integrates to 1.
    assert summary["log_prob"]["mass_weighted_mean_abs_error"] < 1e-2
    assert abs(summary["log_prob"]["integral_on_grid"] - 1) < 2e-2
    assert str(out.resolve()) in capsys.readouterr().out
