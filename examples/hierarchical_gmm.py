"""Hierarchical inference through a learned flow (de Albuquerque & Pearson 2024, sec. 5).

Latent points are drawn from a Gaussian mixture with unknown weights, decoded by an
inflationary flow trained on the circles data set, and observed with Gaussian noise
(std 0.1). NUTS infers the mixture weights and every latent point jointly, in the
latent space; the script prints the recovered weights and latents next to the truth
and saves a figure (and optionally a JSON record of the run).

The model (``nif.evaluation.LatentMixtureProblem``, shared with
``benchmarks/latent_nuts.py``)::

    w ~ Dirichlet(1)                                    (K weights)
    z_i ~ sum_k w_k N(mu_k, s^2 I),  i = 1..N           (latent points, assignments summed out)
    x_i = decode(z_i)                                   (the flow, one batched solve)
    y_i ~ N(x_i, 0.1^2 I)

Every NUTS gradient decodes all N points and differentiates through the solve, so the
solver sets the cost: by default the decode uses the package's fixed-step third-order
exponential multistep integrator (``ExponentialMultistep(3)``, ``--steps 33``: 35
network evaluations per solve); the script prints its decode error against a tight
adaptive solve before sampling. ``--steps 0`` keeps the flow's own (adaptive) solver.

Usage::

    python examples/hierarchical_gmm.py                       # paper size: N = 2000
    python examples/hierarchical_gmm.py --n-points 50 --train-steps 300 --samples 50
    python examples/hierarchical_gmm.py --flow benchmarks/results/latent_nuts_circles_flow

Without ``--flow`` a small flow is trained on circles first (``--train-steps``). See
docs/benchmarks.md ("Latent NUTS") for the measured paper-size run on a CPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC, NUTS, init_to_value

import numpyro_inflow as nif

PROBLEM = nif.evaluation.LatentMixtureProblem()  # the paper's 3 latent components
K = len(PROBLEM.means)


def fast_flow(flow, steps: int):
    """``flow`` with the fixed-step ``ExponentialMultistep(3)`` solver (``steps`` steps)."""
    if steps == 0:
        return flow
    return flow.replace(solver=nif.ExponentialMultistep(3), dt0=flow.t_end / steps)


def decode_error(flow, ref, z) -> tuple[float, float]:
    """RMS and max abs distance between the decodes of ``z`` by ``flow`` and by ``ref``."""
    err = np.asarray(flow.decode(z), np.float64) - np.asarray(ref.decode(z), np.float64)
    return float(np.sqrt(np.mean(err**2))), float(np.abs(err).max())


def get_flow(args):
    if args.flow:
        flow = nif.load_flow(args.flow)
    else:
        x = nif.datasets.load("circles", n=args.train_points, seed=0)
        flow = nif.fit(
            x,
            steps=args.train_steps,
            seed=0,
            network=dict(width=32, depth=2),
            progress=args.progress,
        )
    if flow.dim != 2:
        raise ValueError(f"--flow: expected a 2-D flow; got dimension {flow.dim}")
    # throw=False: a failed solve gives NaN -> the proposal is rejected, not a crash
    return flow.replace(throw=False)


def summarize(s, w_true, comp, z_true, level: float = 0.9) -> dict:
    """Posterior summaries of the weights and latents against the truth."""
    lo, hi = 50 * (1 - level), 50 * (1 + level)
    w_post = np.asarray(s["w"], np.float64)
    realized = np.bincount(np.asarray(comp), minlength=len(w_true)) / len(comp)
    weights = []
    for i, wt in enumerate(w_true):
        a, b = np.percentile(w_post[:, i], [lo, hi])
        weights.append(
            dict(
                true=float(wt),
                realized_fraction=float(realized[i]),
                mean=float(w_post[:, i].mean()),
                sd=float(w_post[:, i].std()),
                interval=[float(a), float(b)],
                true_inside=bool(a <= wt <= b),
            )
        )
    z_post = np.asarray(s["z"], np.float64)
    z_true = np.asarray(z_true, np.float64)
    a, b = np.percentile(z_post, [lo, hi], axis=0)
    rmse = float(np.sqrt(np.mean(np.sum((z_post.mean(0) - z_true) ** 2, -1))))
    return dict(
        level=level,
        weights=weights,
        latent_rmse=rmse,
        latent_coverage=float(np.mean((a <= z_true) & (z_true <= b))),
        latent_posterior_sd_mean=float(z_post.std(0).mean()),
        ess_weights_min=float(effective_sample_size(w_post[None]).min()),
    )


def plot(path, y, s, z_true, w_true, key) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - plotting is optional
        return
    x_post = np.asarray(s["x"])
    draw = int(jax.random.randint(key, (), 0, x_post.shape[0]))
    y_rep = x_post[draw] + PROBLEM.noise * np.asarray(jax.random.normal(key, x_post.shape[1:]))
    fig, ax = plt.subplots(1, 4, figsize=(17, 4.2))
    ax[0].scatter(*np.asarray(y).T, s=2, c="gray", label="observations y")
    ax[0].scatter(*y_rep.T, s=2, c="C1", alpha=0.6, label="posterior predictive draw")
    ax[0].set_title("data space")
    ax[1].scatter(*np.asarray(y).T, s=2, c="gray", label="observations y")
    ax[1].scatter(*x_post.mean(0).T, s=2, c="C0", label="posterior mean of decode(z)")
    ax[1].set_title("decoded latents")
    ax[2].scatter(*np.asarray(z_true).T, s=2, c="k", label="true latents")
    ax[2].scatter(*np.asarray(s["z"]).mean(0).T, s=2, c="C0", alpha=0.6, label="posterior means")
    ax[2].set_title("latent space")
    for a in ax[:3]:
        a.set_aspect("equal")
        a.legend(loc="upper right", fontsize=7, markerscale=4)
    w_post = np.asarray(s["w"])
    for i in range(len(w_true)):
        ax[3].hist(w_post[:, i], bins=30, alpha=0.6, color=f"C{i}", label=f"w[{i}]")
        ax[3].axvline(w_true[i], color=f"C{i}", lw=2, ls="--")
    ax[3].set_title("weight posteriors (dashed: truth)")
    ax[3].legend(fontsize=7)
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n-points", type=int, default=2000, help="number of latent points N")
    p.add_argument("--weights", type=float, nargs="+", default=[0.5, 0.3, 0.2])
    p.add_argument("--flow", default=None, help="a flow saved with nif.save_flow (else train one)")
    p.add_argument("--train-steps", type=int, default=4000, help="without --flow")
    p.add_argument("--train-points", type=int, default=20_000, help="without --flow")
    p.add_argument(
        "--steps",
        type=int,
        default=33,
        help="fixed ExponentialMultistep(3) steps per decode; 0 keeps the flow's solver",
    )
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--max-tree-depth", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="hierarchical_gmm.png", help="figure path")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    w_true = np.asarray(args.weights, np.float64)
    if w_true.shape != (K,) or np.any(w_true < 0) or not np.isclose(w_true.sum(), 1):
        raise ValueError(f"--weights: expected {K} non-negative numbers summing to 1")
    for name in ("n_points", "warmup", "samples", "max_tree_depth"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer")
    if args.steps < 0:
        raise ValueError(f"--steps: expected 0 or a positive integer; got {args.steps}")

    t_start = time.perf_counter()
    base = get_flow(args)
    flow = fast_flow(base, args.steps)
    key_sim, key_mc, key_fig = jax.random.split(jax.random.key(args.seed), 3)
    # The data are simulated with a tight adaptive decode (the flow "as trained"), not
    # with the fast solver used for inference.
    ref = base.replace(solver=None, rtol=1e-7, atol=1e-7)
    comp, z_true, _, y = PROBLEM.simulate(ref, args.n_points, w_true, key_sim)

    rms, mx = decode_error(flow, ref, z_true)
    _, info = flow.decode_with_info(z_true[:256])
    nfe = float(np.mean(np.asarray(info.nfe)))
    solver = f"ExponentialMultistep(3), {args.steps} steps" if args.steps else "the flow's own"
    setup_s = time.perf_counter() - t_start
    print(
        f"decode solver: {solver} ({nfe:.0f} network evaluations per solve); error vs "
        f"Tsit5 rtol=atol=1e-7 on the {args.n_points} true latents: RMS {rms:.1e}, "
        f"max {mx:.1e} (observation noise {PROBLEM.noise}); setup {setup_s:.0f} s"
    )

    init = init_to_value(values={"z": flow.encode(y), "w": jnp.ones(len(w_true)) / len(w_true)})
    mcmc = MCMC(
        NUTS(
            functools.partial(PROBLEM.model, flow, args.n_points),
            init_strategy=init,
            max_tree_depth=args.max_tree_depth,
        ),
        num_warmup=args.warmup,
        num_samples=args.samples,
        progress_bar=args.progress,
    )
    t0 = time.perf_counter()
    mcmc.run(key_mc, y, extra_fields=("diverging", "num_steps"))
    s = jax.block_until_ready(mcmc.get_samples())  # run() returns before the chain ends
    mcmc_s = time.perf_counter() - t0
    extra = mcmc.get_extra_fields()
    res = summarize(s, w_true, comp, z_true)
    gradients = int(np.sum(np.asarray(extra["num_steps"])))

    print("mixture weights   true   realized   posterior mean +- sd   90% interval   inside")
    for i, r in enumerate(res["weights"]):
        print(
            f"  w[{i}]          {r['true']:5.3f}   {r['realized_fraction']:5.3f}      "
            f"{r['mean']:5.3f} +- {r['sd']:5.3f}        [{r['interval'][0]:.3f}, "
            f"{r['interval'][1]:.3f}]   {'yes' if r['true_inside'] else 'NO'}"
        )
    print(
        f"latent RMSE of posterior means: {res['latent_rmse']:.3f} (prior spread {PROBLEM.spread}, "
        f"mean posterior sd {res['latent_posterior_sd_mean']:.3f}); coverage of 90% "
        f"intervals: {res['latent_coverage']:.3f}"
    )
    print(f"min ESS of the weights: {res['ess_weights_min']:.0f} of {args.samples} draws")
    # failed solves (NaN decodes) are rejected and show up as divergences
    print(f"divergences: {int(np.sum(np.asarray(extra['diverging'])))}")
    print(
        f"NUTS: {gradients} gradients after warmup ({gradients / args.samples:.1f} per draw), "
        f"MCMC wall time {mcmc_s:.0f} s (warmup + sampling + compilation); "
        f"total {time.perf_counter() - t_start:.0f} s"
    )
    res.update(
        args=vars(args),
        nfe_per_solve=nfe,
        decode_rms_vs_tight=rms,
        decode_max_vs_tight=mx,
        divergences=int(np.sum(np.asarray(extra["diverging"]))),
        gradients_after_warmup=gradients,
        setup_s=setup_s,
        mcmc_s=mcmc_s,
        total_s=time.perf_counter() - t_start,
        device=str(jax.devices()[0]),
    )
    if args.json:
        out = pathlib.Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))
        print(f"wrote {out}")
    plot(args.out, y, s, z_true, w_true, key_fig)
    return res


if __name__ == "__main__":
    main()
