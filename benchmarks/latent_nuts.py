"""NUTS with a flow prior: latent space (LatentReparam) vs data space (plain site).

Measured side by side in one process, on exact Gaussian-mixture oracle flows whose
posterior under a linear-Gaussian likelihood is known in closed form:

* ``overlap``: 2-D, two overlapping components (unimodal-ish, non-Gaussian posterior);
* ``bimodal``: 2-D, two far-apart modes (the latent connects them, data space does not).

For each path: milliseconds per gradient, leapfrog steps (gradients) per sample,
effective samples per second, and the posterior error vs the exact answer. A third row
per problem differentiates through the authors' style of solver (fixed-step Euler,
701 steps) in the latent path, to compare network evaluations per gradient; two more
differentiate through the package's fixed-step third-order exponential multistep
integrator (``ExponentialMultistep(3)``, 24 and 33 steps: 26 and 35 evaluations per
solve, >= 20x fewer than 701). Every flow row also reports its solver error: the RMS /
max distance of its decode (latent rows) or encode (plain site) from a tight Tsit5 solve
(rtol = atol = 1e-8) on 1,000 points, a check that is free of Monte Carlo noise.

Baseline (b): a discrete normalizing flow, NumPyro's block neural autoregressive flow
(two ``BlockNeuralAutoregressiveTransform`` blocks, hidden factors [8, 8], a permutation
between them), fit by maximum likelihood (optax Adam) to samples of the same prior, used
as a data-space density in NUTS (one network pass per gradient; BNAF has no analytic
inverse, so it has no latent path). Unlike the oracle flow rows, it carries a training
error, reported as its held-out NLL gap to the exact prior.

Usage::

    python benchmarks/latent_nuts.py                 # default sizes
    python benchmarks/latent_nuts.py --warmup 50 --samples 100 --bnaf-steps 300  # smoke

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
import numpyro
import optax
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC, NUTS
from numpyro.nn.block_neural_arn import BlockNeuralAutoregressiveNN

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


def run_path(flow, problem, latent: bool, args, seed=0, model=None):
    """NUTS on ``problem``; ``model`` overrides the flow's model (exact answer from ``flow``)."""
    matrix, noise, y = PROBLEMS[problem]
    obs = nif.LinearGaussianObservation(matrix, noise)
    if model is None:
        model = nif.inverse_problem(flow, obs, latent=latent)
    mcmc = MCMC(NUTS(model), num_warmup=args.warmup, num_samples=args.samples, progress_bar=False)
    mcmc.warmup(jax.random.key(seed), y)  # adapts step size and mass matrix
    kernel, state = mcmc.sampler, mcmc.post_warmup_state

    # The timed sampling loop is compiled ahead of the clock: ``MCMC.run`` re-traces and
    # re-compiles its loop on every call (about 3 s here), which would swamp the
    # per-gradient cost. The adapted kernel step is scanned ``args.samples`` times.
    def chain(state):
        def body(s, _):
            s = kernel.sample(s, (y,), {})
            return s, (s.z, s.num_steps, s.diverging)

        return jax.lax.scan(body, state, None, length=args.samples)[1]

    compiled = jax.jit(chain).lower(state).compile()
    t0 = time.perf_counter()
    zs, num_steps, diverging = jax.block_until_ready(compiled(state))
    wall = time.perf_counter() - t0
    post = jax.jit(jax.vmap(kernel.postprocess_fn((y,), {})))
    x = np.asarray(post(zs)["x"])[None]  # (chain, draw, 2)
    steps = int(np.sum(num_steps))
    ess = effective_sample_size(np.asarray(x))
    mean, cov = exact_posterior(flow, matrix, noise, y)
    xs = np.asarray(x).reshape(-1, 2)
    sd = np.sqrt(np.diag(cov))
    return {
        "sampling_s": wall,
        "gradients": steps,
        "ms_per_gradient": 1e3 * wall / steps,
        "gradients_per_sample": steps / xs.shape[0],
        "ess_min": float(ess.min()),
        "ess_per_s": float(ess.min() / wall),
        "divergences": int(np.sum(diverging)),
        "mean_abs_err": float(np.abs(xs.mean(0) - mean).max()),
        "cov_abs_err": float(np.abs(np.cov(xs.T) - cov).max()),
        "posterior_sd": sd.tolist(),
        # Monte Carlo standard error of the posterior mean (largest over coordinates):
        # mean errors below about 2x this are indistinguishable from sampling noise.
        "mean_mc_se": float(np.max(sd / np.sqrt(np.asarray(ess)))),
    }


