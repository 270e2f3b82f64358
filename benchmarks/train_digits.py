"""Benchmark: inflationary flows on sklearn's 8x8 digits (64-D), the shipped digits prior.

Trains, one after the other, a PR-preserving flow and PR-reducing flows keeping
``k`` = 8, 16 and 32 principal directions with :func:`numpyro_inflow.fit` (a residual
MLP in eigen coordinates), on the first 1,500 images of
``nif.datasets.load("digits", seed=0)``; the last 297 are the held-out test split.
For each flow it reports:

* sample quality: the energy distance (``nif.evaluation.energy_distance``, the
  unbiased U-statistic) between generated samples and the held-out digits, next to three references drawn in the same run: the data floor
  (training digits vs held-out digits), a moment-matched Gaussian and, for ``k``
  kept directions, the ``k``-dimensional PCA Gaussian (mean plus the top ``k``
  principal directions with their variances);
* a classifier check: the mean max-probability that a logistic-regression digit
  classifier (trained on the training split) assigns to samples, against its value
  on real held-out digits and on Gaussian samples;
* round-trip error: RMSE of ``decode(encode(x)) - x`` on held-out digits, with the
  flow's adaptive solver (Tsit5, rtol = atol = 1e-5) and with the cheap fixed-step
  ``ExponentialMultistep`` (40 steps) used by the demo;
* figures: a grid of samples per model and latent interpolations between held-out
  digits.

Usage::

    python benchmarks/train_digits.py                 # full run (about 10 min on 2 cores)
    python benchmarks/train_digits.py --ship prp prr16  # also ship them as the package's
                                                        # "digits" and "digits-k16" flows
    python benchmarks/train_digits.py --quick         # smoke run (tiny network, few steps)

Results: ``benchmarks/results/train_digits.json``, ``train_digits_samples.png``,
``train_digits_interpolations.png`` (``train_digits_quick*`` with ``--quick``); the
flows are saved under ``benchmarks/results/train_digits_flows/<case>/``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import numpyro_inflow as nif

RESULTS = Path(__file__).parent / "results"
PRETRAINED = Path(__file__).parent.parent / "numpyro_inflow" / "pretrained"
N_TRAIN = 1500  # the rest of the 1,797 images (297) is the held-out test split
CASES = {"prr16": 16, "prp": None, "prr8": 8, "prr32": 32}
SHIPPED = {"prp": "digits", "prr16": "digits-k16"}  # case -> directory under pretrained/
FULL = dict(steps=4000, batch_size=256, width=256, depth=2, learning_rate=2e-3)
QUICK = dict(steps=100, batch_size=64, width=32, depth=1, learning_rate=2e-3)
DEMO_STEPS = 40  # fixed steps of the ExponentialMultistep solver checked below


def digits_with_labels(seed: int = 0):
    """Images as ``nif.datasets.load('digits', seed=seed)`` returns them, and their labels.

    The labels are not part of the package's loader; the order is rebuilt here from
    sklearn and checked against the loader image by image.
    """
    from sklearn.datasets import load_digits

    raw = load_digits()
    order = np.random.default_rng(seed).permutation(raw.data.shape[0])
    x = np.asarray(nif.datasets.load("digits", seed=seed), np.float32)
    if not np.array_equal(x, (raw.data[order] / 8.0 - 1.0).astype(np.float32)):
        raise RuntimeError("nif.datasets.load('digits') order differs from the expected one")
    return x, raw.target[order]


def mmd(a: np.ndarray, b: np.ndarray, bandwidth: float) -> float:
    """Unbiased squared MMD with the Gaussian kernel ``exp(-|x-y|^2 / (2 h^2))``."""
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)

    def mean_k(p, q, same):
        k = jnp.exp(-jnp.sum((p[:, None] - q[None]) ** 2, -1) / (2 * bandwidth**2))
        n = p.shape[0]
        return (jnp.sum(k) - n) / (n * (n - 1)) if same else jnp.mean(k)

    return float(mean_k(a, a, True) + mean_k(b, b, True) - 2 * mean_k(a, b, False))


def gaussian_samples(x_train, n, rng, k=None):
    """Draws from the moment-matched Gaussian, or its top-``k`` PCA restriction."""
    mu = x_train.mean(0)
    lam, w = np.linalg.eigh(np.cov(x_train, rowvar=False))
    lam, w = np.clip(lam[::-1], 0, None), w[:, ::-1]
    if k is not None:
        lam, w = lam[:k], w[:, :k]
    return (mu + (rng.standard_normal((n, lam.size)) * np.sqrt(lam)) @ w.T).astype(np.float32)


def image_grid(ax, images, ncol, title):
    n = len(images)
    nrow = -(-n // ncol)
    canvas = np.ones((nrow * 9 - 1, ncol * 9 - 1))
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        canvas[r * 9 : r * 9 + 8, c * 9 : c * 9 + 8] = np.clip(np.asarray(im).reshape(8, 8), -1, 1)
    ax.imshow(canvas, cmap="gray_r", vmin=-1, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def batched(fn, x, size=200):
    return np.concatenate([np.asarray(fn(x[i : i + size])) for i in range(0, len(x), size)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=None)
    parser.add_argument("--steps", type=int, default=None, help="training steps per flow")
    parser.add_argument("--samples", type=int, default=None, help="generated samples per flow")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ship",
        nargs="+",
        default=[],
        choices=sorted(SHIPPED),
        help="copy these cases into numpyro_inflow/pretrained/ (prp -> digits, "
        "prr16 -> digits-k16)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.linear_model import LogisticRegression

    cfg = dict(QUICK if args.quick else FULL)
    if args.steps is not None:
        cfg["steps"] = args.steps
    cases = args.cases or (["prp", "prr16"] if args.quick else list(CASES))
    n_gen = args.samples or (60 if args.quick else 1000)
    tag = "train_digits_quick" if args.quick else "train_digits"
    args.out.mkdir(parents=True, exist_ok=True)
    flows_dir = args.out / f"{tag}_flows"
    flows_dir.mkdir(exist_ok=True)

    x, y = digits_with_labels(args.seed)
    x_train, x_test, y_train = x[:N_TRAIN], x[N_TRAIN:], y[:N_TRAIN]
    if args.quick:
        x_test = x_test[:60]
    rng = np.random.default_rng(args.seed + 1)
    clf = LogisticRegression(max_iter=2000, C=0.5).fit(x_train, y_train)

    def confidence(s):
        return float(clf.predict_proba(np.clip(s, -1, 1)).max(1).mean())

    d_test = np.sqrt(((x_test[:, None] - x_test[None]) ** 2).sum(-1))
    bandwidth = float(np.median(d_test[np.triu_indices(len(x_test), 1)])) / 2

    def quality(s):
        return {
            "energy_distance": nif.evaluation.energy_distance(s, x_test),
            "mmd": mmd(s, x_test, bandwidth),
            "classifier_confidence": confidence(s),
        }

    floor_idx = rng.choice(N_TRAIN, size=min(n_gen, N_TRAIN), replace=False)
    gauss = gaussian_samples(x_train, n_gen, rng)
    refs = {
        "data_floor": x_train[floor_idx],
        "gaussian": gauss,
        **{f"pca{k}": gaussian_samples(x_train, n_gen, rng, k) for k in (8, 16, 32)},
    }
    results = {
        "settings": dict(
            cfg,
            n_train=N_TRAIN,
            n_test=len(x_test),
            n_generated=n_gen,
            seed=args.seed,
            architecture="mlp (eigen coordinates)",
            demo_solver=f"ExponentialMultistep(order=2), {DEMO_STEPS} steps",
        ),
        "machine": f"{platform.machine()} {platform.system()}, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s)",
        "test_classifier_confidence": confidence(x_test),
        "test_classifier_accuracy": float(clf.score(x_test, y[N_TRAIN:][: len(x_test)])),
        "mmd_bandwidth": bandwidth,
        "references": {name: quality(s) for name, s in refs.items()},
        "flows": {},
    }
    print(json.dumps(results["references"], indent=1), flush=True)

    samples_by_case, interps = {}, {}
    pair = x_test[[0, 1]]
    for name in cases:
        keep = CASES[name]
        t0 = time.perf_counter()
        flow, hist = nif.fit_with_history(
            x_train,
            keep=keep,
            steps=cfg["steps"],
            batch_size=cfg["batch_size"],
            seed=args.seed,
            optimiser=dict(learning_rate=cfg["learning_rate"]),
            network=dict(width=cfg["width"], depth=cfg["depth"]),
        )
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        z = batched(flow.encode, x_test)
        x_back = batched(flow.decode, z)
        rt_s = time.perf_counter() - t0
        fast = flow.replace(solver=nif.ExponentialMultistep(), dt0=flow.t_end / DEMO_STEPS)
        x_back_fast = batched(fast.decode, batched(fast.encode, x_test))
        t0 = time.perf_counter()
        s = batched(
            flow.decode, np.asarray(flow.sample_latent(jax.random.key(args.seed + 7), (n_gen,)))
        )
        sample_s = time.perf_counter() - t0
        kk = flow.latent_dim
        zt = z[:, :kk]
        row = {
            "keep": keep,
            "latent_dim": kk,
            "train_seconds": train_s,
            "final_val_loss": hist.val_loss[-1] if hist.val_loss else None,
            **quality(s),
            "round_trip_rmse": float(np.sqrt(np.mean((x_back - x_test) ** 2))),
            "round_trip_rmse_multistep": float(np.sqrt(np.mean((x_back_fast - x_test) ** 2))),
            "round_trip_seconds_per_digit": rt_s / len(x_test),
            "sample_seconds_per_digit": sample_s / n_gen,
            "latent_mean_abs": float(np.abs(zt.mean(0)).mean()),
            "latent_var_mean": float(zt.var(0).mean()),
            "reduced_reconstruction_rmse": float(
                np.sqrt(np.mean((batched(flow.from_latent, zt) - x_test) ** 2))
            )
            if keep
            else None,
            "weights_bytes": None,
        }
        gap = results["references"]["gaussian"]["energy_distance"]
        floor = results["references"]["data_floor"]["energy_distance"]
        row["gap_closed"] = (gap - row["energy_distance"]) / (gap - floor)
        gap = results["references"]["gaussian"]["mmd"]
        floor = results["references"]["data_floor"]["mmd"]
        row["mmd_gap_closed"] = (gap - row["mmd"]) / (gap - floor)
        path = flows_dir / name
        nif.save_flow(
            flow,
            path,
            overwrite=True,
            metadata={
                "data": "digits",
                "seed": args.seed,
                "split": f"first {N_TRAIN} train",
                "training": dict(cfg, keep=keep),
                "quality": dict(row),
            },
        )
        row["weights_bytes"] = sum(f.stat().st_size for f in path.iterdir())
        results["flows"][name] = row
        print(name, json.dumps(row), flush=True)
        samples_by_case[name] = s
        lat = np.asarray(flow.encode(pair))
        ts = np.linspace(0, 1, 8)[:, None]
        zi = (1 - ts) * lat[0] + ts * lat[1]
        if keep:  # interpolate in the reduced latent, squeezed coordinates zero
            interps[name] = np.asarray(flow.from_latent(zi[:, :kk]))
        else:
            interps[name] = np.asarray(flow.decode(zi))
        (args.out / f"{tag}.json").write_text(json.dumps(results, indent=1))

    # ---- figures
    panels = [("held-out digits", x_test), ("Gaussian", gauss)]
    panels += [(f"{c} flow", samples_by_case[c]) for c in cases]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (title, imgs) in zip(np.atleast_1d(axes), panels, strict=True):
        image_grid(ax, imgs[:36], 6, title)
    fig.savefig(args.out / f"{tag}_samples.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig, axes = plt.subplots(len(cases) + 1, 1, figsize=(7, 1.1 * (len(cases) + 1)))
    ts = np.linspace(0, 1, 8)[:, None]
    image_grid(axes[0], (1 - ts) * pair[0] + ts * pair[1], 8, "pixel-space blend")
    for ax, c in zip(axes[1:], cases, strict=True):
        image_grid(ax, interps[c], 8, f"{c}: linear path in latent, decoded")
    fig.savefig(args.out / f"{tag}_interpolations.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    print(
        f"\n{'model':10s} {'energy dist':>12s} {'MMD^2':>9s} {'clf conf':>9s} {'RT RMSE':>9s} "
        f"{'RT RMSE 40':>10s} {'train s':>8s}"
    )
    for name, r in results["references"].items():
        print(
            f"{name:10s} {r['energy_distance']:12.4f} {r['mmd']:9.4f} "
            f"{r['classifier_confidence']:9.3f}"
        )
    for name, r in results["flows"].items():
        print(
            f"{name:10s} {r['energy_distance']:12.4f} {r['mmd']:9.4f} "
            f"{r['classifier_confidence']:9.3f} "
            f"{r['round_trip_rmse']:9.2e} {r['round_trip_rmse_multistep']:10.2e} "
            f"{r['train_seconds']:8.0f}"
        )
    print(f"test digits: classifier confidence {results['test_classifier_confidence']:.3f}")

    for case in args.ship:
        dst = PRETRAINED / SHIPPED[case]
        tmp = PRETRAINED / f".{SHIPPED[case]}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(flows_dir / case, tmp)
        if dst.exists():
            shutil.rmtree(dst)
        tmp.replace(dst)
        print(f"shipped {case} to {dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
