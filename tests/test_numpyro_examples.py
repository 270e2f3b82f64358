"""Smoke test of the hierarchical example with tiny arguments (slow: trains a flow)."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_hierarchical_gmm_example_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "hierarchical_gmm", ROOT / "examples" / "hierarchical_gmm.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(
        [
            "--n-points",
            "10",
            "--train-steps",
            "50",
            "--train-points",
            "500",
            "--warmup",
            "10",
            "--samples",
            "10",
            "--out",
            str(tmp_path / "h.png"),
        ]
    )
    out = capsys.readouterr().out
    assert "mixture weights" in out and "divergences" in out
