"""NUTS with a flow prior: latent space (LatentReparam) vs data space (plain site).

Measured side by side in one process (``--problems`` picks a subset; the rows of the
problems not rerun are kept in the JSON):

* ``overlap``: exact Gaussian-mixture oracle flow, 2-D, two overlapping components
  (unimodal-ish, non-Gaussian posterior), closed-form posterior;
* ``bimodal``: oracle flow, two far-apart modes (the latent connects them, data space
  does not), closed-form posterior;
* ``circles``: a *trained* PR-preserving flow on the circles data (``nif.fit``, residual
  MLP of width 32 and depth 2, 4,000 steps; trained once and saved to
  ``--circles-flow``), ``x1`` observed with noise 0.2 at ``y = 1``: the posterior lies
  on three separated arcs (the inner ring's right side, the outer ring's top and
  bottom). Its exact answer is the posterior *under the learned prior*, by quadrature on
  a 141 x 301 grid (spacing 0.02) of ``flow.log_prob`` (Tsit5 rtol = atol = 1e-6, exact trace) times
  the likelihood; the half-resolution grid gives the quadrature error.
* ``hierarchical``: the model of ``examples/hierarchical_gmm.py`` with the circles flow
  at ``--hier-points`` latents (default 200): one warmup with the fast solver, then the
  same adapted state sampled with ``ExponentialMultistep(3)`` 33 steps and with Euler
  701 steps; weight recovery against the truth.

For each path: milliseconds per gradient, leapfrog steps (gradients) per sample,
effective samples per second, and the posterior error vs the exact answer. One row
per problem differentiates through the authors' style of solver (fixed-step Euler,
701 steps) in the latent path, to compare network evaluations per gradient; two more
differentiate through the package's fixed-step third-order exponential multistep
integrator (``ExponentialMultistep(3)``, 24 and 33 steps: 26 and 35 evaluations per
solve, >= 20x fewer than 701). Every flow row also reports its solver error: the RMS /
max distance of its decode (latent rows) or encode (plain site) from a tight Tsit5 solve
(rtol = atol = 1e-8 for the oracles, 1e-7 for the float32 trained flow) on 1,000
points, a check that is free of Monte Carlo noise.

Baseline (b): a discrete normalizing flow, NumPyro's block neural autoregressive flow
(``BlockNeuralAutoregressiveTransform`` blocks with a swap between consecutive ones:
two blocks of hidden factors [8, 8] for the oracles, three of [16, 16] for circles),
fit by maximum likelihood (optax Adam) to samples of the same prior (oracles) or to the
same 20,000 circles points the flow was trained on, and used as a data-space density in
NUTS (one network pass per gradient; BNAF has no analytic inverse, so it has no latent
path). On the oracles its training error is its held-out NLL gap to the exact prior; on
circles its posterior is compared with its own grid quadrature, and that quadrature
posterior with the flow's (how far the two learned priors' answers are apart).

Usage::

    python benchmarks/latent_nuts.py                 # every problem, default sizes
    python benchmarks/latent_nuts.py --problems circles,hierarchical --warmup 400 --samples 1500
    python benchmarks/latent_nuts.py --warmup 50 --samples 100 --bnaf-steps 300 \
        --hier-points 20 --hier-warmup 30 --hier-samples 30 --hier-euler-samples 5  # smoke

Timings are wall-clock on whatever machine runs it; compare rows of one run only.
Results go to ``benchmarks/results/latent_nuts.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
import tqdm
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC, NUTS, init_to_value
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
    # trained circles prior, x1 observed: the posterior follows the inner ring's right arc
    # and two arcs of the outer ring (three separated modes in data space)
    "circles": (jnp.array([[1.0, 0.0]]), 0.2, jnp.array([1.0])),
}
ALL_PROBLEMS = ("overlap", "bimodal", "circles", "hierarchical")
# quadrature box of the circles posterior: x1 within 7 noise sd of y, x2 covering the rings
CIRCLES_GRID = ((1.0 - 7 * 0.2, 1.0 + 7 * 0.2), (-3.0, 3.0))
CIRCLES_GRID_SHAPE = (141, 301)  # spacing 0.02
BNAF_CIRCLES = ((16, 16), 3)  # hidden factors and blocks of the circles BNAF
HIER_WEIGHTS = (0.5, 0.3, 0.2)


def exact_posterior(flow, matrix, noise, y):
    """Mean and covariance of an oracle flow's posterior, in closed form."""
    return nif.evaluation.GaussianMixture.of_flow(flow).condition(matrix, noise, y).moments()


