"""ODE accuracy benchmark: network evaluations per encode vs encode error.

Oracle: the exact score of a 2-D Gaussian mixture (8 components on a ring), so the
only error is the ODE solver's. Schedule end time: where the inflation variance is
1e3 times the top eigenvalue. The reference latent comes from Tsit5 with
rtol = atol = 1e-10 in float64 (computed in a child process, so that the methods run
in the package's default float32 unless ``--x64``).

Rows: fixed Euler with h = 0.01 (the authors' choice), Heun at a few h, adaptive
Tsit5, and this package's exponential integrators (``numpyro_inflow.solvers``) at
several step counts; optionally PR-reducing (keep=1) rows. Columns: mean network
evaluations (NFE) per encode, RMSE of ``z`` against the reference, and wall time per
10,000 points encoded (jit-compiled, compile excluded). Target: the accuracy of Euler
h = 0.01 at <= 1/30 of its evaluations.

Usage::

    python benchmarks/ode_accuracy.py            # full run (a few minutes on 2 CPU cores)
    python benchmarks/ode_accuracy.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def build_problem(keep, dtype):
    import jax.numpy as jnp

    import numpyro_inflow as nif

    n_comp, radius, var = 8, 2.0, 0.05
    ang = np.linspace(0, 2 * np.pi, n_comp, endpoint=False)
    means = np.stack([radius * np.cos(ang), radius * np.sin(ang)], axis=1)
    gm = nif.GaussianMixtureScore(
        jnp.full(n_comp, 1.0 / n_comp, dtype),
        jnp.asarray(means, dtype),
        jnp.asarray(np.tile(var * np.eye(2), (n_comp, 1, 1)), dtype),
    )
    # The ring's covariance is isotropic, so its eigenvectors are decided by rounding:
    # give the float32 run and the float64 reference bit-identical moments (numpy).
    mean = means.mean(0)
    cov = var * np.eye(2) + (means - mean).T @ (means - mean) / n_comp
    sch = nif.InflationSchedule.from_moments(
        jnp.asarray(mean, dtype), jnp.asarray(cov, dtype), keep=keep, end_ratio=1e3
    )
    return gm, sch


def sample_points(n, seed, dtype):
    import jax

    gm, _ = build_problem(None, dtype)
    return gm.sample(jax.random.key(seed), n)


def reference_worker(path, n, seed, keep):
    """Child process: float64 Tsit5 reference latents."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import numpyro_inflow as nif

    gm, sch = build_problem(keep, jnp.float64)
    x = sample_points(n, seed, jnp.float32).astype(jnp.float64)
    flow = nif.InflationaryFlow(sch, gm, rtol=1e-10, atol=1e-10, max_steps=100_000)
    z = flow.encode(x)
    np.savez(path, x=np.asarray(x), z=np.asarray(z))


def reference(n, seed, keep):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ref.npz")
        cmd = [sys.executable, __file__, "--_reference", path, "--n-points", str(n)]
        cmd += ["--seed", str(seed), "--keep", str(keep)]
        subprocess.run(cmd, check=True)
        data = np.load(path)
        return data["x"], data["z"]


def configurations(quick, t_end):
    """(family, label, flow keyword arguments, timed?) for each row."""
    import diffrax

    import numpyro_inflow as nif

    const = diffrax.ConstantStepSize()
    rows = [("Euler", "h=0.01", dict(solver=diffrax.Euler(), dt0=0.01), True)]
    for h in (0.2, 0.1, 0.05) if not quick else (0.1,):
        kw = dict(solver=diffrax.Heun(), dt0=h, stepsize_controller=const)  # not its PID
        rows.append(("Heun", f"h={h}", kw, h == 0.1))
    for tol in (1e-3, 1e-4, 1e-5, 1e-6) if not quick else (1e-4,):
        rows.append(("Tsit5", f"rtol=atol={tol:g}", dict(rtol=tol, atol=tol), tol == 1e-5))
    for n in (25, 50, 100, 200) if not quick else (50,):
        kw = dict(solver=nif.ExponentialMultistep(), dt0=t_end / n, stepsize_controller=const)
        rows.append(("ExpMultistep-2M", f"{n} steps", kw, n == 50))
    for n in (16, 24, 32, 48, 64, 96) if not quick else (32,):
        kw = dict(solver=nif.ExponentialMultistep(3), dt0=t_end / n, stepsize_controller=const)
        rows.append(("ExpMultistep-3M", f"{n} steps", kw, n in (32, 48)))
    for n in (12, 25, 50) if not quick else (25,):
        kw = dict(solver=nif.ExponentialMidpoint(), dt0=t_end / n, stepsize_controller=const)
        rows.append(("ExpMidpoint-2S", f"{n} steps", kw, n == 25))
    for tol in (1e-3, 1e-4) if not quick else ():
        kw = dict(solver=nif.ExponentialMidpoint(), rtol=tol, atol=tol)
        rows.append(("ExpMidpoint-2S adaptive", f"rtol=atol={tol:g}", kw, False))
    return rows


