"""Benchmark: train inflationary flows on the paper's toy sets with ``nif.fit`` defaults.

For each case (circles PR-preserving and keep=1, moons, s_curve keep=2) it reports
wall time, samples seen, the final validation loss, the round-trip RMSE of
``decode(encode(x))`` on held-out points, and sample quality as the energy distance
(``nif.evaluation.energy_distance``, the unbiased U-statistic) between generated
samples and held-out data, next to two references drawn in the same run: the
data-vs-data floor (a second held-out draw) and a moment-matched Gaussian. "gap
closed" is ``(E_gauss - E_model) / (E_gauss - E_floor)``.

Targets: <= 5 minutes of training per case with default settings, >= 90 % of the gap
closed, round-trip RMSE <= 1e-2 for PR-preserving flows.

Usage::

    python benchmarks/train_toys.py            # full run (12-20 minutes on 2 shared cores)
    python benchmarks/train_toys.py --quick    # smoke run (tiny network, few steps)

Results go to ``benchmarks/results/train_toys.json`` and ``train_toys_<case>.png``
(``train_toys_quick.*`` with ``--quick``). The trained flows are saved with
``nif.save_flow`` under ``benchmarks/results/flows/<case>/`` (``flows_<tag>`` with
``--tag``; ``--flows-dir`` to choose; not with ``--quick`` unless asked) so that
``examples/coverage_toy.py --flows`` can reuse them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import numpyro_inflow as nif

RESULTS = Path(__file__).parent / "results"
CASES = {
    "circles": dict(data="circles", keep=None),
    "circles_k1": dict(data="circles", keep=1),
    "moons": dict(data="moons", keep=None),
    "s_curve_k2": dict(data="s_curve", keep=2),
}


def load(name: str, n: int, seed: int) -> np.ndarray:
    """The toy set ``name`` from ``nif.datasets``, as float32."""
    return np.asarray(nif.datasets.load(name, n=n, seed=seed), np.float32)


def trajectories(flow, x: np.ndarray, n_times: int = 60) -> np.ndarray:
    """Unscaled data-space positions ``(n_times, len(x), D)`` along the encoding solve."""
    sch = flow.schedule
    ts = jnp.linspace(0.0, sch.t_end, n_times)
    term = diffrax.ODETerm(nif.PFODEField(sch, flow.score))

    def one(xi):
        v0 = sch.scale(0.0) * sch.to_eigen(xi)
        sol = diffrax.diffeqsolve(
            term,
            diffrax.Tsit5(),
            0.0,
            sch.t_end,
            None,
            v0,
            stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-5),
            saveat=diffrax.SaveAt(ts=ts),
            max_steps=4096,
        )
        # Scaled state -> latent units, shown in the data's frame.
        return sol.ys / sch.A0 @ sch.eigenvectors.T

    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(x))).transpose(1, 0, 2)


def run_case(name: str, spec: dict, args) -> tuple[dict, dict, object]:
    x_train = load(spec["data"], args.n_train, seed=1)
    x_test = load(spec["data"], args.n_eval, seed=2)
    x_ref = load(spec["data"], args.n_eval, seed=3)
    fit_kwargs = dict(keep=spec["keep"], progress=args.progress)
    if spec["keep"] is not None and args.inflation_gap is not None:
        fit_kwargs["schedule"] = dict(inflation_gap=args.inflation_gap)
    if args.quick:
        fit_kwargs.update(steps=200, batch_size=128, network=dict(width=32, depth=1))
    elif args.steps is not None:
        fit_kwargs.update(steps=args.steps)
    t0 = time.perf_counter()
    flow, hist = nif.fit_with_history(x_train, **fit_kwargs)
    train_time = time.perf_counter() - t0

    t0 = time.perf_counter()
    samples = np.asarray(flow.sample(jax.random.key(7), (args.n_eval,)))
    sample_time = time.perf_counter() - t0
    x_rt = x_test[: args.n_roundtrip]
    t0 = time.perf_counter()
    z_rt = flow.encode(x_rt)
    rt = np.asarray(flow.decode(z_rt))
    rt_time = time.perf_counter() - t0
    rmse = float(np.sqrt(np.mean((rt - x_rt) ** 2)))
    if flow.schedule.is_reducing:  # reduced latent round trip (squeezed coords zeroed)
        rt_red = np.asarray(flow.from_latent(z_rt[:, : flow.latent_dim]))
        rmse_reduced = float(np.sqrt(np.mean((rt_red - x_rt) ** 2)))
    else:
        rmse_reduced = None

    rng = np.random.default_rng(11)
    mu, cov = x_train.mean(0), np.cov(x_train, rowvar=False)
    gauss = rng.multivariate_normal(mu, cov, args.n_eval)
    e_model = nif.evaluation.energy_distance(samples, x_test)
    e_floor = nif.evaluation.energy_distance(x_ref, x_test)
    e_gauss = nif.evaluation.energy_distance(gauss, x_test)
    closed = (e_gauss - e_model) / (e_gauss - e_floor)
    row = dict(
        case=name,
        data=spec["data"],
        keep=spec["keep"],
        dim=int(x_train.shape[1]),
        train_s=train_time,
        steps=hist.steps,
        samples_seen=hist.samples_seen,
        val_loss=hist.val_loss[-1] if hist.val_loss else None,
        roundtrip_rmse=rmse,
        roundtrip_rmse_reduced=rmse_reduced,
        energy_model=e_model,
        energy_floor=e_floor,
        energy_gauss=e_gauss,
        gap_closed=closed,
        sample_s=sample_time,
        roundtrip_s=rt_time,
        num_parameters=flow.score.num_parameters,
        stopped=hist.stopped,
    )
    latent = np.asarray(flow.encode(x_test[:1000]))
    traj = trajectories(flow, x_test[:: max(1, len(x_test) // 40)][:40])
    arrays = dict(
        samples=samples,
        test=x_test,
        latent=latent,
        traj=traj,
        loss=hist.loss,
        val_step=np.asarray(hist.val_step),
        val_loss=np.asarray(hist.val_loss),
    )
    return row, arrays, flow


def plot_case(row: dict, arr: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(17, 4))
    i, j = (0, 1) if row["dim"] == 2 else (0, 2)
    ax[0].scatter(arr["test"][:, i], arr["test"][:, j], s=1, alpha=0.4, label="held-out data")
    ax[0].scatter(arr["samples"][:, i], arr["samples"][:, j], s=1, alpha=0.4, label="flow samples")
    ax[0].set_title(f"{row['case']}: data vs samples")
    ax[0].legend(markerscale=8, loc="upper right")
    ax[1].scatter(arr["latent"][:, 0], arr["latent"][:, 1 if row["dim"] > 1 else 0], s=1, alpha=0.4)
    ax[1].set_title("latent z = encode(x) (first two coords)")
    ax[1].set_aspect("equal", "datalim")
    tr = arr["traj"]
    for k in range(tr.shape[1]):
        ax[2].plot(tr[:, k, i], tr[:, k, j], lw=0.6)
    ax[2].scatter(tr[0, :, i], tr[0, :, j], s=6, c="k", zorder=3)
    ax[2].set_title("encoding trajectories (latent units, data frame)")
    ax[3].semilogy(
        np.arange(1, len(arr["loss"]) + 1), arr["loss"], lw=0.3, alpha=0.5, label="train (per step)"
    )
    if len(arr["val_step"]):
        ax[3].semilogy(arr["val_step"], arr["val_loss"], "o-", ms=3, label="validation (EMA)")
    ax[3].axhline(row["dim"], color="gray", ls=":", label="Gaussian-data optimum D")
    ax[3].set_title("loss")
    ax[3].set_xlabel("step")
    ax[3].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny network, 200 steps")
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    p.add_argument("--steps", type=int, default=None, help="override fit's default steps")
    p.add_argument("--n-train", type=int, default=50_000)
    p.add_argument("--n-eval", type=int, default=3000, help="samples / held-out points")
    p.add_argument("--n-roundtrip", type=int, default=500)
    p.add_argument("--inflation-gap", type=float, default=None, help="for PR-reducing cases")
    p.add_argument("--progress", action="store_true", help="show fit's progress bar")
    p.add_argument("--tag", default=None, help="suffix of the result files")
    p.add_argument(
        "--flows-dir",
        default=None,
        help="save each trained flow to DIR/<case>/ (default: results/flows[_TAG]; "
        "none with --quick)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.n_train, args.n_eval, args.n_roundtrip = 2000, 300, 50
    tag = args.tag or ("quick" if args.quick else None)
    # A tagged run never overwrites the default flows that coverage_toy.py reuses.
    default_flows = None if args.quick else RESULTS / ("flows" + (f"_{tag}" if tag else ""))
    flows_dir = args.flows_dir or default_flows
    stem = "train_toys" + (f"_{tag}" if tag else "")
    RESULTS.mkdir(parents=True, exist_ok=True)

    rows = []
    header = (
        f"{'case':<11} {'train_s':>8} {'samples':>10} {'val_loss':>9} {'rt_rmse':>9} "
        f"{'E_model':>9} {'E_floor':>9} {'E_gauss':>9} {'closed':>7}"
    )
    print(header)
    for name in args.cases:
        row, arr, flow = run_case(name, CASES[name], args)
        if flows_dir is not None:
            Path(flows_dir).mkdir(parents=True, exist_ok=True)
            nif.save_flow(flow, Path(flows_dir) / name, overwrite=True)
            row["flow_dir"] = os.path.relpath(Path(flows_dir) / name, RESULTS.parent.parent)
        rows.append(row)
        plot_case(row, arr, RESULTS / f"{stem}_{name}.png")
        print(
            f"{name:<11} {row['train_s']:8.1f} {row['samples_seen']:10.3g} "
            f"{row['val_loss'] or float('nan'):9.4f} {row['roundtrip_rmse']:9.2e} "
            f"{row['energy_model']:9.2e} {row['energy_floor']:9.2e} {row['energy_gauss']:9.2e} "
            f"{100 * row['gap_closed']:6.1f}%",
            flush=True,
        )
    out = dict(
        rows=rows,
        args=vars(args),
        version=nif.__version__,
        jax=jax.__version__,
        devices=[str(d) for d in jax.devices()],
        machine=platform.platform(),
        processor=platform.processor(),
    )
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