def nfe_per_solve(flow, latent: bool) -> float:
    z = jax.random.normal(jax.random.key(0), (256, 2))
    if latent:
        _, info = flow.decode_with_info(z)
    else:
        _, info = flow.encode_with_info(flow.decode(z))
    return float(np.mean(np.asarray(info.nfe)))


def solver_error(flow, ref, latent: bool) -> tuple[float, float]:
    """RMS and max abs error of ``flow``'s decode (latent) or encode (plain) vs ``ref``."""
    if latent:
        pts = jax.random.normal(jax.random.key(1), (1000, 2))
        got, want = flow.decode(pts), ref.decode(pts)
    else:
        pts = ref.decode(jax.random.normal(jax.random.key(1), (1000, 2)))
        got, want = flow.encode(pts), ref.encode(pts)
    err = np.asarray(got, np.float64) - np.asarray(want, np.float64)
    return float(np.sqrt(np.mean(err**2))), float(np.abs(err).max())


def prior_samples(flow, n: int, key) -> np.ndarray:
    """Draws from the flow's exact prior: the mixture convolved with N(0, Gamma_start)."""
    gm, sch = flow.score, flow.schedule
    w = np.asarray(sch.eigenvectors, np.float64)
    g0 = w @ np.diag(np.asarray(sch.gamma_start, np.float64)) @ w.T
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))
    wts = np.asarray(gm.weights, np.float64)
    comp = rng.choice(len(wts), size=n, p=wts / wts.sum())
    covs = np.asarray(gm.covariances, np.float64) + g0
    chol = np.linalg.cholesky(covs)
    eps = rng.standard_normal((n, 2))
    return np.asarray(gm.means, np.float64)[comp] + np.einsum("nij,nj->ni", chol[comp], eps)


def exact_prior_logpdf(flow, x: np.ndarray) -> np.ndarray:
    gm, sch = flow.score, flow.schedule
    w = np.asarray(sch.eigenvectors, np.float64)
    g0 = w @ np.diag(np.asarray(sch.gamma_start, np.float64)) @ w.T
    terms = []
    for pi, m, c in zip(
        np.asarray(gm.weights, np.float64),
        np.asarray(gm.means, np.float64),
        np.asarray(gm.covariances, np.float64) + g0,
        strict=True,
    ):
        d = x - m
        q = np.einsum("ni,ij,nj->n", d, np.linalg.inv(c), d)
        terms.append(np.log(pi) - 0.5 * q - 0.5 * np.linalg.slogdet(2 * np.pi * c)[1])
    t = np.stack(terms)
    mx = t.max(0)
    return mx + np.log(np.exp(t - mx).sum(0))


