"""Smoke tests of the hierarchical example with tiny arguments (trains a tiny flow)."""

import json

import pytest
from conftest import load_example


@pytest.mark.slow
def test_hierarchical_gmm_example_runs(tmp_path, capsys):
    res = load_example("hierarchical_gmm").main(
        [
            "--n-points",
            "10",
            "--train-steps",
            "50",
            "--train-points",
            "500",
            "--steps",
            "12",
            "--warmup",
            "10",
            "--samples",
            "10",
            "--no-progress",
            "--out",
            str(tmp_path / "h.png"),
            "--json",
            str(tmp_path / "h.json"),
        ]
    )
    out = capsys.readouterr().out
    assert "decode solver: ExponentialMultistep(3), 12 steps" in out
    assert "mixture weights" in out and "coverage of 90% intervals" in out
    assert "divergences" in out
    saved = json.loads((tmp_path / "h.json").read_text())
    assert len(saved["weights"]) == 3 and saved["nfe_per_solve"] == 14
    assert 0 <= saved["latent_coverage"] <= 1 and saved == json.loads(json.dumps(res))
    assert (tmp_path / "h.png").exists()


@pytest.mark.parametrize(
    "argv, name",
    [
        (["--weights", "0.5", "0.5"], "--weights"),
        (["--weights", "0.7", "0.7", "-0.4"], "--weights"),
        (["--n-points", "0"], "--n-points"),
        (["--steps", "-1"], "--steps"),
    ],
)
def test_hierarchical_gmm_example_rejects_bad_arguments(argv, name):
    with pytest.raises(ValueError, match=name):
        load_example("hierarchical_gmm").main(argv)
