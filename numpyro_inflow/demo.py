"""End-to-end demos: digits inpainting with NUTS (the default), and an exact oracle flow.

The default run (``make demo``, ``inflow demo`` or ``python -m numpyro_inflow.demo``),
`digits_main`:

1. loads the shipped prior ``nif.pretrained("digits")`` (a PR-preserving inflationary
   flow on 8x8 digits, 64-D latent) and switches it to a cheap fixed-step solver,
   `ExponentialMultistep` (order 3) with ``--solver-steps`` steps, after measuring its
   gap to the adaptive solver;
2. hides a 4x4 block of a held-out digit, adds Gaussian noise to the other pixels, and
   samples the posterior with NUTS in the flow's latent, preconditioned by the
   Laplace approximation at the latent MAP (`laplace_approximation`; without it the
   latent posterior is so badly conditioned that NUTS hits its maximum tree depth);
3. checks calibration on more held-out digits (one preconditioned NUTS chain each):
   the coverage of pixel-wise 90 % intervals of the missing pixels and the rank (PIT)
   ECDF of the truths among the posterior draws;
4. writes ``summary.txt``, ``summary.json`` and PNG figures into ``--out``
   (default ``./inflow-demo/``; files are replaced atomically, nothing else there is
   touched) and prints where they are.

``--oracle`` runs the oracle demo (`oracle_main`) instead: an exact Gaussian-mixture
flow on a 2-D ring, whose encode, decode, log-density and samples are compared with
closed forms. ``--quick`` is a smoke run of the digits demo with tiny settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from tqdm.auto import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import numpyro_inflow as nif

N_TRAIN = 1500  # the shipped digits prior was trained on load("digits", seed=0)[:1500]
LEVEL = 0.9  # credible level of the pixel-wise intervals


def ring_mixture(n_comp: int = 8, radius: float = 2.0, var: float = 0.04):
    ang = np.linspace(0, 2 * np.pi, n_comp, endpoint=False)
    means = radius * np.stack([np.cos(ang), np.sin(ang)], -1)
    covs = np.tile(var * np.eye(2), (n_comp, 1, 1))
    return nif.GaussianMixtureScore(
        jnp.full(n_comp, 1.0 / n_comp),
        jnp.asarray(means, jnp.float32),
        jnp.asarray(covs, jnp.float32),
    )


def _save(fig, path: Path) -> None:
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def _save_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def block_mask(top: int = 2, left: int = 2, size: int = 4) -> np.ndarray:
    """Observed pixels of an 8x8 image with a ``size`` x ``size`` block missing."""
    m = np.ones((8, 8), bool)
    m[top : top + size, left : left + size] = False
    return m.ravel()


def random_mask(fraction: float, seed: int) -> np.ndarray:
    """Observed pixels with a random ``fraction`` of the 64 missing."""
    m = np.ones(64, bool)
    m[np.random.default_rng(seed).permutation(64)[: round(fraction * 64)]] = False
    return m


def psnr(estimate, truth) -> float:
    """Peak signal-to-noise ratio in dB for pixels in [-1, 1] (peak-to-peak range 2)."""
    mse = float(np.mean((np.asarray(estimate) - np.asarray(truth)) ** 2))
    return float(10 * np.log10(4.0 / mse))


def _inside(draws, truths, level):
    """Whether each truth lies in the central ``level`` interval of its draws."""
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return (truths >= lo) & (truths <= hi)


def _grid(ax, images, ncol, title):
    n = len(images)
    nrow = -(-n // ncol)
    canvas = np.full((nrow * 9 - 1, ncol * 9 - 1), np.nan)
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        canvas[r * 9 : r * 9 + 8, c * 9 : c * 9 + 8] = np.asarray(im).reshape(8, 8)
    ax.imshow(canvas, cmap="gray_r", vmin=-1, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _pit_ecdf(ax, pit: dict, title: str):
    """ECDF of PIT values minus the uniform CDF, with the 95 % KS band of one quantity."""
    grid = np.linspace(0, 1, 201)
    n = len(next(iter(pit.values())))
    band = 1.358 / np.sqrt(n)
    ax.fill_between(grid, -band, band, color="0.88", label="95% band (KS, per quantity)")
    for i, (name, u) in enumerate(pit.items()):
        ecdf = np.searchsorted(np.sort(u), grid, side="right") / n
        ax.plot(
            grid,
            ecdf - grid,
            lw=0.9,
            color=f"C{i % 10}",
            alpha=0.8,
            label=name if len(pit) <= 4 else None,
        )
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xlabel("fractional rank (PIT)")
    ax.set_ylabel("ECDF - uniform")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")


def main(argv=None) -> int:
    """Run a demo: digits inpainting by default, ``--oracle`` for the oracle demo. Returns 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--oracle" in argv:
        argv.remove("--oracle")
        return oracle_main(argv)
    if "--digits" in argv:  # accepted for compatibility: the digits demo is the default
        argv.remove("--digits")
    return digits_main(argv)