def fit_bnaf(train: np.ndarray, steps: int, seed: int = 0):
    """Maximum-likelihood BNAF (2 blocks, hidden [8, 8], a swap between); returns log_prob."""
    init, apply = BlockNeuralAutoregressiveNN(2, [8, 8], residual=None)
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = [init(k, (1, 2))[1] for k in (k1, k2)]

    def log_prob(params, x):
        logdet = 0.0
        for i, prm in enumerate(params):
            if i:
                x = x[..., ::-1]
            x, ld = apply(prm, x)
            logdet = logdet + ld.sum(-1)
        return jax.scipy.stats.norm.logpdf(x).sum(-1) + logdet

    sched = optax.cosine_decay_schedule(1e-2, steps, alpha=0.05)
    opt = optax.adam(sched)
    state = opt.init(params)
    data = jnp.asarray(train, jnp.float32)

    @jax.jit
    def step(params, state, key):
        idx = jax.random.randint(key, (512,), 0, data.shape[0])
        loss, g = jax.value_and_grad(lambda p: -log_prob(p, data[idx]).mean())(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, loss

    key = jax.random.key(seed + 1)
    for _ in range(steps):
        key, sub = jax.random.split(key)
        params, state, _ = step(params, state, sub)
    return params, log_prob


def bnaf_model(log_prob, params, obs):
    def model(y=None):
        x = numpyro.sample(
            "x",
            numpyro.distributions.ImproperUniform(
                numpyro.distributions.constraints.real_vector, (), (2,)
            ),
        )
        numpyro.factor("x_prior", log_prob(params, x))
        return obs("y", x, obs=y)

    return model


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--bnaf-steps", type=int, default=5000, help="0 skips baseline (b)")
    p.add_argument("--out", default="benchmarks/results/latent_nuts.json")
    args = p.parse_args(argv)

    results = {"device": str(jax.devices()[0]), "args": vars(args), "rows": []}
    for problem in PROBLEMS:
        gm = mixture(problem)
        sch = nif.InflationSchedule.from_moments(*gm.moments())
        flow = nif.InflationaryFlow(sch, gm, rtol=1e-4, atol=1e-4)
        euler = nif.InflationaryFlow(sch, gm, solver=diffrax.Euler(), dt0=sch.t_end / 701)
        ref = nif.InflationaryFlow(sch, gm, rtol=1e-8, atol=1e-8)

        def em3(n, fl=flow):
            return fl.replace(solver=nif.ExponentialMultistep(3), dt0=fl.t_end / n)

        rows = [
            ("latent (LatentReparam, Tsit5 rtol 1e-4)", flow, True),
            ("plain site (data-space log_prob)", flow, False),
            ("latent, fixed Euler 701 steps", euler, True),
            ("latent, ExponentialMultistep(3) 33 steps", em3(33), True),
            ("latent, ExponentialMultistep(3) 24 steps", em3(24), True),
        ]
        if args.bnaf_steps:
            rows.append(("BNAF prior (data space, b)", None, False))
        for label, fl, latent in rows:
            extra = {}
            if fl is None:  # baseline (b): BNAF fit to samples of the same prior
                t0 = time.perf_counter()
                train = prior_samples(flow, 20000, jax.random.key(10))
                params, log_prob = fit_bnaf(train, args.bnaf_steps)
                test = prior_samples(flow, 20000, jax.random.key(11))
                nll = -float(np.mean(np.asarray(log_prob(params, jnp.asarray(test, jnp.float32)))))
                nll_exact = -float(np.mean(exact_prior_logpdf(flow, test)))
                extra = dict(
                    bnaf_fit_s=time.perf_counter() - t0,
                    bnaf_test_nll=nll,
                    exact_test_nll=nll_exact,
                    nll_gap=nll - nll_exact,
                    nfe_per_solve=1.0,
                )
                obs = nif.LinearGaussianObservation(*PROBLEMS[problem][:2])
                r = run_path(flow, problem, False, args, model=bnaf_model(log_prob, params, obs))
            else:
                r = run_path(fl, problem, latent, args)
                rms, mx = solver_error(fl, ref, latent)
                extra = dict(nfe_per_solve=nfe_per_solve(fl, latent), solver_rms=rms, solver_max=mx)
            r.update(problem=problem, path=label, **extra)
            results["rows"].append(r)
            print(
                f"{problem:8s} {label:42s} {r['ms_per_gradient']:7.2f} ms/grad "
                f"{r['gradients_per_sample']:5.1f} grad/sample  ESS/s {r['ess_per_s']:7.1f}  "
                f"NFE/solve {r['nfe_per_solve']:6.0f}  mean err {r['mean_abs_err']:.3f}  "
                f"(MC se {r['mean_mc_se']:.3f})  cov err {r['cov_abs_err']:.3f}  "
                f"div {r['divergences']}  solver rms {r.get('solver_rms', float('nan')):.1e}  "
                f"nll gap {r.get('nll_gap', float('nan')):.3f}",
                flush=True,
            )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
