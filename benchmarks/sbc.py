"""SBC throughput and verdicts, side by side with simuk; MALA vs NUTS ESS per second.

Usage:
    python benchmarks/sbc.py            # full
    python benchmarks/sbc.py --quick    # a couple of minutes on a laptop CPU

Writes benchmarks/results/sbc.json (numbers) and prints a Markdown table.

Problems:
- SBC: linear-Gaussian model theta ~ N(0, I_2), y ~ N(A theta, 0.5^2) (exact posterior
  known, so a correct sampler must pass). Same model, kernel (NUTS) and settings for
  nif.sbc (vectorised over simulations) and simuk.SBC (one MCMC run per simulation).
- ESS/s: posterior with a Gaussian-mixture oracle inflationary-flow prior (two
  components in 2D) and a linear-Gaussian observation of one projection.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS
from scipy import stats

import numpyro_inflow as nif

A = jnp.array([[1.0, 0.3], [0.0, 1.0], [0.5, -1.0]])


def linear_gaussian(y=None):
    theta = numpyro.sample("theta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    numpyro.sample("y", dist.Normal(A @ theta, 0.5).expand([4, 3]).to_event(2), obs=y)


def bench_nif(kernel, name, n_sims, warmup, samples, chains):
    t0 = time.perf_counter()
    res = nif.sbc(
        linear_gaussian,
        jax.random.key(0),
        observed="y",
        kernel=kernel,
        num_simulations=n_sims,
        num_warmup=warmup,
        num_samples=samples,
        num_chains=chains,
        batch_size=min(n_sims, 50),
        progress_bar=False,
    )
    wall = time.perf_counter() - t0
    return {
        "tool": "numpyro_inflow.sbc",
        "kernel": name,
        "simulations": n_sims,
        "wall_s": wall,
        "sims_per_min": 60 * n_sims / wall,
        "verdict": res.verdict,
        "min_adjusted_p": min(res.adjusted.values()),
    }


def bench_simuk(n_sims, warmup, samples, chains):
    try:
        import simuk
    except ImportError:
        return None
    kwargs = dict(
        num_warmup=warmup,
        num_samples=samples,
        num_chains=chains,
        chain_method="sequential",  # simuk reuses one kernel; "vectorized" breaks on re-init
        progress_bar=False,
    )
    sbc = simuk.SBC(
        NUTS(linear_gaussian),
        data_dir={"y": np.zeros((4, 3))},
        num_simulations=n_sims,
        sample_kwargs=kwargs,
        seed=0,
    )
    t0 = time.perf_counter()
    sbc.run_simulations()
    wall = time.perf_counter() - t0
    # simuk ranks all (unthinned) draws; test uniformity as nif does (KS + Holm)
    ranks = sbc.simulations["prior_sbc"]["theta"].values.reshape(n_sims, -1)  # (sims, 2)
    L = samples * chains
    rng = np.random.default_rng(0)
    pit = (ranks + rng.uniform(size=ranks.shape)) / (L + 1)
    p = [stats.kstest(pit[:, j], "uniform").pvalue for j in range(pit.shape[1])]
    adj = nif.calibration.holm(p)
    return {
        "tool": f"simuk {simuk.__version__}",
        "kernel": "NUTS",
        "simulations": n_sims,
        "wall_s": wall,
        "sims_per_min": 60 * n_sims / wall,
        "verdict": "PASS" if np.all(adj >= 0.05) else "FAIL",
        "min_adjusted_p": float(adj.min()),
    }


def flow_problem():
    score = nif.GaussianMixtureScore(
        jnp.array([0.5, 0.5]),
        jnp.array([[-1.0, 0.0], [1.0, 0.5]]),
        jnp.stack([0.3 * jnp.eye(2)] * 2),
    )
    flow = nif.InflationaryFlow(
        nif.InflationSchedule.from_moments(*score.moments()), score, rtol=1e-4, atol=1e-4
    )
    H = jnp.array([[1.0, 0.5]])

    def model(y=None):
        x = numpyro.sample("x", nif.InflationaryFlowDistribution(flow))
        numpyro.sample("y", dist.Normal(H @ x, 0.3).to_event(1), obs=y)

    return model, jnp.array([0.4])


def bench_ess(kernel, name, model, y, warmup, samples, chains):
    mcmc = MCMC(
        kernel(model),
        num_warmup=warmup,
        num_samples=samples,
        num_chains=chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    t0 = time.perf_counter()
    mcmc.run(jax.random.key(0), y=y)
    jax.block_until_ready(mcmc.get_samples())
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    mcmc.run(jax.random.key(1), y=y)  # same shapes: compiled code is reused
    jax.block_until_ready(mcmc.get_samples())
    wall = time.perf_counter() - t0
    with np.errstate(all="ignore"):
        d = nif.diagnose(mcmc, warn=False)
    ess = float(d.table["ess_bulk"].min())
    return {
        "kernel": name,
        "warmup": warmup,
        "samples": samples,
        "chains": chains,
        "first_run_s": first,
        "wall_s": wall,
        "min_ess_bulk": ess,
        "ess_per_s": ess / wall,
        "max_rhat": float(d.table["r_hat"].max()),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small settings (a few minutes)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sbc.json"))
    args = ap.parse_args(argv)
    q = args.quick
    n_sims, warm, samp, chains = (60, 150, 150, 2) if q else (200, 300, 300, 2)
    n_simuk = 10 if q else 40
    rows = [
        bench_nif(NUTS, "NUTS", n_sims, warm, samp, chains),
        bench_nif(nif.MALA, "MALA", n_sims, warm, samp, chains),
    ]
    sk = bench_simuk(n_simuk, warm, samp, chains)
    if sk is not None:
        rows.append(sk)
    model, y = flow_problem()
    ew, es = (100, 200) if q else (300, 1000)
    ess_rows = [
        bench_ess(nif.MALA, "MALA", model, y, ew, es, 2),
        bench_ess(NUTS, "NUTS", model, y, ew, es, 2),
    ]
    out = {
        "quick": q,
        "platform": platform.platform(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "sbc": rows,
        "ess": ess_rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print("| tool | kernel | simulations | wall (s) | sims/min | verdict |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['tool']} | {r['kernel']} | {r['simulations']} | {r['wall_s']:.1f} | "
            f"{r['sims_per_min']:.0f} | {r['verdict']} |"
        )
    print("\n| kernel | draws | wall (s) | min bulk ESS | ESS/s | max R-hat |")
    print("|---|---|---|---|---|---|")
    for r in ess_rows:
        print(
            f"| {r['kernel']} | {r['chains']}x{r['samples']} | {r['wall_s']:.1f} | "
            f"{r['min_ess_bulk']:.0f} | {r['ess_per_s']:.1f} | {r['max_rhat']:.3f} |"
        )
    print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()