def em3(flow, steps: int):
    """``flow`` with the fixed-step ``ExponentialMultistep(3)`` solver, ``steps`` steps."""
    return flow.replace(solver=nif.ExponentialMultistep(3), dt0=flow.t_end / steps)


def timed_chain(kernel, state, model_args: tuple, samples: int):
    """``samples`` iterations of an adapted ``kernel`` from ``state``, compiled ahead of the clock.

    ``MCMC.run`` re-traces and re-compiles its loop on every call (about 3 s here), which
    would swamp the per-gradient cost, so the kernel step is scanned and compiled first.
    Returns the unconstrained draws, leapfrog steps and divergence flags per draw, the
    final state and the wall time of the compiled loop.
    """

    def chain(state):
        def body(s, _):
            s = kernel.sample(s, model_args, {})
            return s, (s.z, s.num_steps, s.diverging)

        return jax.lax.scan(body, state, None, length=samples)

    compiled = jax.jit(chain).lower(state).compile()
    t0 = time.perf_counter()
    last, (zs, num_steps, diverging) = jax.block_until_ready(compiled(state))
    return zs, np.asarray(num_steps), np.asarray(diverging), last, time.perf_counter() - t0


def run_path(flow, problem, latent: bool, args, exact, seed=0, model=None):
    """NUTS on ``problem``; ``model`` overrides the flow's model; ``exact``: (mean, cov)."""
    matrix, noise, y = PROBLEMS[problem]
    obs = nif.LinearGaussianObservation(matrix, noise)
    if model is None:
        model = nif.inverse_problem(flow, obs, latent=latent)
    mcmc = MCMC(NUTS(model), num_warmup=args.warmup, num_samples=args.samples, progress_bar=False)
    mcmc.warmup(jax.random.key(seed), y)  # adapts step size and mass matrix
    kernel, state = mcmc.sampler, mcmc.post_warmup_state
    zs, num_steps, diverging, _, wall = timed_chain(kernel, state, (y,), args.samples)
    post = jax.jit(jax.vmap(kernel.postprocess_fn((y,), {})))
    x = np.asarray(post(zs)["x"])[None]  # (chain, draw, 2)
    steps = int(np.sum(num_steps))
    ess = effective_sample_size(np.asarray(x))
    mean, cov = exact
    xs = np.asarray(x).reshape(-1, 2)
    sd = np.sqrt(np.diag(cov))
    mean_err = np.abs(xs.mean(0) - mean)
    mc_se = sd / np.sqrt(np.asarray(ess))
    return {
        "sampling_s": wall,
        "gradients": steps,
        "ms_per_gradient": 1e3 * wall / steps,
        "gradients_per_sample": steps / xs.shape[0],
        "ess_min": float(ess.min()),
        "ess_per_s": float(ess.min() / wall),
        "divergences": int(np.sum(diverging)),
        "mean_abs_err": float(mean_err.max()),
        "cov_abs_err": float(np.abs(np.cov(xs.T) - cov).max()),
        "posterior_mean": [float(v) for v in xs.mean(0)],
        "posterior_sd": sd.tolist(),
        # Monte Carlo standard error of the posterior mean (largest over coordinates):
        # mean errors below about 2x this are indistinguishable from sampling noise.
        "mean_mc_se": float(np.max(mc_se)),
        "mean_err_in_mc_se": float(np.max(mean_err / mc_se)),
    }


def nfe_per_solve(flow, latent: bool) -> float:
    z = jax.random.normal(jax.random.key(0), (256, 2))
    if latent:
        _, info = flow.decode_with_info(z)
    else:
        _, info = flow.encode_with_info(flow.decode(z))
    return float(np.mean(np.asarray(info.nfe)))


