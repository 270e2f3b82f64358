"""Smoke test of examples/coverage_toy.py on an exact (Gaussian-mixture oracle) flow.

With an exact score the flow is a homeomorphism up to solver error, so the fraction of
points inside a boundary must be the same in latent space, in data space (polygon
test) and after re-encoding, and the latent fraction must match the chi-square CDF,
written here in closed form (2 dof: 1 - exp(-r^2/2); 1 dof: erf(r/sqrt 2)).
"""

import json
import math

import pytest
from conftest import load_example


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        load_example("coverage_toy").main(["--help"])
    assert exc.value.code == 0
    assert "--flows" in capsys.readouterr().out


def test_quick_oracle_run(tmp_path):
    payload = load_example("coverage_toy").main(
        ["--quick", "--cases", "circles_k1", "--out", str(tmp_path)]
    )
    on_disk = json.loads((tmp_path / "coverage_toy_quick.json").read_text())
    assert on_disk["results"].keys() == {"circles_k1"}
    for fig in ("boundaries", "curves", "roc"):
        assert (tmp_path / f"coverage_toy_quick_{fig}.png").stat().st_size > 1000

    res = payload["results"]["circles_k1"]["boundary"]
    n = res["n_test"]
    exact = {1: lambda r: math.erf(r / math.sqrt(2)), 2: lambda r: 1 - math.exp(-(r**2) / 2)}
    assert set(res["conventions"]) == {"kept", "full"}
    for conv, c in res["conventions"].items():
        assert c["dof"] == (1 if conv == "kept" else 2)
        assert len(c["rows"]) == 7
        for row in c["rows"]:
            p = exact[c["dof"]](row["radius"])
            assert row["target"] == pytest.approx(p, abs=1e-9)
            sd = math.sqrt(p * (1 - p) / n)
            assert abs(row["latent"] - p) <= 4 * sd + 1.5 / n  # Monte Carlo draw of the base
            # exact score: at most a few points change side through decode/encode
            assert row["flips_reencoded"] <= max(2, 0.01 * n)
            assert row["boundary_radius_drift"] < 1e-2
            if conv == "full":  # closed 2-D ellipse: geometric data-space test
                assert abs(row["data_polygon"] - row["latent"]) <= 0.01

    rad = payload["results"]["circles_k1"]["radius"]
    for direction in ("gen", "melt"):
        assert 0.7 < rad[direction]["mean_auc"] <= 1.0
        for row in rad[direction]["rows"]:
            if row["n_inside"] >= 5:
                assert row["tpr_rmax"] >= 0.8  # mapped boundary encloses the mapped ball
