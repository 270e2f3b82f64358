"""The paper's toy coverage experiment (de Albuquerque & Pearson 2024, toy coverage).

If the score and the ODE solve were exact, an inflationary flow would be a bijection
between data and a Gaussian latent, so a region holds the same probability before and
after the map. This script checks that on trained flows (circles PR-preserving,
circles ``keep=1``, s_curve ``keep=2``).

**Boundary experiment.** Latent boundaries at Mahalanobis radii 0.5, 1, ..., 3.5
(200 points each) and 20,000 test points drawn from the latent base are decoded to
data space and re-encoded. For each radius the script reports the fraction of points
inside the boundary

- ``latent``: the test draws in latent space (Monte Carlo check of the target);
- ``data (polygon)``: decoded test points inside the polygon of the decoded boundary,
  decided geometrically with ``matplotlib.path.Path`` (2-D flows). The paper uses
  alpha shapes (2-D) and alpha meshes (3-D) of the decoded boundary points for the
  same question; a polygon through boundary points ordered by their latent angle is
  that boundary without the alpha-shape fitting (which is exact here because the
  decoded boundary of a homeomorphism is a simple closed curve);
- ``re-encoded``: decoded test points encoded again and compared with the latent
  boundary. Because the flow is a bijection, a data point lies inside the decoded
  boundary exactly when its encoding lies inside the latent one, so this is the
  data-space coverage decided without any mesh, in any dimension (3-D included); it
  equals ``latent`` up to the round-trip error ``encode(decode(z)) - z``;
- ``held-out data``: real held-out data encoded. This is the calibration question
  proper (does the decoded region hold the stated probability of the *data*?) and it
  is where score error shows; the three columns above only see ODE error.

The exact target is the chi-square CDF. What "inside" means for a PR-reducing flow
(latent ``N(0, diag(1, ..., 1, eps, ...))`` with tiny squeezed variances ``eps``):

- ``kept`` (``k`` degrees of freedom): inside when the ``k`` kept coordinates lie
  within radius ``r``; the squeezed coordinates are ignored. The region is a cylinder
  over the squeezed directions, the reduced latent a NumPyro model samples in
  (``flow.to_latent``), and its target is ``chi2_k``.
- ``full`` (``D`` degrees of freedom, the paper's convention): Mahalanobis distance
  with the base covariance, squeezed coordinates divided by ``sqrt(eps)``; target
  ``chi2_D``. Any absolute error in a squeezed coordinate is magnified by
  ``1 / sqrt(eps)``, so this convention is far more sensitive to solver and score
  error; it is also the one whose boundary is a closed curve in 2-D (an ellipse),
  used for the polygon check of ``circles_k1``.

**Radius-based variant** (geometry-agnostic, from the authors' code): around random
centres, small Mahalanobis balls (radii up to 1) are mapped by the flow (``gen``:
latent centres, decoded; ``melt``: held-out data centres, encoded). A test point is
truly inside when its start distance is at most ``r``; after the map it is called
inside when its distance to the mapped centre (end covariance) is at most the
largest distance of the mapped boundary points. The script reports TPR/FPR at that
threshold and the ROC AUC of the mapped distance (relative to the median mapped
boundary distance) as a classifier of inside/outside, per radius.

Usage::

    python examples/coverage_toy.py --flows benchmarks/results/flows   # reuse saved flows
    python examples/coverage_toy.py                 # train the three flows first (nif.fit)
    python examples/coverage_toy.py --oracle        # Gaussian-mixture oracle flows, no training
    python examples/coverage_toy.py --quick         # tiny smoke run (oracle flows)

Outputs in ``--out`` (default ``./coverage-toy/``, under the current directory; pass
``--out benchmarks/results`` to refresh the documented results): ``coverage_toy.json``,
``coverage_toy_boundaries.png``, ``coverage_toy_curves.png``, ``coverage_toy_roc.png``
(prefix ``coverage_toy_quick`` with ``--quick``, ``coverage_toy_TAG`` with ``--tag TAG``).
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
from scipy import stats

import numpyro_inflow as nif

CASES = {
    "circles": dict(data="circles", keep=None),
    "circles_k1": dict(data="circles", keep=1),
    "s_curve_k2": dict(data="s_curve", keep=2),
}


# ----------------------------------------------------------------------------- flows
def oracle_flow(x: np.ndarray, keep: int | None, n_components: int, seed: int = 0):
    """An exact flow: the score of a Gaussian mixture fitted to ``x`` (no network)."""
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(n_components, covariance_type="full", random_state=seed).fit(x)
    score = nif.GaussianMixtureScore(
        jnp.asarray(gm.weights_, jnp.float32),
        jnp.asarray(gm.means_, jnp.float32),
        jnp.asarray(gm.covariances_, jnp.float32),
    )
    mean, cov = score.moments()
    schedule = nif.InflationSchedule.from_moments(
        mean, cov, keep=keep, inflation_gap=None if keep is None else 1.0
    )
    return nif.InflationaryFlow(schedule, score)


def get_flow(name: str, spec: dict, args):
    if args.flows:
        return nif.load_flow(Path(args.flows) / name)
    x = nif.datasets.load(spec["data"], n=args.n_train, seed=1)
    if args.oracle:
        return oracle_flow(x, spec["keep"], args.oracle_components)
    return nif.fit(x, keep=spec["keep"], steps=args.train_steps, seed=0, progress=False)


def with_solver(flow, solver: str):
    if solver == "default":
        return flow
    if solver == "3m":  # 48 steps, ~50 evaluations (see docs/benchmarks.md, ODE accuracy)
        return flow.replace(solver=nif.ExponentialMultistep(3), dt0=float(flow.t_end) / 48)
    raise ValueError(f"solver: expected 'default' or '3m'; got {solver!r}")


_ENCODE = jax.jit(lambda flow, a: flow.encode(a))
_DECODE = jax.jit(lambda flow, a: flow.decode(a))


def maps(flow):
    """Jit-compiled ``(encode, decode)`` of ``flow`` (the flow is a traced argument)."""
    return (lambda a: _ENCODE(flow, a)), (lambda a: _DECODE(flow, a))


BATCH = 4096


def batched(fn, a: np.ndarray) -> np.ndarray:
    """Apply a flow map in chunks of ``BATCH`` rows, padding the last one, so that each
    map compiles once whatever the number of points."""
    a = np.asarray(a, np.float32)
    out = []
    for i in range(0, len(a), BATCH):
        chunk = a[i : i + BATCH]
        pad = BATCH - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
        out.append(np.asarray(fn(jnp.asarray(chunk)))[: BATCH - pad])
    return np.concatenate(out)


# ----------------------------------------------------------------------------- geometry
def sphere_directions(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``n`` unit vectors: evenly spaced angles in 2-D (an ordered polygon), else uniform."""
    if dim == 1:
        return np.array([[-1.0], [1.0]])[np.arange(n) % 2]
    if dim == 2:
        th = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return np.stack([np.cos(th), np.sin(th)], -1)
    u = rng.standard_normal((n, dim))
    return u / np.linalg.norm(u, axis=-1, keepdims=True)


