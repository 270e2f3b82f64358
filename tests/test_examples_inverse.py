"""Tests of examples/inverse_problems.py: interval coverage controls and a smoke run.

The coverage controls need no flow: under a Gaussian prior the exact posterior is known
(``LinearGaussianObservation.gaussian_posterior``), so truths drawn from that prior must
land in its pixel-wise 90 % intervals about 90 % of the time (positive control), and in
intervals half as wide only about ``P(|Z| <= 0.82) = 59 %`` of the time (negative
control). The same holds for intervals read off posterior draws, the routine the flow
samplers use.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_example
from scipy import stats

import numpyro_inflow as nif
from numpyro_inflow.evaluation import block_mask, psnr


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        load_example("inverse_problems").main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--problems", "--flow", "--test-digits", "--quick", "--results"):
        assert opt in text


@pytest.mark.parametrize(
    "argv, name",
    [
        (["--problems", "nope"], "--problems"),
        (["--test-digits", "0"], "--test-digits"),
        (["--noise", "-1"], "--noise"),
        (["--flow", "/no/such/flow"], "--flow"),
    ],
)
def test_bad_arguments_name_the_option(argv, name, capsys):
    with pytest.raises(SystemExit) as exc:
        load_example("inverse_problems").parse(argv)
    assert exc.value.code == 2
    assert name in capsys.readouterr().err


def _gaussian_world(mod, num_truths=300, seed=0):
    """Truths from the digits' Gaussian prior, observed through the block mask."""
    data = np.asarray(nif.datasets.load("digits", seed=0), np.float64)
    mean, cov = mod.gaussian_baseline(data[: mod.N_TRAIN])
    rng = np.random.default_rng(seed)
    truths = rng.multivariate_normal(mean, cov, num_truths)
    obs = nif.LinearGaussianObservation.mask(block_mask(), 0.1)
    keys = jax.random.split(jax.random.key(seed), num_truths)
    ys = [obs.simulate(k, jnp.asarray(t, jnp.float32)) for k, t in zip(keys, truths, strict=True)]
    posts = [obs.gaussian_posterior(jnp.asarray(mean), jnp.asarray(cov), y) for y in ys]
    means = np.stack([np.asarray(m, np.float64) for m, _ in posts])
    covs = np.stack([np.asarray(c, np.float64) for _, c in posts])
    return truths, means, covs, ~block_mask()


def test_gaussian_interval_coverage_controls():
    mod = load_example("inverse_problems")
    truths, means, covs, missing = _gaussian_world(mod)
    stds = np.sqrt(np.clip(np.diagonal(covs, axis1=1, axis2=2), 0, None))
    inside = mod.gaussian_inside(means, stds, truths, 0.9)
    assert inside.shape == truths.shape
    # positive control: exact posterior intervals, all pixels and the missing block
    assert abs(inside.mean() - 0.9) < 0.02
    assert abs(inside[:, missing].mean() - 0.9) < 0.03
    # negative control: intervals half as wide must under-cover (~59 %)
    narrow = mod.gaussian_inside(means, 0.5 * stds, truths, 0.9).mean()
    expected = 2 * stats.norm.cdf(0.5 * stats.norm.ppf(0.95)) - 1
    assert abs(narrow - expected) < 0.03
    assert narrow < 0.7
    with pytest.raises(ValueError, match="level"):
        mod.gaussian_inside(means, stds, truths, 1.5)


def test_sample_interval_coverage_controls():
    """Intervals from posterior draws (what the samplers report) behave the same way."""
    mod = load_example("inverse_problems")
    truths, means, covs, missing = _gaussian_world(mod, num_truths=150, seed=1)
    rng = np.random.default_rng(2)
    hits, narrow = [], []
    for t, m, c in zip(truths, means, covs, strict=True):
        draws = rng.multivariate_normal(m, c, 400, method="cholesky")
        hits.append(mod.sample_inside(draws, t, 0.9))
        # a sampler stuck near the mean: draws with a third of the spread
        narrow.append(mod.sample_inside(m + (draws - m) / 3, t, 0.9))
    hits, narrow = np.stack(hits), np.stack(narrow)
    assert abs(hits[:, missing].mean() - 0.9) < 0.04
    assert narrow[:, missing].mean() < 0.6


def test_min_ess_is_large_for_independent_and_small_for_sticky_chains():
    mod = load_example("inverse_problems")
    rng = np.random.default_rng(0)
    iid = rng.normal(size=(400, 3))
    sticky = np.repeat(rng.normal(size=(20, 3)), 20, axis=0)  # each value held 20 steps
    assert mod.min_ess(iid) > 200
    assert mod.min_ess(sticky) < 60


@pytest.mark.slow
def test_quick_run_writes_files_and_sane_numbers(tmp_path):
    out = tmp_path / "out"
    prefix = tmp_path / "bench" / "ip"
    payload = load_example("inverse_problems").main(
        [
            "--quick",
            "--quiet",
            "--problems",
            "inpainting_block",
            "--test-digits",
            "1",
            "--out",
            str(out),
            "--results",
            str(prefix),
        ]
    )
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads((tmp_path / "bench" / "ip.json").read_text())
    for fig in ("inpainting_block.png", "summary.png"):
        assert (out / fig).stat().st_size > 1000
        assert (tmp_path / "bench" / f"ip_{fig}").stat().st_size > 1000
    assert not list(out.glob("*.tmp*"))
    rec = payload["problems"]["inpainting_block"]
    assert on_disk["problems"].keys() == {"inpainting_block"}
    assert rec["missing_pixels"] == 16 and rec["num_obs"] == 48 and rec["digits"] == 1
    assert set(rec["methods"]) == {"flow_nuts", "flow_mala", "gaussian", "latent_map"}
    for name, m in rec["methods"].items():
        assert math.isfinite(m["psnr_mean"]) and 5.0 < m["psnr_mean"] < 60.0, name
        assert m["seconds_per_digit"] > 0
        if name == "latent_map":
            assert m["coverage_90_all"] is None
            continue
        for c in (m["coverage_90_all"], m["coverage_90_missing"]):
            assert 0.0 <= c <= 1.0
        if name.startswith("flow_"):
            assert m["min_ess_mean"] > 0 and math.isfinite(m["ess_per_second"])
    # 48 of 64 pixels are seen with noise 0.1: the posterior means must beat a blank image
    truth = np.asarray(nif.datasets.load("digits", seed=0))[1500]
    blank = psnr(np.zeros(64), truth)
    for name in ("flow_nuts", "gaussian", "latent_map"):
        assert rec["methods"][name]["psnr_mean"] > blank + 3.0, name