def decode_error(flow, ref, z) -> tuple[float, float]:
    """RMS and max abs distance between the decodes of ``z`` by ``flow`` and by ``ref``."""
    err = np.asarray(flow.decode(z), np.float64) - np.asarray(ref.decode(z), np.float64)
    return float(np.sqrt(np.mean(err**2))), float(np.abs(err).max())


def solver_error(flow, ref, latent: bool) -> tuple[float, float]:
    """RMS and max abs error of ``flow``'s decode (latent) or encode (plain) vs ``ref``."""
    z = jax.random.normal(jax.random.key(1), (1000, 2))
    if latent:
        return decode_error(flow, ref, z)
    pts = ref.decode(z)
    err = np.asarray(flow.encode(pts), np.float64) - np.asarray(ref.encode(pts), np.float64)
    return float(np.sqrt(np.mean(err**2))), float(np.abs(err).max())


def prior_samples(flow, n: int, key) -> np.ndarray:
    """Draws from the flow's exact prior: the mixture convolved with N(0, Gamma_start)."""
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))
    return nif.evaluation.GaussianMixture.of_flow(flow).sample(rng, n)


def fit_bnaf(train: np.ndarray, steps: int, seed: int = 0, hidden=(8, 8), blocks: int = 2):
    """Maximum-likelihood BNAF (``blocks`` blocks, hidden factors ``hidden``, a swap between
    consecutive blocks); returns ``(params, log_prob)``."""
    init, apply = BlockNeuralAutoregressiveNN(2, list(hidden), residual=None)
    keys = jax.random.split(jax.random.key(seed), blocks)
    params = [init(k, (1, 2))[1] for k in keys]

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


CIRCLES_FLOW = "benchmarks/results/latent_nuts_circles_flow"
CIRCLES_TRAIN = dict(n=20_000, seed=0, steps=4000, width=32, depth=2)


def circles_data(n: int, seed: int) -> np.ndarray:
    return nif.datasets.load("circles", n=n, seed=seed)


def circles_flow(path, train: dict = CIRCLES_TRAIN) -> tuple[nif.InflationaryFlow, dict]:
    """Load the trained circles flow at ``path``, or train a small PR-preserving one and save it.

    Training (``train``): ``nif.fit`` on ``n`` circles points (seed ``seed``), a residual MLP
    of the given width and depth, ``steps`` steps of 512; about 10 s on 2 CPU cores.
    Returns the flow and its training record (stored in the saved flow's metadata).
    """
    path = pathlib.Path(path)
    if path.exists():
        flow = nif.load_flow(path)
        if flow.dim != 2 or flow.latent_dim != 2:
            raise ValueError(f"--circles-flow: expected a 2-D PR-preserving flow at {path}")
        return flow, dict(nif.read_config(path).get("metadata", {}), path=str(path), trained=False)
    x = circles_data(train["n"], train["seed"])
    t0 = time.perf_counter()
    flow = nif.fit(
        x,
        steps=train["steps"],
        seed=train["seed"],
        network=dict(width=train["width"], depth=train["depth"]),
        progress=True,
    )
    record = dict(train, train_s=time.perf_counter() - t0)
    nif.save_flow(flow, path, metadata=record)
    return flow, dict(record, path=str(path), trained=True)