def digits_main(argv=None) -> int:
    """The digits inpainting demo (the default). Returns 0."""
    parser = argparse.ArgumentParser(
        prog="inflow demo",
        description="Inpainting a held-out digit with the shipped digits prior and NUTS.",
        epilog="--oracle runs the exact oracle-flow demo instead (`inflow demo --oracle --help`).",
    )
    parser.add_argument(
        "--out", default="inflow-demo", help="output folder (default ./inflow-demo)"
    )
    parser.add_argument("--digit", type=int, default=0, help="index of the held-out digit (0-296)")
    parser.add_argument(
        "--mask",
        choices=("block", "random"),
        default="block",
        help="a missing 4x4 block (default) or random missing pixels",
    )
    parser.add_argument(
        "--missing",
        type=float,
        default=0.5,
        help="fraction of missing pixels with --mask random (default 0.5)",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=0.1,
        help="noise standard deviation on the observed pixels (default 0.1)",
    )
    parser.add_argument(
        "--solver-steps",
        type=int,
        default=16,
        help="fixed steps of the ExponentialMultistep solver (default 16)",
    )
    parser.add_argument("--warmup", type=int, default=150, help="NUTS warm-up per chain")
    parser.add_argument("--samples", type=int, default=300, help="NUTS draws per chain")
    parser.add_argument(
        "--chains", type=int, default=2, help="NUTS chains on the main problem (sequential)"
    )
    parser.add_argument(
        "--coverage-digits",
        type=int,
        default=10,
        help="more held-out digits for the calibration check (default 10; 0: skip)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.quick:  # tiny settings, never larger than what was asked for
        args.warmup, args.samples, args.chains = min(args.warmup, 30), min(args.samples, 30), 1
        args.coverage_digits = min(args.coverage_digits, 2)
        args.solver_steps = min(args.solver_steps, 8)
    n_test = 1797 - N_TRAIN
    if not 0 <= args.digit < n_test:
        parser.error(f"--digit: expected 0 to {n_test - 1}; got {args.digit}")
    if not 0 < args.missing < 1:
        parser.error(f"--missing: expected a fraction in (0, 1); got {args.missing}")
    if args.noise <= 0 or args.solver_steps < 2 or args.samples < 2 or args.chains < 1:
        parser.error("--noise, --solver-steps (>= 2), --samples (>= 2), --chains: out of range")
    if not 0 <= args.coverage_digits < n_test:
        parser.error(f"--coverage-digits: expected 0 to {n_test - 1}; got {args.coverage_digits}")

    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
    from numpyro.infer import MCMC, NUTS

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = tqdm(total=4, desc="digits demo", disable=args.quiet, position=0)
    key = jax.random.key(args.seed)
    k_noise, k_mcmc, k_cal, k_check = jax.random.split(key, 4)
    summary: dict = {"settings": {k: v for k, v in vars(args).items() if k != "quiet"}}

    # ---- 1. the prior and the solver check
    stages.set_postfix_str("load prior, check solver")
    reference = nif.pretrained("digits")
    flow = reference.replace(
        solver=nif.ExponentialMultistep(3), dt0=reference.t_end / args.solver_steps
    )
    k = flow.latent_dim
    z_check = jax.random.normal(k_check, (32, k))
    gap = np.asarray(flow.from_latent(z_check) - reference.from_latent(z_check))
    err, rmse = float(np.abs(gap).max()), float(np.sqrt(np.mean(gap**2)))
    summary["prior"] = {
        "name": "digits",
        "dim": flow.dim,
        "latent_dim": k,
        "config": str(nif.pretrained.path("digits")),
    }
    summary["solver"] = {
        "name": f"ExponentialMultistep(order=3), {args.solver_steps} steps",
        "network_evaluations_per_decode": args.solver_steps + 2,
        "max_abs_pixel_error_vs_adaptive": err,
        "rms_pixel_error_vs_adaptive": rmse,
    }
    stages.update()

    # ---- 2. the inpainting problem: Laplace approximation, then preconditioned NUTS
    stages.set_postfix_str("MAP, Laplace, NUTS")
    x_test = np.asarray(nif.datasets.load("digits", seed=0)[N_TRAIN:])
    truth = x_test[args.digit]
    observed = block_mask() if args.mask == "block" else random_mask(args.missing, args.seed)
    miss = ~observed
    observation = nif.LinearGaussianObservation.mask(observed, args.noise)
    y = observation.simulate(k_noise, jnp.asarray(truth))
    model = nif.inverse_problem(flow, observation)
    t0 = time.perf_counter()
    approx = nif.laplace_approximation(flow, observation, y)
    x_map = np.asarray(flow.from_latent(approx.loc))
    # One single-chain sampler, compiled once (jit_model_args) and reused for every chain
    # and every problem of the demo: chains run one after the other.
    mcmc = MCMC(
        NUTS(model),
        num_warmup=args.warmup,
        num_samples=args.samples,
        num_chains=1,
        progress_bar=False,
        jit_model_args=True,
    )

    def run_chain(key_, y_, laplace_):
        mcmc.run(key_, y_, laplace=laplace_, extra_fields=("num_steps", "diverging"))
        extra_ = mcmc.get_extra_fields()
        return mcmc.get_samples(), np.asarray(extra_["num_steps"]), np.asarray(extra_["diverging"])

    chains = [
        run_chain(key_c, y, approx)
        for key_c in tqdm(
            jax.random.split(k_mcmc, args.chains), desc="NUTS chains", disable=args.quiet
        )
    ]
    nuts_s = time.perf_counter() - t0
    xs = np.concatenate([np.asarray(c[0]["x"]) for c in chains])
    zc = np.stack([np.asarray(c[0]["x_latent"], np.float64) for c in chains])
    ess = np.asarray(effective_sample_size(zc))
    rhat = np.asarray(split_gelman_rubin(zc)) if args.chains > 1 else None
    mean, std = xs.mean(0), xs.std(0)
    lo, hi = np.quantile(xs, [(1 - LEVEL) / 2, (1 + LEVEL) / 2], axis=0)
    fill = np.zeros(flow.dim)
    fill[observed] = np.asarray(y)
    extra = {
        "num_steps": np.concatenate([c[1] for c in chains]),
        "diverging": np.concatenate([c[2] for c in chains]),
    }
    divergences = int(extra["diverging"].sum())
    summary["inpainting"] = {
        "digit": args.digit,
        "missing_pixels": int(miss.sum()),
        "noise_std": args.noise,
        "seconds_map_laplace_nuts": nuts_s,
        "draws": int(xs.shape[0]),
        "mean_leapfrog_steps": float(np.mean(extra["num_steps"])),
        "divergences": divergences,
        "min_ess_latent": float(ess.min()),
        "max_rhat_latent": float(np.nanmax(rhat)) if rhat is not None else None,
        "ess_per_second": float(ess.min() / nuts_s),
        "psnr_posterior_mean": psnr(mean, truth),
        "psnr_posterior_mean_missing": psnr(mean[miss], truth[miss]),
        "psnr_latent_map": psnr(x_map, truth),
        "psnr_observation_zero_filled": psnr(fill, truth),
        "coverage_90_missing": float(np.mean(((truth >= lo) & (truth <= hi))[miss])),
        "mean_std_missing": float(std[miss].mean()),
        "mean_std_observed": float(std[observed].mean()),
    }
    stages.update()

    # ---- 3. calibration on more held-out digits, one preconditioned NUTS chain each
    # (the MAP, the Laplace approximation and the sampler are compiled once, above).
    cov = None
    n_cov = args.coverage_digits
    if n_cov:
        stages.set_postfix_str(f"calibration on {n_cov} digits")
        k1, k2 = jax.random.split(k_cal)
        idx = (args.digit + 1 + np.arange(n_cov)) % len(x_test)
        truths = x_test[idx]
        ys = observation.simulate(k1, jnp.asarray(truths))
        t0 = time.perf_counter()
        xb, steps = [], []
        for i, key_i in enumerate(
            tqdm(jax.random.split(k2, n_cov), desc="calibration digits", disable=args.quiet)
        ):
            approx_i = nif.laplace_approximation(flow, observation, ys[i])  # compiled once
            draws_i, steps_i, _ = run_chain(key_i, ys[i], approx_i)
            xb.append(np.asarray(draws_i["x"]))
            steps.append(float(np.mean(steps_i)))
        cal_s = time.perf_counter() - t0
        xb = np.stack(xb, 1)  # (draws, problems, 64)
        inside = _inside(xb, truths, LEVEL)
        levels = np.linspace(0.05, 0.95, 19)
        curve = [float(_inside(xb, truths, lv)[:, miss].mean()) for lv in levels]
        rng = np.random.default_rng(args.seed)
        ranks = (xb < truths).sum(0)[:, miss]  # (problems, missing pixels)
        pit = (ranks + rng.uniform(size=ranks.shape)) / (xb.shape[0] + 1)
        cov = {
            "digits": idx.tolist(),
            "seconds_map_laplace_nuts": cal_s,
            "mean_leapfrog_steps": float(np.mean(steps)),
            "coverage_90_missing": float(inside[:, miss].mean()),
            "coverage_90_all": float(inside.mean()),
            "psnr_posterior_mean": float(
                np.mean([psnr(m, t) for m, t in zip(xb.mean(0), truths, strict=True)])
            ),
            "levels": levels.tolist(),
            "coverage_missing_by_level": curve,
        }
        summary["coverage"] = cov
    stages.update()

    # ---- 4. figures and summary
    stages.set_postfix_str("figures")
    obs_img = np.full(64, np.nan)
    obs_img[observed] = np.asarray(y)
    fig, axes = plt.subplots(1, 5, figsize=(14, 3))
    inp = summary["inpainting"]
    for ax, img, title, cmap, vr in (
        (axes[0], truth, "truth (held-out digit)", "gray_r", (-1, 1)),
        (axes[1], obs_img, f"observation (noise {args.noise}, blank = missing)", "gray_r", (-1, 1)),
        (axes[2], x_map, f"latent MAP ({inp['psnr_latent_map']:.1f} dB)", "gray_r", (-1, 1)),
        (
            axes[3],
            mean,
            f"posterior mean ({inp['psnr_posterior_mean']:.1f} dB)",
            "gray_r",
            (-1, 1),
        ),
        (axes[4], std, "posterior std", "viridis", (0, max(float(std.max()), 1e-3))),
    ):
        im = ax.imshow(img.reshape(8, 8), cmap=cmap, vmin=vr[0], vmax=vr[1])
        ax.set_title(title, fontsize=8)
        ax.axis("off")
        if ax is axes[4]:
            fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, out / "inpainting.png")
    fig, ax = plt.subplots(figsize=(5, 5))
    pick = np.linspace(0, len(xs) - 1, 36).astype(int)
    _grid(ax, xs[pick], 6, f"posterior samples (NUTS in the {k}-D latent)")
    _save(fig, out / "posterior_samples.png")
    if cov is not None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        _pit_ecdf(
            axes[0],
            {"missing pixels": pit.ravel()},
            f"rank ECDF of the truths, {n_cov} digits x {int(miss.sum())} missing pixels",
        )
        ax = axes[1]
        ax.plot([0, 1], [0, 1], color="0.5", lw=0.8, ls="--")
        ax.plot(cov["levels"], cov["coverage_missing_by_level"], "o-", ms=3)
        ax.set_xlabel("nominal level of pixel-wise central intervals")
        ax.set_ylabel("empirical coverage (missing pixels)")
        ax.set_title(f"coverage over {n_cov} held-out digits", fontsize=9)
        _save(fig, out / "calibration.png")
    stages.update()
    stages.close()

    summary["wall_seconds"] = time.perf_counter() - t_start
    _save_text(json.dumps(summary, indent=2) + "\n", out / "summary.json")
    lines = [
        "numpyro_inflow demo: inpainting a held-out 8x8 digit with the shipped digits prior",
        f"prior: nif.pretrained('digits'), PR-preserving, latent dimension {k}",
        f"solver: {summary['solver']['name']}; decode vs adaptive decode on 32 prior draws: "
        f"RMS {rmse:.1e}, max {err:.1e} per pixel",
        f"problem: test digit {args.digit}, {inp['missing_pixels']} of 64 pixels missing "
        f"({args.mask}), Gaussian noise {args.noise}",
        f"NUTS (Laplace-preconditioned): {args.chains} chain(s) x {args.samples} draws after "
        f"{args.warmup} warm-up in {nuts_s:.1f} s (MAP and Laplace included); "
        f"{inp['mean_leapfrog_steps']:.0f} leapfrog steps per draw; min ESS "
        f"{inp['min_ess_latent']:.0f} ({inp['ess_per_second']:.1f}/s), divergences {divergences}"
        + (f", max R-hat {inp['max_rhat_latent']:.3f}" if rhat is not None else ""),
        f"posterior mean PSNR {inp['psnr_posterior_mean']:.1f} dB (missing pixels "
        f"{inp['psnr_posterior_mean_missing']:.1f} dB; latent MAP {inp['psnr_latent_map']:.1f} "
        f"dB); pixel std {inp['mean_std_missing']:.3f} missing vs "
        f"{inp['mean_std_observed']:.3f} observed",
        f"90% intervals cover {inp['coverage_90_missing']:.0%} of this digit's missing pixels",
    ]
    if cov is not None:
        lines.append(
            f"calibration on {n_cov} more held-out digits ({cov['seconds_map_laplace_nuts']:.0f} s): "
            f"90% intervals cover {cov['coverage_90_missing']:.1%} of the missing pixels "
            f"(target 85-95%), {cov['coverage_90_all']:.1%} of all pixels; mean PSNR "
            f"{cov['psnr_posterior_mean']:.1f} dB"
        )
    lines.append(f"wall time {summary['wall_seconds']:.0f} s")
    files = ["summary.txt", "summary.json", "inpainting.png", "posterior_samples.png"]
    if cov is not None:
        files.append("calibration.png")
    lines.append(f"report in {out.resolve()}/ ({', '.join(files)})")
    text = "\n".join(lines)
    _save_text(text + "\n", out / "summary.txt")
    print(text)
    return 0


