"""NUTS with a flow prior: latent space (LatentReparam) vs data space (plain site).

Measured side by side in one process, on exact Gaussian-mixture oracle flows whose
posterior under a linear-Gaussian likelihood is known in closed form:

* ``overlap``: 2-D, two overlapping components (unimodal-ish, non-Gaussian posterior);
* ``bimodal``: 2-D, two far-apart modes (the latent connects them, data space does not).

For each path: milliseconds per gradient, leapfrog steps (gradients) per sample,
effective samples per second, and the posterior error vs the exact answer. A third row
per problem differentiates through the authors' style of solver (fixed-step Euler,
701 steps) in the latent path, to compare network evaluations per gradient.

Usage::

    python benchmarks/latent_nuts.py                 # default sizes
    python benchmarks/latent_nuts.py --samples 200   # quick smoke run

Timings are wall-clock on whatever machine runs it; compare rows of one run only.
Results go to ``benchmarks/results/latent_nuts.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC, NUTS

import numpyro_inflow as nif


def mixture(kind: str) -> nif.GaussianMixtureScore:
    f = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    if kind == "overlap":
        return nif.GaussianMixtureScore(
            f([0.4, 0.6]),
            f([[-0.8, 0.0], [0.8, 0.3]]),
            f([[[0.4, 0.15], [0.15, 0.3]], [[0.3, -0.1], [-0.1, 0.5]]]),
        )
    return nif.GaussianMixtureScore(
        f([0.3, 0.7]), f([[-2.0, 0.0], [2.0, 0.0]]), f(0.15 * np.tile(np.eye(2), (2, 1, 1)))
    )


PROBLEMS = {
    "overlap": (jnp.array([[1.0, 1.0]]), 0.4, jnp.array([0.5])),
    "bimodal": (jnp.array([[0.0, 1.0]]), 0.3, jnp.array([0.2])),
}


def exact_posterior(flow, matrix, noise, y):
    gm, sch = flow.score, flow.schedule
    w = np.asarray(sch.eigenvectors, np.float64)
    g0 = w @ np.diag(np.asarray(sch.gamma_start, np.float64)) @ w.T
    a = np.asarray(matrix, np.float64)
    r = noise**2 * np.eye(a.shape[0])
    yv = np.asarray(y, np.float64)
    logw, mus, covs = [], [], []
    for pi, m, s in zip(
        np.asarray(gm.weights), np.asarray(gm.means), np.asarray(gm.covariances), strict=True
    ):
        c = s + g0
        cov = np.linalg.inv(np.linalg.inv(c) + a.T @ a / noise**2)
        mus.append(cov @ (np.linalg.solve(c, m) + a.T @ yv / noise**2))
        covs.append(cov)
        sy = a @ c @ a.T + r
        d = yv - a @ m
        logw.append(np.log(pi) - 0.5 * d @ np.linalg.solve(sy, d) - 0.5 * np.linalg.slogdet(sy)[1])
    wts = np.exp(np.array(logw) - max(logw))
    wts /= wts.sum()
    mus, covs = np.array(mus), np.array(covs)
    mean = wts @ mus
    second = np.einsum("m,mij->ij", wts, covs + np.einsum("mi,mj->mij", mus, mus))
    return mean, second - np.outer(mean, mean)


def run_path(flow, problem, latent: bool, args, seed=0):
    matrix, noise, y = PROBLEMS[problem]
    obs = nif.LinearGaussianObservation(matrix, noise)
    model = nif.inverse_problem(flow, obs, latent=latent)
    mcmc = MCMC(
        NUTS(model),
        num_warmup=args.warmup,
        num_samples=args.samples,
        progress_bar=False,
        num_chains=args.chains,
        chain_method="vectorized",
    )
    mcmc.warmup(jax.random.key(seed), y, extra_fields=("num_steps",))  # compiles + adapts
    t0 = time.perf_counter()
    mcmc.run(mcmc.post_warmup_state.rng_key, y, extra_fields=("num_steps", "diverging"))
    x = mcmc.get_samples(group_by_chain=True)["x"]
    jax.block_until_ready(x)
    wall = time.perf_counter() - t0
    steps = int(np.sum(mcmc.get_extra_fields()["num_steps"]))
    ess = effective_sample_size(np.asarray(x))
    mean, cov = exact_posterior(flow, matrix, noise, y)
    xs = np.asarray(x).reshape(-1, 2)
    return {
        "sampling_s": wall,
        "gradients": steps,
        "ms_per_gradient": 1e3 * wall / steps,
        "gradients_per_sample": steps / xs.shape[0],
        "ess_min": float(ess.min()),
        "ess_per_s": float(ess.min() / wall),
        "divergences": int(np.sum(mcmc.get_extra_fields()["diverging"])),
        "mean_abs_err": float(np.abs(xs.mean(0) - mean).max()),
        "cov_abs_err": float(np.abs(np.cov(xs.T) - cov).max()),
        "posterior_sd": np.sqrt(np.diag(cov)).tolist(),
    }


def nfe_per_solve(flow, latent: bool) -> float:
    z = jax.random.normal(jax.random.key(0), (256, 2))
    if latent:
        _, info = flow.decode_with_info(z)
    else:
        _, info = flow.encode_with_info(flow.decode(z))
    return float(np.mean(np.asarray(info.nfe)))


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--chains", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/latent_nuts.json")
    args = p.parse_args(argv)

    results = {"device": str(jax.devices()[0]), "args": vars(args), "rows": []}
    for problem in PROBLEMS:
        gm = mixture(problem)
        sch = nif.InflationSchedule.from_moments(*gm.moments())
        flow = nif.InflationaryFlow(sch, gm, rtol=1e-4, atol=1e-4)
        euler = nif.InflationaryFlow(sch, gm, solver=diffrax.Euler(), dt0=sch.t_end / 701)
        rows = [
            ("latent (LatentReparam, Tsit5 rtol 1e-4)", flow, True),
            ("plain site (data-space log_prob)", flow, False),
            ("latent, fixed Euler 701 steps", euler, True),
        ]
        for label, fl, latent in rows:
            r = run_path(fl, problem, latent, args)
            r.update(problem=problem, path=label, nfe_per_solve=nfe_per_solve(fl, latent))
            results["rows"].append(r)
            print(
                f"{problem:8s} {label:42s} {r['ms_per_gradient']:7.2f} ms/grad "
                f"{r['gradients_per_sample']:5.1f} grad/sample  ESS/s {r['ess_per_s']:7.1f}  "
                f"NFE/solve {r['nfe_per_solve']:6.0f}  mean err {r['mean_abs_err']:.3f}  "
                f"cov err {r['cov_abs_err']:.3f}  div {r['divergences']}",
                flush=True,
            )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