def grid_posterior(log_prior, matrix, noise, y, box, shape, chunk: int = 8192) -> dict:
    """Posterior mean and covariance by quadrature on a regular grid over ``box``.

    ``log_prior`` maps points ``(M, 2)`` to log-densities ``(M,)``; the likelihood is
    ``N(y; matrix x, noise^2 I)``. Returns the moments on the full grid, the same on the
    half-resolution grid (every other node) as a quadrature-error estimate, and the
    posterior mass in the outermost ring of cells (small when the box is large enough).
    """
    axes = [np.linspace(lo, hi, n) for (lo, hi), n in zip(box, shape, strict=True)]
    gx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    f = jax.jit(lambda x: log_prior(x))  # (bound methods of eqx modules do not hash)
    logp = np.concatenate(
        [
            np.asarray(f(jnp.asarray(gx[i : i + chunk], jnp.float32)), np.float64)
            for i in tqdm.trange(0, len(gx), chunk, desc="grid", leave=False)
        ]
    )
    a, yv = np.asarray(matrix, np.float64), np.asarray(y, np.float64)
    loglik = -0.5 * np.sum((gx @ a.T - yv) ** 2, -1) / noise**2
    logw = (logp + loglik).reshape(shape)
    pts = gx.reshape(*shape, 2)

    def moments(lw, x):
        w = np.exp(lw - lw.max())
        w /= w.sum()
        m = np.einsum("ij,ijk->k", w, x)
        d = x - m
        return m, np.einsum("ij,ijk,ijl->kl", w, d, d), w

    mean, cov, w = moments(logw, pts)
    mean2, cov2, _ = moments(logw[::2, ::2], pts[::2, ::2])
    ring = w.sum() - w[1:-1, 1:-1].sum()
    return dict(
        mean=mean,
        cov=cov,
        quad_mean_err=float(np.abs(mean - mean2).max()),
        quad_cov_err=float(np.abs(cov - cov2).max()),
        boundary_mass=float(ring),
        finite=bool(np.all(np.isfinite(logp))),
    )


def circles_rows(args) -> list[dict]:
    """The 2-D inverse problem with the trained circles prior (see `CIRCLES_GRID`)."""
    flow, record = circles_flow(args.circles_flow)
    print(f"circles flow: {record}", flush=True)
    matrix, noise, y = PROBLEMS["circles"]
    ref = flow.replace(solver=None, rtol=1e-7, atol=1e-7)
    quad = flow.replace(solver=None, rtol=1e-6, atol=1e-6, trace="exact")
    t0 = time.perf_counter()
    exact = grid_posterior(quad.log_prob, matrix, noise, y, CIRCLES_GRID, CIRCLES_GRID_SHAPE)
    quad_s = time.perf_counter() - t0
    print(
        f"circles grid posterior ({quad_s:.0f} s): mean {exact['mean']}, quadrature err "
        f"{exact['quad_mean_err']:.1e} / {exact['quad_cov_err']:.1e}, boundary mass "
        f"{exact['boundary_mass']:.1e}",
        flush=True,
    )
    test = jnp.asarray(circles_data(5000, 1))
    flow_nll = -float(np.mean(np.asarray(quad.log_prob(test))))
    common = dict(
        exact_source="grid quadrature of the flow's log_prob (Tsit5 rtol=atol=1e-6, exact "
        "trace) times the likelihood",
        exact_mean=exact["mean"].tolist(),
        exact_cov=exact["cov"].tolist(),
        quad_mean_err=exact["quad_mean_err"],
        quad_cov_err=exact["quad_cov_err"],
        boundary_mass=exact["boundary_mass"],
        grid_s=quad_s,
        flow_test_nll=flow_nll,
        circles_flow=record,
    )

    paths = [
        ("latent (LatentReparam, Tsit5 rtol 1e-4)", flow.replace(rtol=1e-4, atol=1e-4), True),
        ("plain site (data-space log_prob)", flow.replace(rtol=1e-4, atol=1e-4), False),
        (
            "latent, fixed Euler 701 steps",
            flow.replace(solver=diffrax.Euler(), dt0=flow.t_end / 701),
            True,
        ),
        ("latent, ExponentialMultistep(3) 33 steps", em3(flow, 33), True),
        ("latent, ExponentialMultistep(3) 24 steps", em3(flow, 24), True),
    ]
    rows = []
    for label, fl, latent in tqdm.tqdm(paths, desc="circles", leave=False):
        r = run_path(fl, "circles", latent, args, (exact["mean"], exact["cov"]))
        rms, mx = solver_error(fl, ref, latent)
        r.update(common, nfe_per_solve=nfe_per_solve(fl, latent), solver_rms=rms, solver_max=mx)
        rows.append(dict(r, problem="circles", path=label))
        print_row(rows[-1])
    if args.bnaf_steps:
        t0 = time.perf_counter()
        train = circles_data(CIRCLES_TRAIN["n"], CIRCLES_TRAIN["seed"])
        params, log_prob = fit_bnaf(
            train, args.bnaf_steps, hidden=BNAF_CIRCLES[0], blocks=BNAF_CIRCLES[1]
        )
        fit_s = time.perf_counter() - t0
        bnaf_lp = functools.partial(log_prob, params)
        own = grid_posterior(bnaf_lp, matrix, noise, y, CIRCLES_GRID, CIRCLES_GRID_SHAPE)
        obs = nif.LinearGaussianObservation(matrix, noise)
        r = run_path(
            flow,
            "circles",
            False,
            args,
            (own["mean"], own["cov"]),
            model=bnaf_model(log_prob, params, obs),
        )
        r.update(
            common,
            exact_source="grid quadrature of the BNAF's own log_prob times the likelihood",
            exact_mean=own["mean"].tolist(),
            exact_cov=own["cov"].tolist(),
            quad_mean_err=own["quad_mean_err"],
            quad_cov_err=own["quad_cov_err"],
            boundary_mass=own["boundary_mass"],
            bnaf_fit_s=fit_s,
            bnaf_hidden=list(BNAF_CIRCLES[0]),
            bnaf_blocks=BNAF_CIRCLES[1],
            bnaf_test_nll=-float(np.mean(np.asarray(log_prob(params, test)))),
            # how far the BNAF's exact posterior is from the flow's exact posterior
            prior_shift_mean=float(np.abs(own["mean"] - exact["mean"]).max()),
            prior_shift_cov=float(np.abs(own["cov"] - exact["cov"]).max()),
            nfe_per_solve=1.0,
        )
        rows.append(dict(r, problem="circles", path="BNAF prior (data space, b)"))
        print_row(rows[-1])
    return rows


