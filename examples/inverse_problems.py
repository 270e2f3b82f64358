"""Inverse problems on 8x8 digits with a flow prior, side by side with two baselines.

Six linear-Gaussian inverse problems on held-out digits (``load("digits", seed=0)[1500:]``,
pixels in ``[-1, 1]``), each solved four ways in one run:

- ``flow_nuts``: the flow prior (``nif.inverse_problem``), NUTS in the flow's latent,
  preconditioned by the Gauss-Newton Laplace approximation at the latent MAP
  (``nif.laplace_approximation``; the model samples ``x_white`` with
  ``x_latent = loc + L x_white`` and still targets the exact posterior);
- ``flow_mala``: the same preconditioned model sampled with ``nif.MALA``;
- ``gaussian``: the exact posterior under a Gaussian prior (mean and covariance of the
  1,500 training digits, plus ``1e-4 I``), ``obs.gaussian_posterior``;
- ``latent_map``: the point estimate ``flow.from_latent(latent MAP)``.

Problems (``--problems``; noise standard deviation 0.1 unless stated):

=====================  ==============================================================
``denoising``          identity operator, noise 0.3
``inpainting_random``  a random 50 % of the pixels missing
``inpainting_block``   a missing 4x4 block in the centre
``deblurring``         3x3 Gaussian blur (standard deviation 1 pixel)
``compressed_sensing`` 24 random Gaussian projections (m < 64)
``super_resolution``   2x2 block averages (a 4x4 image)
=====================  ==============================================================

Per problem and method: PSNR of the posterior mean (mean over digits), empirical
coverage of pixel-wise central 90 % intervals over all pixels of all test digits (and
over the missing pixels for inpainting), the smallest effective sample size of the
latent per second (MCMC only), and wall time per digit. The sampler objects are built
once per problem and re-run for every digit with ``jit_model_args=True``, so only the
first digit of a problem pays for compilation; times per digit are averaged over the
others (the first is reported separately).

Outputs in ``--out`` (default ``./inverse-problems/``): ``results.json`` and one figure
per problem, ``<problem>.png`` (truth, observation, posterior mean and standard
deviation for flow+NUTS and the Gaussian prior, the latent MAP, posterior draws), plus
``summary.png``. ``--results PREFIX`` also writes ``PREFIX.json`` and
``PREFIX_<figure>.png`` (for example ``--results benchmarks/results/inverse_problems``).
Every file is written under a temporary name and then moved into place.

Usage::

    python examples/inverse_problems.py                     # full run (19 min, 2 cores)
    python examples/inverse_problems.py --flow benchmarks/results/train_digits_flows/prp
    python examples/inverse_problems.py --quick --problems inpainting_block   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from scipy import stats
from tqdm.auto import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import numpyro_inflow as nif

N_TRAIN = 1500  # the digits priors were trained on load("digits", seed=0)[:1500]
LEVEL = 0.9  # credible level of the pixel-wise intervals
JITTER = 1e-4  # added to the Gaussian baseline's covariance
METHODS = ("flow_nuts", "flow_mala", "gaussian", "latent_map")
METHOD_LABELS = {
    "flow_nuts": "flow prior, NUTS (Laplace-preconditioned)",
    "flow_mala": "flow prior, MALA (Laplace-preconditioned)",
    "gaussian": "Gaussian prior (exact posterior)",
    "latent_map": "flow prior, latent MAP",
}
#: Problems whose coverage is the acceptance figure: they get ``--test-digits`` digits.
COVERAGE_PROBLEMS = ("denoising", "inpainting_random", "inpainting_block")


# ----------------------------------------------------------------------------- problems
def gaussian_kernel(size: int = 3, sigma: float = 1.0) -> np.ndarray:
    """A normalised ``size`` x ``size`` Gaussian blur kernel."""
    r = np.arange(size) - (size - 1) / 2
    k = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return (k / k.sum()).astype(np.float32)


def _denoising(key, noise):
    return nif.LinearGaussianObservation(np.eye(64, dtype=np.float32), 3.0 * noise), None


def _inpainting_random(key, noise):
    observed = nif.evaluation.random_mask(0.5, int(jax.random.randint(key, (), 0, 2**31 - 1)))
    return nif.LinearGaussianObservation.mask(observed, noise), ~observed


def _inpainting_block(key, noise):
    observed = nif.evaluation.block_mask()
    return nif.LinearGaussianObservation.mask(observed, noise), ~observed


def _deblurring(key, noise):
    return nif.LinearGaussianObservation.blur(gaussian_kernel(), (8, 8), noise), None


def _compressed_sensing(key, noise):
    return nif.LinearGaussianObservation.random_projection(key, 24, 64, noise), None


def _super_resolution(key, noise):
    return nif.LinearGaussianObservation.downsample((8, 8), 2, noise), None


#: name -> (builder(key, noise_std) -> (observation, missing-pixel mask or None), text)
PROBLEMS: dict[str, tuple[Callable, str]] = {
    "denoising": (_denoising, "identity, noise 0.3"),
    "inpainting_random": (_inpainting_random, "50% of pixels missing at random, noise 0.1"),
    "inpainting_block": (_inpainting_block, "4x4 block missing, noise 0.1"),
    "deblurring": (_deblurring, "3x3 Gaussian blur (sd 1 px), noise 0.1"),
    "compressed_sensing": (_compressed_sensing, "24 random projections, noise 0.1"),
    "super_resolution": (_super_resolution, "2x2 block averages (4x4 image), noise 0.1"),
}


# ----------------------------------------------------------------------------- statistics
def gaussian_baseline(x_train) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (plus ``1e-4 I``) of the training digits: the Gaussian prior."""
    x = np.asarray(x_train, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x_train: expected at least two points (N, D); got shape {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False) + JITTER * np.eye(x.shape[1])


def gaussian_inside(mean, std, truth, level: float = LEVEL) -> np.ndarray:
    """Whether each ``truth`` lies in the central ``level`` interval of ``N(mean, std^2)``."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: expected a number in (0, 1); got {level}")
    half = stats.norm.ppf(0.5 + level / 2) * np.asarray(std)
    return np.abs(np.asarray(truth) - np.asarray(mean)) <= half


def sample_inside(draws, truth, level: float = LEVEL) -> np.ndarray:
    """Whether each coordinate of ``truth`` lies in the central ``level`` interval of ``draws``.

    ``draws`` has shape ``(N, D)``, ``truth`` ``(D,)``; the interval is between the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` sample quantiles (`nif.central_coverage`).
    """
    table = nif.central_coverage(np.asarray(draws)[None], np.asarray(truth)[None], [level])
    return table["hits"].to_numpy().reshape(np.shape(truth)) == 1


def min_ess(draws) -> float:
    """Smallest effective sample size over the coordinates of one chain ``(N, k)``."""
    from numpyro.diagnostics import effective_sample_size

    a = np.asarray(draws, np.float64)
    if np.any(np.ptp(a, axis=0) == 0):  # a coordinate that never moved: one draw's worth
        return 1.0
    return float(np.min(effective_sample_size(a[None])))


# ----------------------------------------------------------------------------- helpers
def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _save_fig(fig, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def observation_image(problem: str, observation, y) -> tuple[np.ndarray, str]:
    """An image of the observation ``y`` for the figures, with its caption."""
    y = np.asarray(y)
    a = np.asarray(observation.matrix)
    if observation.kind == "mask":
        img = np.full(64, np.nan)
        img[a.argmax(1)] = y
        return img.reshape(8, 8), "observed (blank: missing)"
    if problem == "super_resolution":
        return y.reshape(4, 4), "observed (4x4)"
    if a.shape[0] == 64:
        return y.reshape(8, 8), "observed"
    return (np.linalg.pinv(a) @ y).reshape(8, 8), f"A+ y ({a.shape[0]} projections)"


def _digit_counts(args) -> dict[str, int]:
    return {
        p: args.test_digits if p in COVERAGE_PROBLEMS else args.other_digits for p in args.problems
    }


# ----------------------------------------------------------------------------- one problem
def run_problem(name: str, index: int, flow, x_test, prior_mg, args, bar) -> tuple[dict, dict]:
    """Solve problem ``name`` on the first digits of ``x_test`` with every method.

    Returns:
        ``(record, arrays)``: the JSON record and what the figures need.
    """
    from numpyro.infer import MCMC, NUTS

    key = jax.random.fold_in(jax.random.key(args.seed), index)
    k_build, k_digits = jax.random.split(key)
    observation, missing = PROBLEMS[name][0](k_build, args.noise)
    n_digits = _digit_counts(args)[name]
    model = nif.inverse_problem(flow, observation)
    nuts = MCMC(
        NUTS(model, max_tree_depth=args.max_tree_depth),
        num_warmup=args.nuts_warmup,
        num_samples=args.nuts_samples,
        progress_bar=False,
        jit_model_args=True,
    )
    mala = MCMC(
        nif.MALA(model, adapt_mass_matrix=False),
        num_warmup=args.mala_warmup,
        num_samples=args.mala_samples,
        progress_bar=False,
        jit_model_args=True,
    )
    m0, s0 = prior_mg
    per = {m: {"psnr": [], "inside": [], "seconds": []} for m in METHODS}
    for m in ("flow_nuts", "flow_mala"):
        per[m] |= {"min_ess": [], "ess_per_second": []}
    per["flow_nuts"]["mean_steps"], per["flow_nuts"]["divergences"] = [], []
    per["flow_mala"]["accept_prob"] = []
    keep = {"truth": [], "obs": [], "obs_caption": None, "mean": {}, "std": {}, "draws": {}}
    for m in METHODS:
        keep["mean"][m], keep["std"][m] = [], []
    for i in range(n_digits):
        truth = np.asarray(x_test[i])
        k_noise, k_nuts, k_mala = jax.random.split(jax.random.fold_in(k_digits, i), 3)
        y = observation.simulate(k_noise, jnp.asarray(truth))
        results = {}

        # Gaussian prior: exact posterior.
        t0 = time.perf_counter()
        g_mean, g_cov = observation.gaussian_posterior(jnp.asarray(m0), jnp.asarray(s0), y)
        g_mean, g_cov = np.asarray(g_mean, np.float64), np.asarray(g_cov, np.float64)
        g_std = np.sqrt(np.clip(np.diag(g_cov), 0.0, None))
        per["gaussian"]["seconds"].append(time.perf_counter() - t0)
        results["gaussian"] = (g_mean, g_std, gaussian_inside(g_mean, g_std, truth))

        # Latent MAP and Laplace approximation (shared by the MAP baseline and both samplers).
        t0 = time.perf_counter()
        approx = nif.laplace_approximation(
            flow, observation, y, steps=args.map_steps, learning_rate=args.map_lr
        )
        x_map = np.asarray(flow.from_latent(approx.loc))
        t_laplace = time.perf_counter() - t0
        per["latent_map"]["seconds"].append(t_laplace)
        results["latent_map"] = (x_map, None, None)

        # The two samplers, each preconditioned by the same approximation.
        for m, mcmc, k_run in (("flow_nuts", nuts, k_nuts), ("flow_mala", mala, k_mala)):
            fields = ("num_steps", "diverging") if m == "flow_nuts" else ("accept_prob",)
            t0 = time.perf_counter()
            mcmc.run(k_run, y, laplace=approx, extra_fields=fields)
            draws = mcmc.get_samples()
            xs = np.asarray(draws["x"])
            seconds = time.perf_counter() - t0 + t_laplace
            ess = min_ess(draws["x_latent"])
            extra = mcmc.get_extra_fields()
            per[m]["seconds"].append(seconds)
            per[m]["min_ess"].append(ess)
            per[m]["ess_per_second"].append(ess / seconds)
            if m == "flow_nuts":
                per[m]["mean_steps"].append(float(np.mean(extra["num_steps"])))
                per[m]["divergences"].append(int(np.sum(extra["diverging"])))
            else:
                per[m]["accept_prob"].append(float(np.mean(extra["accept_prob"])))
            results[m] = (xs.mean(0), xs.std(0), sample_inside(xs, truth))
            if i == 0:
                pick = np.linspace(0, len(xs) - 1, args.show_draws).astype(int)
                keep["draws"][m] = xs[pick]
        if i == 0:
            rng = np.random.default_rng(args.seed)
            keep["draws"]["gaussian"] = rng.multivariate_normal(
                g_mean, g_cov, args.show_draws, method="cholesky"
            )

        for m, (mean, std, inside) in results.items():
            per[m]["psnr"].append(nif.evaluation.psnr(mean, truth))
            if inside is not None:
                per[m]["inside"].append(np.asarray(inside))
            if i < args.show_digits:
                keep["mean"][m].append(mean)
                keep["std"][m].append(std)
        if i < args.show_digits:
            keep["truth"].append(truth)
            img, keep["obs_caption"] = observation_image(name, observation, y)
            keep["obs"].append(img)
        bar.set_postfix_str(
            f"{name} {i + 1}/{n_digits}: NUTS {per['flow_nuts']['mean_steps'][-1]:.0f} steps"
        )
        bar.update()

    record = {
        "description": PROBLEMS[name][1],
        "operator": observation.kind,
        "num_obs": int(observation.output_dim),
        "noise_std": float(np.asarray(observation.noise_std)[0]),
        "digits": n_digits,
        "missing_pixels": None if missing is None else int(missing.sum()),
        "methods": {},
    }
    for m in METHODS:
        p = per[m]
        sec = np.asarray(p["seconds"])
        rec = {
            "label": METHOD_LABELS[m],
            "psnr_mean": float(np.mean(p["psnr"])),
            "psnr_per_digit": [float(v) for v in p["psnr"]],
            "seconds_per_digit": float(sec[1:].mean() if len(sec) > 1 else sec[0]),
            "seconds_first_digit": float(sec[0]),
            "coverage_90_all": None,
            "coverage_90_missing": None,
        }
        if p["inside"]:
            inside = np.stack(p["inside"])  # (digits, 64)
            rec["coverage_90_all"] = float(inside.mean())
            rec["coverage_90_per_digit"] = [float(v) for v in inside.mean(1)]
            if missing is not None:
                rec["coverage_90_missing"] = float(inside[:, missing].mean())
        if "min_ess" in p:
            eps = np.asarray(p["ess_per_second"])
            rec["min_ess_mean"] = float(np.mean(p["min_ess"]))
            rec["ess_per_second"] = float(eps[1:].mean() if len(eps) > 1 else eps[0])
        if m == "flow_nuts":
            rec["mean_leapfrog_steps"] = float(np.mean(p["mean_steps"]))
            rec["max_mean_leapfrog_steps"] = float(np.max(p["mean_steps"]))
            rec["divergences"] = int(np.sum(p["divergences"]))
        if m == "flow_mala":
            rec["mean_accept_prob"] = float(np.mean(p["accept_prob"]))
        record["methods"][m] = rec
    return record, keep


# ----------------------------------------------------------------------------- figures
def plot_problem(name: str, record: dict, keep: dict, path: Path) -> None:
    """Truth, observation, posterior means/stds (flow+NUTS, Gaussian), MAP, draws."""
    n = len(keep["truth"])
    ncol = 8
    fig, axes = plt.subplots(n + 2, ncol, figsize=(1.5 * ncol, 1.6 * (n + 2)))
    axes = np.atleast_2d(axes)
    std_max = max(float(np.max(np.asarray(keep["std"][m]))) for m in ("flow_nuts", "gaussian"))
    cols = [
        ("truth", lambda i: keep["truth"][i], "gray_r"),
        (keep["obs_caption"], lambda i: keep["obs"][i], "gray_r"),
        ("flow+NUTS mean", lambda i: keep["mean"]["flow_nuts"][i], "gray_r"),
        ("flow+NUTS std", lambda i: keep["std"]["flow_nuts"][i], "viridis"),
        ("Gaussian mean", lambda i: keep["mean"]["gaussian"][i], "gray_r"),
        ("Gaussian std", lambda i: keep["std"]["gaussian"][i], "viridis"),
        ("latent MAP", lambda i: keep["mean"]["latent_map"][i], "gray_r"),
        ("flow+MALA mean", lambda i: keep["mean"]["flow_mala"][i], "gray_r"),
    ]
    for i in range(n):
        for j, (title, get, cmap) in enumerate(cols):
            img = np.asarray(get(i), float)
            img = img.reshape(8, 8) if img.size == 64 else img
            vmin, vmax = (0.0, std_max) if cmap == "viridis" else (-1.0, 1.0)
            ax = axes[i, j]
            ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
    for r, (m, label) in enumerate((("flow_nuts", "flow+NUTS"), ("gaussian", "Gaussian")), n):
        draws = keep["draws"].get(m, [])
        for j in range(ncol):
            ax = axes[r, j]
            ax.axis("off")
            if j < len(draws):
                ax.imshow(np.asarray(draws[j]).reshape(8, 8), cmap="gray_r", vmin=-1, vmax=1)
        axes[r, 0].set_title(f"{label} posterior draws (first digit)", fontsize=7, loc="left")
    meth = record["methods"]

    def cov(m):
        c = meth[m]["coverage_90_missing"] or meth[m]["coverage_90_all"]
        return "-" if c is None else f"{c:.0%}"

    fig.suptitle(
        f"{name}: {record['description']}; over {record['digits']} digits, PSNR / 90% "
        f"coverage{' (missing px)' if record['missing_pixels'] else ''}: flow+NUTS "
        f"{meth['flow_nuts']['psnr_mean']:.1f} dB / {cov('flow_nuts')}, Gaussian "
        f"{meth['gaussian']['psnr_mean']:.1f} dB / {cov('gaussian')}, MAP "
        f"{meth['latent_map']['psnr_mean']:.1f} dB",
        fontsize=8,
    )
    _save_fig(fig, path)


def plot_summary(problems: dict, path: Path) -> None:
    """PSNR and 90 % coverage per problem and method (bar charts)."""
    names = list(problems)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    width = 0.2
    for j, m in enumerate(METHODS):
        ps = [problems[p]["methods"][m]["psnr_mean"] for p in names]
        axes[0].bar(x + (j - 1.5) * width, ps, width, label=METHOD_LABELS[m])
        if m == "latent_map":
            continue
        cv = [
            problems[p]["methods"][m]["coverage_90_missing"]
            or problems[p]["methods"][m]["coverage_90_all"]
            for p in names
        ]
        axes[1].bar(x + (j - 1) * width, cv, width, label=METHOD_LABELS[m])
    axes[1].axhspan(0.85, 0.95, color="0.9", zorder=0, label="85-95 %")
    axes[1].axhline(LEVEL, color="0.3", lw=0.8, ls="--")
    axes[0].set_ylabel("PSNR of the posterior mean (dB)")
    axes[1].set_ylabel("coverage of 90% intervals")
    axes[1].set_ylim(0, 1)
    for ax in axes:
        ax.set_xticks(x, [n.replace("_", "\n") for n in names], fontsize=7)
    axes[0].legend(fontsize=6)
    axes[1].legend(fontsize=6, loc="lower left")
    axes[1].set_title("inpainting: missing pixels; others: all pixels", fontsize=8)
    _save_fig(fig, path)


def format_table(problems: dict) -> str:
    """The results as a Markdown table (one row per problem and method)."""
    lines = [
        "| problem | method | PSNR (dB) | 90% coverage, all px | 90% coverage, missing px "
        "| min ESS / s | s / digit |",
        "|---|---|---|---|---|---|---|",
    ]

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    for p, rec in problems.items():
        for m in METHODS:
            r = rec["methods"][m]
            lines.append(
                f"| {p} | {m} | {r['psnr_mean']:.1f} | {f(r['coverage_90_all'], '.1%')} | "
                f"{f(r['coverage_90_missing'], '.1%')} | {f(r.get('ess_per_second'), '.2f')} | "
                f"{r['seconds_per_digit']:.2f} |"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def parse(argv=None) -> argparse.Namespace:
    """Command-line arguments (``--help`` lists them)."""
    parser = argparse.ArgumentParser(
        description="Inverse problems on 8x8 digits: flow prior (NUTS and MALA, "
        "Laplace-preconditioned) against a Gaussian prior and the latent MAP.",
    )
    parser.add_argument(
        "--flow",
        default=None,
        help="directory of a saved flow (nif.load_flow); default nif.pretrained('digits')",
    )
    parser.add_argument(
        "--problems",
        default=",".join(PROBLEMS),
        help=f"comma-separated subset of {', '.join(PROBLEMS)} (default: all)",
    )
    parser.add_argument(
        "--test-digits",
        type=int,
        default=12,
        help="held-out digits for denoising and inpainting (default 12)",
    )
    parser.add_argument(
        "--other-digits", type=int, default=4, help="held-out digits for the others (default 4)"
    )
    parser.add_argument("--noise", type=float, default=0.1, help="noise std (denoising: 3x)")
    parser.add_argument(
        "--solver-steps", type=int, default=16, help="ExponentialMultistep(3) steps"
    )
    parser.add_argument("--map-steps", type=int, default=400, help="Adam steps of the latent MAP")
    parser.add_argument("--map-lr", type=float, default=0.05, help="Adam learning rate of the MAP")
    parser.add_argument("--nuts-warmup", type=int, default=150)
    parser.add_argument("--nuts-samples", type=int, default=250)
    parser.add_argument("--max-tree-depth", type=int, default=10, help="NUTS tree depth cap")
    parser.add_argument("--mala-warmup", type=int, default=400)
    parser.add_argument("--mala-samples", type=int, default=800)
    parser.add_argument("--show-digits", type=int, default=3, help="digits drawn per figure")
    parser.add_argument("--show-draws", type=int, default=8, help="posterior draws drawn")
    parser.add_argument(
        "--out", default="inverse-problems", help="output folder (default ./inverse-problems)"
    )
    parser.add_argument(
        "--results",
        default=None,
        help="also write PREFIX.json and PREFIX_<figure>.png "
        "(e.g. benchmarks/results/inverse_problems)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke run)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    problems = [p.strip() for p in args.problems.split(",") if p.strip()]
    bad = [p for p in problems if p not in PROBLEMS]
    if bad or not problems:
        parser.error(f"--problems: expected names from {', '.join(PROBLEMS)}; got {bad or '[]'}")
    args.problems = list(dict.fromkeys(problems))
    if args.quick:  # tiny settings, never larger than what was asked for
        args.test_digits, args.other_digits = min(args.test_digits, 2), min(args.other_digits, 2)
        args.nuts_warmup, args.nuts_samples = min(args.nuts_warmup, 20), min(args.nuts_samples, 20)
        args.mala_warmup, args.mala_samples = min(args.mala_warmup, 20), min(args.mala_samples, 20)
        args.map_steps = min(args.map_steps, 50)
        args.max_tree_depth = min(args.max_tree_depth, 4)
        args.solver_steps = min(args.solver_steps, 4)
        args.show_digits = min(args.show_digits, 2)
    n_test = 1797 - N_TRAIN
    for opt in ("test_digits", "other_digits"):
        if not 1 <= getattr(args, opt) <= n_test:
            parser.error(f"--{opt.replace('_', '-')}: expected 1 to {n_test}")
    for opt in ("solver_steps", "map_steps", "nuts_warmup", "mala_warmup", "max_tree_depth"):
        if getattr(args, opt) < 1:
            parser.error(f"--{opt.replace('_', '-')}: expected a positive integer")
    for opt in ("nuts_samples", "mala_samples", "show_draws"):
        if getattr(args, opt) < 4:
            parser.error(f"--{opt.replace('_', '-')}: expected at least 4")
    if args.show_digits < 1:
        parser.error("--show-digits: expected a positive integer")
    if not (math.isfinite(args.noise) and args.noise > 0):
        parser.error(f"--noise: expected a positive number; got {args.noise}")
    if not (math.isfinite(args.map_lr) and args.map_lr > 0):
        parser.error(f"--map-lr: expected a positive number; got {args.map_lr}")
    if args.flow is not None and not Path(args.flow).is_dir():
        parser.error(f"--flow: expected a directory saved by nif.save_flow; got {args.flow!r}")
    return args


def main(argv=None) -> dict:
    """Run the chosen problems; returns the results dictionary (also written as JSON)."""
    args = parse(argv)
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    reference = nif.pretrained("digits") if args.flow is None else nif.load_flow(args.flow)
    flow = reference.replace(
        solver=nif.ExponentialMultistep(3), dt0=reference.t_end / args.solver_steps
    )
    if flow.dim != 64:
        raise ValueError(f"flow: expected a flow on 8x8 digits (dim 64); got dim {flow.dim}")
    data = np.asarray(nif.datasets.load("digits", seed=0), np.float32)
    x_train, x_test = data[:N_TRAIN], data[N_TRAIN:]
    prior_mg = gaussian_baseline(x_train)

    counts = _digit_counts(args)
    bar = tqdm(total=sum(counts.values()), desc="inverse problems", disable=args.quiet)
    settings = {k: v for k, v in vars(args).items() if k not in ("quiet",)}
    problems: dict = {}
    payload = {
        "settings": settings,
        "flow": {
            "source": "nif.pretrained('digits')" if args.flow is None else str(args.flow),
            "dim": flow.dim,
            "latent_dim": flow.latent_dim,
            "solver": f"ExponentialMultistep(3), {args.solver_steps} steps",
        },
        "level": LEVEL,
        "gaussian_prior": f"mean and covariance of the {N_TRAIN} training digits + {JITTER} I",
        "problems": problems,
        "complete": False,
        "wall_seconds": None,
        "version": nif.__version__,
        "jax": jax.__version__,
        "machine": platform.platform(),
    }
    for name in args.problems:
        t0 = time.perf_counter()
        record, keep = run_problem(
            name, list(PROBLEMS).index(name), flow, x_test, prior_mg, args, bar
        )
        record["wall_seconds"] = time.perf_counter() - t0
        problems[name] = record
        plot_problem(name, record, keep, out / f"{name}.png")
        # each problem compiles its own samplers: drop them, and save what is done so far
        jax.clear_caches()
        payload["wall_seconds"] = time.perf_counter() - t_start
        _atomic_write_text(json.dumps(payload, indent=1) + "\n", out / "results.json")
    bar.close()
    plot_summary(problems, out / "summary.png")
    figures = [f"{name}.png" for name in problems] + ["summary.png"]

    payload["complete"] = True
    payload["wall_seconds"] = time.perf_counter() - t_start
    text = json.dumps(payload, indent=1) + "\n"
    _atomic_write_text(text, out / "results.json")
    if args.results:
        prefix = Path(args.results)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(text, prefix.with_name(prefix.name + ".json"))
        for fig in figures:
            _copy_atomic(out / fig, prefix.with_name(f"{prefix.name}_{fig}"))
    print(format_table(problems))
    print(
        f"flow: {payload['flow']['source']} (latent dim {flow.latent_dim}); "
        f"wall time {payload['wall_seconds']:.0f} s; files in {out.resolve()}/"
    )
    return payload


if __name__ == "__main__":
    main()
    sys.exit(0)