def run(args):
    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import numpyro_inflow as nif

    dtype = jnp.float64 if args.x64 else jnp.float32
    records = []
    keeps = [None] if args.no_prr else [None, 1]
    for keep in keeps:
        regime = "PRP" if keep is None else f"PRR keep={keep}"
        gm, sch = build_problem(keep, dtype)
        x_ref, z_ref = reference(args.n_points, args.seed, -1 if keep is None else keep)
        x = jnp.asarray(x_ref, dtype)
        x_time = sample_points(args.timing_points, args.seed + 1, dtype)
        rows = configurations(args.quick, sch.t_end)
        if keep is not None:  # PRR: the main configurations only
            rows = [r for r in rows if r[3]]
        for family, label, kw, timed in rows:
            flow = nif.InflationaryFlow(sch, gm, max_steps=20_000, **kw)
            z, info = flow.encode_with_info(x)
            err = np.asarray(z, np.float64) - z_ref
            rec = dict(
                regime=regime,
                method=family,
                setting=label,
                nfe=float(np.mean(np.asarray(info.nfe))),
                rmse=float(np.sqrt(np.mean(err**2))),
                max_abs_err=float(np.max(np.abs(err))),
                sec_per_10k=None,
            )
            if timed and not args.no_timing:
                jax.block_until_ready(flow.encode(x_time))  # compile
                t0 = time.perf_counter()
                jax.block_until_ready(flow.encode(x_time))
                rec["sec_per_10k"] = (time.perf_counter() - t0) * 10_000 / args.timing_points
            records.append(rec)
            print(_fmt(rec), flush=True)
    return records


def _fmt(r):
    t = "" if r["sec_per_10k"] is None else f"{r['sec_per_10k']:8.2f}"
    return (
        f"{r['regime']:<11} {r['method']:<24} {r['setting']:<16} "
        f"{r['nfe']:8.1f} {r['rmse']:10.2e} {r['max_abs_err']:10.2e} {t:>8}"
    )


def verdict(records):
    prp = [r for r in records if r["regime"] == "PRP"]
    euler = next(r for r in prp if r["method"] == "Euler")
    budget = euler["nfe"] / 30
    ok = [
        r
        for r in prp
        if r["method"].startswith("Exp") and r["nfe"] <= budget and r["rmse"] <= euler["rmse"]
    ]
    best = min(ok, key=lambda r: r["nfe"]) if ok else None
    return dict(
        euler_nfe=euler["nfe"],
        euler_rmse=euler["rmse"],
        nfe_budget=budget,
        met=best is not None,
        best=None if best is None else f"{best['method']} {best['setting']}",
        best_nfe=None if best is None else best["nfe"],
        best_rmse=None if best is None else best["rmse"],
        speedup_in_nfe=None if best is None else euler["nfe"] / best["nfe"],
    )


def plot(records, v, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    prp = [r for r in records if r["regime"] == "PRP"]
    for fam in dict.fromkeys(r["method"] for r in prp):
        rs = sorted((r for r in prp if r["method"] == fam), key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in rs], [r["rmse"] for r in rs], "o-", label=fam)
    ax.axhline(v["euler_rmse"], color="gray", ls="--", lw=0.8, label="Euler h=0.01 accuracy")
    ax.axvline(v["nfe_budget"], color="gray", ls=":", lw=0.8, label="1/30 of Euler's NFE")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="network evaluations per encode",
        ylabel="encode RMSE vs float64 reference",
        title="pfODE encode accuracy, 8-Gaussian ring (PRP)",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few rows and points")
    p.add_argument("--n-points", type=int, default=None, help="points for the accuracy (1000)")
    p.add_argument("--timing-points", type=int, default=None, help="points timed (10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--x64", action="store_true", help="run the methods in float64")
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--no-prr", action="store_true", help="skip the PR-reducing rows")
    p.add_argument("--out", type=Path, default=RESULTS, help="output directory")
    p.add_argument("--keep", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument("--_reference", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.n_points is None:
        args.n_points = 64 if args.quick else 1000
    if args._reference:
        reference_worker(
            args._reference, args.n_points, args.seed, None if args.keep < 0 else args.keep
        )
        return
    if args.timing_points is None:
        args.timing_points = 500 if args.quick else 10_000
    print(
        f"{'regime':<11} {'method':<24} {'setting':<16} {'NFE':>8} {'RMSE':>10} "
        f"{'max err':>10} {'s/10k':>8}"
    )
    records = run(args)
    v = verdict(records)
    print(json.dumps(v, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "ode_accuracy_quick" if args.quick else "ode_accuracy"
    with open(args.out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]))
        w.writeheader()
        w.writerows(records)
    meta = dict(args={k: str(val) for k, val in vars(args).items()}, verdict=v, rows=records)
    (args.out / f"{stem}.json").write_text(json.dumps(meta, indent=2))
    plot(records, v, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.{{csv,json,png}}")


if __name__ == "__main__":
    main()