def hierarchical_rows(args) -> list[dict]:
    """The hierarchical example at ``--hier-points`` latents: 3M-33 vs Euler 701 gradients.

    One warmup (with 3M-33) adapts step size and mass matrix; both solvers then sample
    from the same post-warmup state with that adaptation, so they differ only in the
    decode inside every gradient (Euler's own warmup would cost 20x more).
    """
    problem = nif.evaluation.LatentMixtureProblem()  # the model of examples/hierarchical_gmm.py
    flow, record = circles_flow(args.circles_flow)
    flow = flow.replace(throw=False)
    n, w_true = args.hier_points, np.asarray(HIER_WEIGHTS)
    ref = flow.replace(solver=None, rtol=1e-7, atol=1e-7)  # simulates the data
    comp, z_true, _, y = problem.simulate(ref, n, w_true, jax.random.key(args.hier_seed))
    realized = np.bincount(np.asarray(comp), minlength=len(w_true)) / n
    fast = em3(flow, 33)
    euler = flow.replace(solver=diffrax.Euler(), dt0=flow.t_end / 701)
    init = init_to_value(values={"z": fast.encode(y), "w": jnp.ones(len(w_true)) / len(w_true)})
    mcmc = MCMC(
        NUTS(functools.partial(problem.model, fast, n), init_strategy=init),
        num_warmup=args.hier_warmup,
        num_samples=args.hier_samples,
        progress_bar=False,
    )
    t0 = time.perf_counter()
    mcmc.warmup(jax.random.key(args.hier_seed + 1), y)
    adapted = jax.block_until_ready(mcmc.post_warmup_state)
    warmup_s = time.perf_counter() - t0
    rows = []
    for label, fl, samples in (
        ("ExponentialMultistep(3) 33 steps", fast, args.hier_samples),
        ("fixed Euler 701 steps", euler, args.hier_euler_samples),
    ):
        kernel = NUTS(functools.partial(problem.model, fl, n))
        state = kernel.init(
            jax.random.key(args.hier_seed + 2), 0, adapted.z, model_args=(y,), model_kwargs={}
        )
        state = state._replace(adapt_state=adapted.adapt_state, rng_key=adapted.rng_key)
        zs, num_steps, diverging, _, wall = timed_chain(kernel, state, (y,), samples)
        post = jax.jit(jax.vmap(kernel.postprocess_fn((y,), {})))(zs)
        w, z = np.asarray(post["w"], np.float64), np.asarray(post["z"], np.float64)
        ess_w = effective_sample_size(w[None])
        ess_z = effective_sample_size(z[None])
        steps = int(np.sum(num_steps))
        lo, hi = np.percentile(z, [5, 95], axis=0)
        zt = np.asarray(z_true, np.float64)
        _, info = fl.decode_with_info(z_true[:64])
        rms, mx = decode_error(fl, ref, z_true[:256])
        rows.append(
            dict(
                problem="hierarchical",
                path=f"latent (z sampled directly), {label}",
                n_points=n,
                samples=samples,
                warmup=args.hier_warmup,
                warmup_s_3m33=warmup_s,
                sampling_s=wall,
                gradients=steps,
                ms_per_gradient=1e3 * wall / steps,
                gradients_per_sample=steps / samples,
                nfe_per_solve=float(np.mean(np.asarray(info.nfe))),
                solver_rms=rms,
                solver_max=mx,
                ess_w_min=float(ess_w.min()),
                ess_w_per_s=float(ess_w.min() / wall),
                ess_z_min=float(ess_z.min()),
                divergences=int(np.sum(diverging)),
                w_true=w_true.tolist(),
                w_realized=realized.tolist(),
                w_mean=w.mean(0).tolist(),
                w_sd=w.std(0).tolist(),
                w_err_max=float(np.abs(w.mean(0) - w_true).max()),
                w_err_realized_max=float(np.abs(w.mean(0) - realized).max()),
                w_err_in_sd=float(np.max(np.abs(w.mean(0) - w_true) / w.std(0))),
                latent_rmse=float(np.sqrt(np.mean(np.sum((z.mean(0) - zt) ** 2, -1)))),
                latent_coverage90=float(np.mean((lo <= zt) & (zt <= hi))),
                circles_flow=record,
            )
        )
        r = rows[-1]
        print(
            f"hierarchical N={n} {label:34s} {r['ms_per_gradient']:8.2f} ms/grad "
            f"{r['gradients_per_sample']:5.1f} grad/sample  NFE/solve {r['nfe_per_solve']:4.0f}  "
            f"ESS_w/s {r['ess_w_per_s']:7.2f} (ESS_w {r['ess_w_min']:.0f}/{samples})  "
            f"w err {r['w_err_max']:.3f} ({r['w_err_in_sd']:.1f} sd)  latent RMSE "
            f"{r['latent_rmse']:.3f} cov90 {r['latent_coverage90']:.3f}  div {r['divergences']}",
            flush=True,
        )
    return rows


