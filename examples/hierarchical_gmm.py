"""Hierarchical inference through a learned flow (de Albuquerque & Pearson 2024, sec. 5).

Latent points are drawn from a Gaussian mixture with unknown weights, decoded by an
inflationary flow trained on the circles data set, and observed with Gaussian noise
(std 0.1). NUTS infers the mixture weights and every latent point jointly, in the
latent space; the script prints the recovered weights next to the truth and saves a
figure.

The model::

    w ~ Dirichlet(1)                                    (K weights)
    z_i ~ sum_k w_k N(mu_k, s^2 I),  i = 1..N           (latent points, assignments summed out)
    x_i = decode(z_i)                                   (the flow, one batched solve)
    y_i ~ N(x_i, 0.1^2 I)

Usage::

    python examples/hierarchical_gmm.py                       # paper size: N = 2000
    python examples/hierarchical_gmm.py --n-points 50 --train-steps 300 --samples 50
    python examples/hierarchical_gmm.py --flow path/to/saved_flow

The paper-size run takes long on a CPU (each NUTS gradient decodes all N points);
the tiny arguments are a smoke test.
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS, init_to_value

import numpyro_inflow as nif

MEANS = jnp.array([[-1.2, 0.0], [1.2, 0.0], [0.0, 1.2]])  # latent component means
SPREAD = 0.3
NOISE = 0.1


def model(flow, n_points, y=None):
    k = MEANS.shape[0]
    w = numpyro.sample("w", dist.Dirichlet(jnp.ones(k)))
    comp = dist.Normal(MEANS, SPREAD).to_event(1)
    with numpyro.plate("points", n_points):
        z = numpyro.sample("z", dist.MixtureSameFamily(dist.Categorical(w), comp))
        x = numpyro.deterministic("x", flow.decode(z))
        numpyro.sample("y", dist.Normal(x, NOISE).to_event(1), obs=y)


def get_flow(args):
    if args.flow:
        flow = nif.InflationaryFlow.load(args.flow)
    else:
        x = nif.datasets.load("circles", n=args.train_points, seed=0)
        flow = nif.fit(x, steps=args.train_steps, seed=0, progress=False)
    if flow.dim != 2:
        raise ValueError(f"--flow: expected a 2-D flow; got dimension {flow.dim}")
    # throw=False: a failed solve gives NaN -> the proposal is rejected, not a crash
    return flow.replace(throw=False)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n-points", type=int, default=2000)
    p.add_argument("--weights", type=float, nargs="+", default=[0.5, 0.3, 0.2])
    p.add_argument("--flow", default=None, help="a flow saved with flow.save (else train one)")
    p.add_argument("--train-steps", type=int, default=20_000)
    p.add_argument("--train-points", type=int, default=20_000)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="hierarchical_gmm.png")
    args = p.parse_args(argv)
    w_true = np.asarray(args.weights, np.float64)
    if w_true.shape != (MEANS.shape[0],) or np.any(w_true < 0) or not np.isclose(w_true.sum(), 1):
        raise ValueError(f"--weights: expected {MEANS.shape[0]} non-negative numbers summing to 1")

    flow = get_flow(args)
    key_c, key_z, key_y, key_mc = jax.random.split(jax.random.key(args.seed), 4)
    comp = jax.random.choice(key_c, len(w_true), (args.n_points,), p=jnp.asarray(w_true))
    z_true = MEANS[comp] + SPREAD * jax.random.normal(key_z, (args.n_points, 2))
    x_true = flow.decode(z_true)
    y = x_true + NOISE * jax.random.normal(key_y, x_true.shape)

    init = init_to_value(values={"z": flow.encode(y), "w": jnp.ones(len(w_true)) / len(w_true)})
    mcmc = MCMC(
        NUTS(model, init_strategy=init),
        num_warmup=args.warmup,
        num_samples=args.samples,
        progress_bar=False,
    )
    mcmc.run(key_mc, flow, args.n_points, y, extra_fields=("diverging",))
    s = mcmc.get_samples()
    w_post = np.asarray(s["w"])
    print("mixture weights   true   posterior mean +- sd")
    for i, wt in enumerate(w_true):
        print(
            f"  w[{i}]          {wt:5.3f}   {w_post[:, i].mean():5.3f} +- {w_post[:, i].std():5.3f}"
        )
    z_err = np.sqrt(np.mean(np.sum((np.asarray(s["z"]).mean(0) - np.asarray(z_true)) ** 2, -1)))
    print(f"latent RMSE of posterior means: {z_err:.3f} (prior spread {SPREAD})")
    # failed solves (NaN decodes) are rejected and show up as divergences
    print(f"divergences: {int(mcmc.get_extra_fields()['diverging'].sum())}")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - plotting is optional
        return
    fig, ax = plt.subplots(1, 3, figsize=(12, 4))
    ax[0].scatter(*np.asarray(z_true).T, s=3, label="true latents")
    ax[0].scatter(*np.asarray(s["z"]).mean(0).T, s=3, label="posterior means")
    ax[0].set_title("latent space")
    ax[0].legend()
    ax[1].scatter(*np.asarray(y).T, s=3, c="gray", label="observations")
    ax[1].scatter(*np.asarray(s["x"]).mean(0).T, s=3, label="posterior means")
    ax[1].set_title("data space")
    ax[1].legend()
    for i in range(len(w_true)):
        ax[2].hist(w_post[:, i], bins=30, alpha=0.6, label=f"w[{i}]")
        ax[2].axvline(w_true[i], color="k", lw=1)
    ax[2].set_title("mixture weights (lines: truth)")
    ax[2].legend()
    fig.tight_layout()
    out = pathlib.Path(args.out)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