def distance(z: np.ndarray, scale: np.ndarray, dims: int) -> np.ndarray:
    """Mahalanobis distance of ``z`` from 0 over its first ``dims`` coordinates."""
    return np.sqrt(np.sum((z[..., :dims] / scale[:dims]) ** 2, -1))


def polygon_inside(boundary: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Point-in-polygon for a closed 2-D curve given by ordered vertices."""
    from matplotlib.path import Path as MplPath

    return MplPath(boundary, closed=False).contains_points(points)


# ----------------------------------------------------------------------------- experiment
def boundary_experiment(flow, x_heldout: np.ndarray, radii, args, rng) -> dict:
    dim, k = flow.dim, flow.latent_dim
    sd = np.sqrt(np.asarray(flow.base_variance, np.float64))
    encode, decode = maps(flow)

    z = rng.standard_normal((args.n_test, dim)) * sd
    x = batched(decode, z)
    z_rt = batched(encode, x)
    z_data = batched(encode, x_heldout)
    rt_err = np.sqrt(np.mean(((z_rt - z) / sd) ** 2, 0))  # per coordinate, base units

    conventions = {"full": dim} if k == dim else {"kept": k, "full": dim}
    out = dict(
        dim=dim,
        keep=k,
        base_sd=sd.tolist(),
        n_test=int(args.n_test),
        n_heldout=len(x_heldout),
        roundtrip_rms_base_units=rt_err.tolist(),
        conventions={},
    )
    bnd_dec, bnd_lat = {}, {}
    for conv, dof in conventions.items():
        # Boundaries: spheres of radius r in the first `dof` coords (scaled by the base
        # sd), other coords 0 (for "kept": the cylinder's section at z_squeezed = 0).
        b = np.zeros((len(radii), args.n_boundary, dim))
        for m, r in enumerate(radii):
            b[m, :, :dof] = r * sphere_directions(rng, args.n_boundary, dof) * sd[:dof]
        xb_all = batched(decode, b.reshape(-1, dim)).reshape(b.shape)
        zb_all = batched(encode, xb_all.reshape(-1, dim)).reshape(b.shape)
        rows = []
        for m, r in enumerate(radii):
            xb, zb_rt = xb_all[m], zb_all[m]
            bnd_dec[(conv, float(r))] = xb
            bnd_lat[(conv, float(r))] = b[m]
            inside_lat = distance(z, sd, dof) <= r
            inside_rt = distance(z_rt, sd, dof) <= r
            target = float(stats.chi2.cdf(r**2, dof))
            row = dict(
                radius=float(r),
                target=target,
                mc_sd=float(np.sqrt(target * (1 - target) / args.n_test)),
                latent=float(inside_lat.mean()),
                reencoded=float(inside_rt.mean()),
                flips_reencoded=int(np.sum(inside_lat != inside_rt)),
                heldout=float(np.mean(distance(z_data, sd, dof) <= r)),
                boundary_radius_drift=float(np.max(np.abs(distance(zb_rt, sd, dof) - r))),
            )
            if dim == 2 and dof == 2:
                inside_geo = polygon_inside(xb, x)
                row["data_polygon"] = float(inside_geo.mean())
                row["flips_polygon"] = int(np.sum(inside_lat != inside_geo))
                row["heldout_polygon"] = float(polygon_inside(xb, x_heldout).mean())
            rows.append(row)
        out["conventions"][conv] = dict(dof=dof, rows=rows)
    arrays = dict(
        z=z[:3000], x=x[:3000], x_heldout=x_heldout, boundaries=bnd_dec, boundaries_latent=bnd_lat
    )
    return out, arrays


def ball(rng, centres: np.ndarray, n: int, chol: np.ndarray) -> np.ndarray:
    """``n`` Gaussian draws around each centre with covariance ``chol chol^T``."""
    e = rng.standard_normal((len(centres), n, centres.shape[-1]))
    return centres[:, None, :] + e @ chol.T


def mahalanobis(a: np.ndarray, c: np.ndarray, prec_chol: np.ndarray) -> np.ndarray:
    """Distances of ``a (C, n, D)`` from centres ``c (C, D)``; ``prec_chol = L^{-1}``."""
    return np.linalg.norm((a - c[:, None, :]) @ prec_chol.T, axis=-1)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC of 'smaller score means inside' (Mann-Whitney, ties counted half)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = stats.rankdata(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(1 - u / (len(pos) * len(neg)))


def rate(hits: np.ndarray, of: np.ndarray) -> float:
    """``hits.sum() / of.sum()``, NaN when there is nothing to count."""
    return float(hits.sum() / of.sum()) if of.sum() else float("nan")


def radius_experiment(flow, x_heldout: np.ndarray, args, rng) -> dict:
    dim = flow.dim
    sch = flow.schedule
    w = np.asarray(sch.eigenvectors, np.float64)
    lam = np.asarray(sch.eigenvalues, np.float64)
    data_chol = w * np.sqrt(lam)  # data covariance W diag(lam) W^T = chol chol^T
    base_chol = np.diag(np.sqrt(np.asarray(flow.base_variance, np.float64)))
    encode, decode = maps(flow)
    radii = np.linspace(args.roc_r_min, 1.0, args.roc_radii)
    nc, nb, nl = args.roc_centres, args.roc_boundary, args.roc_local
    out = {}
    for direction in ("gen", "melt"):
        if direction == "gen":
            centres = rng.standard_normal((nc, dim)) @ base_chol.T
            c0, c1, fmap = base_chol, data_chol, decode
        else:
            centres = x_heldout[rng.choice(len(x_heldout), nc, replace=False)].astype(float)
            c0, c1, fmap = data_chol, base_chol, encode
        p0, p1 = np.linalg.inv(c0), np.linalg.inv(c1)
        local = ball(rng, centres, nl, c0)
        d0 = mahalanobis(local, centres, p0)
        dirs = sphere_directions(rng, nb, dim)
        bnd = centres[:, None, None, :] + radii[None, :, None, None] * (dirs @ c0.T)[None, None]
        pts = np.concatenate(
            [centres[:, None], local, bnd.reshape(nc, -1, dim)], axis=1
        )  # (C, 1 + nl + R * nb, D)
        mapped = batched(fmap, pts.reshape(-1, dim)).reshape(pts.shape)
        mc = mapped[:, 0]
        d1 = mahalanobis(mapped[:, 1 : 1 + nl], mc, p1)
        db = mahalanobis(mapped[:, 1 + nl :], mc, p1).reshape(nc, len(radii), nb)
        keep = d0 < 1.0  # the paper's test points: within unit distance of the centre
        rows = []
        for j, r in enumerate(radii):
            truth = d0 <= r
            rmax = db[:, j].max(-1, keepdims=True)
            rmed = np.median(db[:, j], -1, keepdims=True)
            pred = d1 <= rmax
            t, f = truth & keep, ~truth & keep
            score = (d1 / rmed)[keep]
            rows.append(
                dict(
                    radius=float(r),
                    n_inside=int(t.sum()),
                    n_outside=int(f.sum()),
                    tpr_rmax=rate(pred & t, t),
                    fpr_rmax=rate(pred & f, f),
                    tpr_rmin=rate((d1 <= db[:, j].min(-1, keepdims=True)) & t, t),
                    auc=auc(score[truth[keep]], score[~truth[keep]]),
                    boundary_spread=float(np.mean((rmax - db[:, j].min(-1, keepdims=True)) / rmed)),
                )
            )
        ok = [r for r in rows if r["n_inside"] and r["n_outside"]]
        fpr = np.array([0.0] + [r["fpr_rmax"] for r in ok] + [1.0])
        tpr = np.array([0.0] + [r["tpr_rmax"] for r in ok] + [1.0])
        order = np.lexsort((tpr, fpr))
        out[direction] = dict(
            rows=rows,
            mean_auc=float(np.nanmean([r["auc"] for r in rows])),
            # The paper's summary: the (FPR, TPR) pairs at r_max over the radii, trapezoid.
            auc_over_radii=float(np.trapezoid(tpr[order], fpr[order])),
        )
    return out


# ----------------------------------------------------------------------------- output
def print_table(name: str, res: dict) -> None:
    for conv, c in res["conventions"].items():
        print(f"\n{name}  [{conv}: chi2 with {c['dof']} dof]")
        print(
            f"{'r':>4} {'target':>7} {'latent':>7} {'polygon':>8} {'re-enc':>7} "
            f"{'flips':>6} {'held-out':>9} {'drift':>8}"
        )
        for r in c["rows"]:
            poly = f"{100 * r['data_polygon']:8.2f}" if "data_polygon" in r else f"{'-':>8}"
            print(
                f"{r['radius']:4.1f} {100 * r['target']:7.2f} {100 * r['latent']:7.2f} {poly} "
                f"{100 * r['reencoded']:7.2f} {r['flips_reencoded']:6d} "
                f"{100 * r['heldout']:9.2f} {r['boundary_radius_drift']:8.1e}"
            )


def plot_boundaries(results: dict, arrays: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # 2-D flows: the closed (full) boundaries. 3-D: the kept circles (squeezed coord 0)
    # and the full ellipsoids (random points), both projected.
    panels = []
    for name in results:
        dim = results[name]["boundary"]["dim"]
        panels += [(name, "full")] if dim == 2 else [(name, "kept"), (name, "full")]
    fig, ax = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 9), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for col, (name, conv) in enumerate(panels):
        arr, res = arrays[name], results[name]["boundary"]
        dim = res["dim"]
        i, j = (0, 1) if dim == 2 else (0, 2)
        li, lj = (0, 1) if conv == "kept" or dim == 2 else (0, 2)
        radii = sorted({r for (c, r) in arr["boundaries"] if c == conv})
        a0, a1 = ax[0, col], ax[1, col]
        sd = np.asarray(res["base_sd"])
        zs = arr["z"] / sd  # standardised latent: every boundary is a circle / sphere
        a0.scatter(zs[:, li], zs[:, lj], s=1, c="0.75")
        a1.scatter(
            arr["x_heldout"][:, i], arr["x_heldout"][:, j], s=1, c="0.8", label="held-out data"
        )
        for m, r in enumerate(radii):
            colour = cmap(m / max(len(radii) - 1, 1))
            xb = arr["boundaries"][(conv, r)]
            if dim == 2 or conv == "kept":  # ordered closed curves
                th = np.linspace(0, 2 * np.pi, 400)
                a0.plot(r * np.cos(th), r * np.sin(th), color=colour, lw=1)
                closed = np.concatenate([xb, xb[:1]])
                a1.plot(closed[:, i], closed[:, j], color=colour, lw=1.2, label=f"r = {r:g}")
            else:  # random points on a sphere (latent) / its image (data)
                zb = arr["boundaries_latent"][(conv, r)] / sd
                a0.plot(zb[:, li], zb[:, lj], ".", color=colour, ms=1.5)
                a1.plot(xb[:, i], xb[:, j], ".", color=colour, ms=1.5, label=f"r = {r:g}")
        squeezed = " (squeezed)" if lj >= res["keep"] else ""
        a0.set_title(f"{name}: latent boundaries ({conv})")
        a0.set_xlabel(f"z_{li + 1} / sd_{li + 1}")
        a0.set_ylabel(f"z_{lj + 1} / sd_{lj + 1}{squeezed}")
        a0.set_aspect("equal", "datalim")
        a1.set_title(f"{name}: decoded ({conv})" + (", (x0, x2)" if dim == 3 else ""))
        a1.set_aspect("equal", "datalim")
        if col == 0:
            a1.legend(fontsize=7, markerscale=3, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_curves(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(n, c) for n in results for c in results[n]["boundary"]["conventions"]]
    fig, ax = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7.5), squeeze=False)
    series = [
        ("latent", "latent draws", "o", "C0"),
        ("data_polygon", "decoded, polygon test", "s", "C1"),
        ("reencoded", "re-encoded", "^", "C2"),
        ("heldout", "held-out data, encoded", "x", "C3"),
    ]
    for col, (name, conv) in enumerate(panels):
        c = results[name]["boundary"]["conventions"][conv]
        r = np.array([row["radius"] for row in c["rows"]])
        target = np.array([row["target"] for row in c["rows"]])
        mc = np.array([row["mc_sd"] for row in c["rows"]])
        rr = np.linspace(0, r.max() + 0.2, 200)
        ax[0, col].plot(
            rr, 100 * stats.chi2.cdf(rr**2, c["dof"]), "k-", lw=1, label=f"chi2_{c['dof']} target"
        )
        ax[1, col].fill_between(r, -200 * mc, 200 * mc, color="0.85", label="±2 MC sd (test draws)")
        ax[1, col].axhline(0, color="k", lw=0.8)
        for key, label, marker, colour in series:
            if key not in c["rows"][0]:
                continue
            v = np.array([row[key] for row in c["rows"]])
            ax[0, col].plot(r, 100 * v, marker, color=colour, ms=4, mfc="none", label=label)
            ax[1, col].plot(
                r,
                100 * (v - target),
                marker + "-",
                color=colour,
                ms=4,
                mfc="none",
                lw=0.8,
                label=label,
            )
        ax[0, col].set_title(f"{name} ({conv}, {c['dof']} dof)")
        ax[0, col].set_ylabel("coverage (%)")
        ax[1, col].set_ylabel("coverage - target (points)")
        ax[1, col].set_xlabel("Mahalanobis radius")
        if col == 0:
            ax[0, col].legend(fontsize=7)
            ax[1, col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_roc(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in results:
        for direction, ls in (("gen", "-"), ("melt", "--")):
            rows = results[name]["radius"][direction]["rows"]
            r = [row["radius"] for row in rows]
            label = f"{name} {direction}"
            ax[0].plot(r, [row["auc"] for row in rows], ls, marker="o", ms=3, label=label)
            (line,) = ax[1].plot(r, [row["fpr_rmax"] for row in rows], ls, marker="o", ms=3)
            ax[1].plot(r, [row["tpr_rmax"] for row in rows], ls, color=line.get_color(), lw=0.8)
    ax[0].set_xlabel("start radius r")
    ax[0].set_ylabel("AUC (mapped distance vs inside/outside)")
    ax[0].set_title("radius-based test: AUC per radius")
    ax[0].legend(fontsize=7)
    ax[1].set_xlabel("start radius r")
    ax[1].set_ylabel("rate")
    ax[1].set_title("threshold r_max: TPR (top lines), FPR (markers)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def parse(argv):
    p = argparse.ArgumentParser(
        description="The paper's toy coverage experiment on inflationary flows.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--flows", default=None, help="directory of saved flows DIR/<case>/ (nif.save_flow)"
    )
    src.add_argument(
        "--oracle", action="store_true", help="Gaussian-mixture oracle flows (no training)"
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny smoke run (oracle flows unless --flows)"
    )
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    p.add_argument("--out", default="coverage-toy", help="output directory")
    p.add_argument("--n-test", type=int, default=20_000, help="latent test draws")
    p.add_argument("--n-boundary", type=int, default=200, help="points per boundary")
    p.add_argument("--n-heldout", type=int, default=5000, help="held-out data points")
    p.add_argument("--radii", type=float, nargs="+", default=list(np.linspace(0.5, 3.5, 7)))
    p.add_argument("--roc-centres", type=int, default=30)
    p.add_argument("--roc-radii", type=int, default=10)
    p.add_argument("--roc-r-min", type=float, default=0.1)
    p.add_argument(
        "--roc-boundary", type=int, default=64, help="boundary points per centre and radius"
    )
    p.add_argument("--roc-local", type=int, default=300, help="draws around each centre")
    p.add_argument("--n-train", type=int, default=50_000, help="training points (no --flows)")
    p.add_argument("--train-steps", type=int, default=20_000, help="nif.fit steps (no --flows)")
    p.add_argument("--oracle-components", type=int, default=12)
    p.add_argument(
        "--solver",
        choices=("default", "3m"),
        default="default",
        help="ODE solver: the flow's own, or 3M exponential multistep, 48 steps",
    )
    p.add_argument("--batch", type=int, default=4096, help="points per ODE solve call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default=None, help="suffix of the output files (coverage_toy_TAG.*)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        if not args.flows:
            args.oracle = True
        args.oracle_components = min(args.oracle_components, 4)
        args.n_train, args.n_test, args.n_boundary, args.n_heldout = 2000, 600, 48, 300
        args.roc_centres, args.roc_radii, args.roc_boundary, args.roc_local = 4, 4, 16, 60
        args.batch = min(args.batch, 1024)
    return args


def main(argv=None) -> dict:
    """Run the experiment; returns the results dictionary (also written as JSON)."""
    args = parse(argv)
    global BATCH
    BATCH = args.batch
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "coverage_toy" + (f"_{args.tag}" if args.tag else "_quick" if args.quick else "")
    rng = np.random.default_rng(args.seed)
    radii = np.asarray(args.radii, float)
    results, arrays = {}, {}
    for name in args.cases:
        spec = CASES[name]
        t0 = time.perf_counter()
        flow = with_solver(get_flow(name, spec, args), args.solver)
        t_flow = time.perf_counter() - t0
        x_heldout = nif.datasets.load(spec["data"], n=args.n_heldout, seed=4)
        t0 = time.perf_counter()
        bres, barr = boundary_experiment(flow, x_heldout, radii, args, rng)
        t_b = time.perf_counter() - t0
        t0 = time.perf_counter()
        rres = radius_experiment(flow, x_heldout, args, rng)
        t_r = time.perf_counter() - t0
        results[name] = dict(
            data=spec["data"],
            keep=spec["keep"],
            boundary=bres,
            radius=rres,
            seconds=dict(flow=t_flow, boundary=t_b, radius=t_r),
        )
        arrays[name] = barr
        print_table(name, bres)
        for d, rec in rres.items():
            print(
                f"  radius-based {d}: mean AUC {rec['mean_auc']:.3f}, "
                f"AUC over radii (r_max) {rec['auc_over_radii']:.3f}"
            )
        print(f"  ({t_b:.0f} s boundary, {t_r:.0f} s radius-based)", flush=True)
    meta = dict(
        source="oracle" if args.oracle else (args.flows or "nif.fit"),
        args=vars(args) | {"radii": radii.tolist()},
        version=nif.__version__,
        jax=jax.__version__,
        machine=platform.platform(),
    )
    payload = dict(results=results, meta=meta)
    (out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    if not args.no_plots:
        plot_boundaries(results, arrays, out_dir / f"{stem}_boundaries.png")
        plot_curves(results, out_dir / f"{stem}_curves.png")
        plot_roc(results, out_dir / f"{stem}_roc.png")
    return payload


if __name__ == "__main__":
    main()