def print_row(r: dict) -> None:
    print(
        f"{r['problem']:8s} {r['path']:42s} {r['ms_per_gradient']:7.2f} ms/grad "
        f"{r['gradients_per_sample']:5.1f} grad/sample  ESS/s {r['ess_per_s']:7.1f}  "
        f"NFE/solve {r['nfe_per_solve']:6.0f}  mean err {r['mean_abs_err']:.3f}  "
        f"(MC se {r['mean_mc_se']:.3f})  cov err {r['cov_abs_err']:.3f}  "
        f"div {r['divergences']}  solver rms {r.get('solver_rms', float('nan')):.1e}  "
        f"nll gap {r.get('nll_gap', float('nan')):.3f}",
        flush=True,
    )


def oracle_rows(problem: str, args) -> list[dict]:
    """The rows of one exact Gaussian-mixture oracle problem (``overlap``, ``bimodal``)."""
    gm = mixture(problem)
    sch = nif.InflationSchedule.from_moments(*gm.moments())
    flow = nif.InflationaryFlow(sch, gm, rtol=1e-4, atol=1e-4)
    euler = nif.InflationaryFlow(sch, gm, solver=diffrax.Euler(), dt0=sch.t_end / 701)
    ref = nif.InflationaryFlow(sch, gm, rtol=1e-8, atol=1e-8)
    exact = exact_posterior(flow, *PROBLEMS[problem])

    paths = [
        ("latent (LatentReparam, Tsit5 rtol 1e-4)", flow, True),
        ("plain site (data-space log_prob)", flow, False),
        ("latent, fixed Euler 701 steps", euler, True),
        ("latent, ExponentialMultistep(3) 33 steps", em3(flow, 33), True),
        ("latent, ExponentialMultistep(3) 24 steps", em3(flow, 24), True),
    ]
    if args.bnaf_steps:
        paths.append(("BNAF prior (data space, b)", None, False))
    rows = []
    for label, fl, latent in tqdm.tqdm(paths, desc=problem, leave=False):
        if fl is None:  # baseline (b): BNAF fit to samples of the same prior
            t0 = time.perf_counter()
            train = prior_samples(flow, 20000, jax.random.key(10))
            params, log_prob = fit_bnaf(train, args.bnaf_steps)
            test = prior_samples(flow, 20000, jax.random.key(11))
            nll = -float(np.mean(np.asarray(log_prob(params, jnp.asarray(test, jnp.float32)))))
            nll_exact = -float(np.mean(nif.evaluation.GaussianMixture.of_flow(flow).log_prob(test)))
            extra = dict(
                bnaf_fit_s=time.perf_counter() - t0,
                bnaf_test_nll=nll,
                exact_test_nll=nll_exact,
                nll_gap=nll - nll_exact,
                nfe_per_solve=1.0,
            )
            obs = nif.LinearGaussianObservation(*PROBLEMS[problem][:2])
            model = bnaf_model(log_prob, params, obs)
            r = run_path(flow, problem, False, args, exact, model=model)
        else:
            r = run_path(fl, problem, latent, args, exact)
            rms, mx = solver_error(fl, ref, latent)
            extra = dict(nfe_per_solve=nfe_per_solve(fl, latent), solver_rms=rms, solver_max=mx)
        r.update(problem=problem, path=label, **extra)
        rows.append(r)
        print_row(r)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--problems", default=",".join(ALL_PROBLEMS), help="comma-separated subset")
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--bnaf-steps", type=int, default=5000, help="0 skips baseline (b)")
    p.add_argument(
        "--circles-flow",
        default=CIRCLES_FLOW,
        help="trained circles flow directory (trained and saved there if missing)",
    )
    p.add_argument("--hier-points", type=int, default=200, help="latent points N (hierarchical)")
    p.add_argument("--hier-warmup", type=int, default=300)
    p.add_argument("--hier-samples", type=int, default=500, help="draws with 3M-33")
    p.add_argument("--hier-euler-samples", type=int, default=60, help="draws with Euler 701")
    p.add_argument("--hier-seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/latent_nuts.json")
    args = p.parse_args(argv)
    problems = [q.strip() for q in args.problems.split(",") if q.strip()]
    unknown = sorted(set(problems) - set(ALL_PROBLEMS))
    if unknown or not problems:
        raise ValueError(f"--problems: expected a subset of {ALL_PROBLEMS}; got {args.problems!r}")
    for name in ("warmup", "samples", "hier_points", "hier_warmup", "hier_samples"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer")
    if args.hier_euler_samples < 0 or args.bnaf_steps < 0:
        raise ValueError("--hier-euler-samples, --bnaf-steps: expected non-negative integers")

    # Keep the rows of problems not rerun now (and the arguments they were run with;
    # "wall_s" is the time from the start of the run to the end of that problem).
    out = pathlib.Path(args.out)
    old = json.loads(out.read_text()) if out.exists() else {}
    args_by = old.get("args_by_problem") or {
        r["problem"]: old.get("args") for r in old.get("rows", [])
    }
    rows = [r for r in old.get("rows", []) if r["problem"] not in problems]
    t_start = time.perf_counter()
    for problem in problems:
        if problem == "circles":
            rows += circles_rows(args)
        elif problem == "hierarchical":
            rows += hierarchical_rows(args)
        else:
            rows += oracle_rows(problem, args)
        args_by[problem] = dict(vars(args), wall_s=time.perf_counter() - t_start)
    order = {q: i for i, q in enumerate(ALL_PROBLEMS)}
    rows.sort(key=lambda r: order[r["problem"]])  # stable: keeps the row order per problem
    results = {"device": str(jax.devices()[0]), "args_by_problem": args_by, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out} ({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