def oracle_main(argv=None) -> int:
    """The oracle demo (``--oracle``): an exact Gaussian-mixture flow on a 2-D ring."""
    parser = argparse.ArgumentParser(
        prog="inflow demo --oracle",
        epilog="Without --oracle, the digits inpainting demo runs (`inflow demo --help`).",
        description="End-to-end demo on an exact oracle flow: a 2-D Gaussian mixture on a ring.",
    )
    parser.add_argument(
        "--out", default="inflow-demo", help="output folder (default ./inflow-demo)"
    )
    parser.add_argument("-n", "--num-points", type=int, default=2000, help="points to encode")
    parser.add_argument("--keep", type=int, default=None, help="1 for a PR-reducing flow")
    parser.add_argument("--grid", type=int, default=80, help="log-density grid points per axis")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.num_points < 10:
        parser.error("--num-points: expected at least 10")
    if args.grid < 10:
        parser.error("--grid: expected at least 10")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = tqdm(total=5, desc="oracle demo", disable=args.quiet)
    key = jax.random.key(args.seed)
    k_data, k_sample = jax.random.split(key)

    gm = ring_mixture()
    schedule = nif.InflationSchedule.from_moments(*gm.moments(), keep=args.keep)
    flow = nif.InflationaryFlow(schedule, gm, rtol=1e-5, atol=1e-5)
    x = gm.sample(k_data, args.num_points)
    summary: dict = {
        "schedule": {
            "keep": schedule.keep,
            "t_end": schedule.t_end,
            "eigenvalues": np.asarray(schedule.eigenvalues).tolist(),
            "base_variance": np.asarray(schedule.base_variance).tolist(),
        }
    }

    stages.set_postfix_str("encode")
    t0 = time.perf_counter()
    z, info = flow.encode_with_info(x)
    z.block_until_ready()
    summary["encode"] = {
        "seconds": time.perf_counter() - t0,
        "mean_nfe": float(info.nfe.mean()),
        "latent_mean": np.asarray(z.mean(0)).tolist(),
        "latent_var": np.asarray(z.var(0)).tolist(),
    }
    stages.update()

    stages.set_postfix_str("decode")
    x_back = flow.decode(z)
    summary["round_trip_max_abs_error"] = float(jnp.max(jnp.abs(x_back - x)))
    stages.update()

    stages.set_postfix_str("log-density")
    lim = 3.2
    g = np.linspace(-lim, lim, args.grid)
    gx, gy = np.meshgrid(g, g)
    grid = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], -1), jnp.float32)
    lp_flow = flow.log_prob(grid)
    lp_true = gm.log_prob_t(schedule.to_eigen(grid), 0.0, schedule)
    cell = (g[1] - g[0]) ** 2
    mass = jnp.exp(lp_true)
    summary["log_prob"] = {
        "mass_weighted_mean_abs_error": float(
            jnp.sum(mass * jnp.abs(lp_flow - lp_true)) / mass.sum()
        ),
        "integral_on_grid": float(jnp.sum(jnp.exp(lp_flow)) * cell),
    }
    stages.update()

    stages.set_postfix_str("sample")
    samples = flow.sample(k_sample, (args.num_points,))
    summary["samples"] = {
        "mean": np.asarray(samples.mean(0)).tolist(),
        "true_mean": np.asarray(gm.moments()[0]).tolist(),
        "var": np.asarray(samples.var(0)).tolist(),
        "true_var": np.asarray(jnp.diag(gm.moments()[1])).tolist(),
    }
    stages.update()

    stages.set_postfix_str("figures")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    axes[0].scatter(x[:, 0], x[:, 1], s=3, alpha=0.5)
    axes[0].set_title("data (mixture samples)")
    axes[1].scatter(z[:, 0], z[:, 1], s=3, alpha=0.5, c=np.arctan2(x[:, 1], x[:, 0]), cmap="hsv")
    axes[1].set_title("latent z = encode(x), coloured by angle")
    axes[2].scatter(samples[:, 0], samples[:, 1], s=3, alpha=0.5, color="C2")
    axes[2].set_title("samples = decode(z ~ base)")
    for ax in axes:
        ax.set_aspect("equal")
    _save(fig, out / "flow.png")

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    shape = gx.shape
    for ax, val, title in (
        (axes[0], lp_true, "analytic log p(x)"),
        (axes[1], lp_flow, "flow log q(x)"),
        (axes[2], lp_flow - lp_true, "difference"),
    ):
        im = ax.pcolormesh(gx, gy, np.asarray(val).reshape(shape), shading="auto")
        fig.colorbar(im, ax=ax)
        ax.set_title(title)
        ax.set_aspect("equal")
    _save(fig, out / "log_density.png")
    stages.update()
    stages.close()

    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out / "summary.json")

    print(
        f"oracle flow on an 8-component ring mixture (keep={schedule.keep}, T={schedule.t_end:.2f})"
    )
    print(
        f"  encode: {args.num_points} points in {summary['encode']['seconds']:.2f} s, "
        f"{summary['encode']['mean_nfe']:.0f} network evaluations per point"
    )
    print(
        f"  latent mean {np.round(summary['encode']['latent_mean'], 3)}, "
        f"variance {np.round(summary['encode']['latent_var'], 3)} "
        f"(base variance {np.round(summary['schedule']['base_variance'], 4)})"
    )
    print(f"  round trip max |x - decode(encode(x))| = {summary['round_trip_max_abs_error']:.2e}")
    print(
        f"  log-density vs analytic: mean |error| {summary['log_prob']['mass_weighted_mean_abs_error']:.2e}, "
        f"integral on grid {summary['log_prob']['integral_on_grid']:.4f}"
    )
    print(f"  figures and summary in {out.resolve()}/ (flow.png, log_density.png, summary.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
