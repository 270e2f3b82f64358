"""The ``inflow`` command: train, inspect and use inflationary flows from a shell.

Subcommands (``inflow SUBCOMMAND --help`` for each)::

    inflow train DATA --out DIR [--keep K] [--steps N] [--batch-size B] [--seed S]
    inflow encode DIR IN --out OUT.npy [--reduced] [--overwrite]
    inflow decode DIR IN --out OUT.npy [--reduced] [--overwrite]
    inflow sample DIR -n N [--seed S] --out OUT.npy [--overwrite]
    inflow info DIR [--json]
    inflow demo [DEMO-ARGS ...]
    inflow sbc DIR [--simulations N] [--kernel nuts|mala] [--out REPORT.json]

Bad input (a missing file, a wrong dimension, an existing output without
``--overwrite``) prints one line ``inflow SUBCOMMAND: error: ...`` on stderr and exits
with status 1; a malformed command line exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._io import atomic_file
from ._version import __version__

__all__ = ["main"]

_PROG = "inflow"


class _UsageError(Exception):
    """A malformed command line (argparse's complaint, kept to one line)."""


class _Formatter(argparse.HelpFormatter):
    """Wraps descriptions to the terminal but keeps the example epilogs as written."""

    def _fill_text(self, text, width, indent):
        if text.startswith("example"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block + exit
        raise _UsageError(f"{self.prog}: error: {message} (see '{self.prog} --help')")


def _add(sub, name: str, help: str, description: str, epilog: str, **kwargs):
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=_Formatter,
        **kwargs,
    )


def _add_train(sub) -> None:
    t = _add(
        sub,
        "train",
        "train a flow on a data set or file and save it",
        "Fit an inflationary flow to DATA (nif.fit) and save it to DIR.",
        "examples:\n  inflow train moons --steps 2000 --out moons-flow\n"
        "  inflow train data.csv --keep 1 --out my-flow --overwrite",
    )
    t.add_argument(
        "data",
        metavar="DATA",
        help="a built-in data set (circles, moons, sine, s_curve, swirl, digits) or a "
        ".npy/.npz/.csv file with one point per row",
    )
    t.add_argument("--out", required=True, metavar="DIR", help="directory to save the flow to")
    t.add_argument(
        "--keep",
        type=int,
        default=None,
        metavar="K",
        help="PR-reducing: keep the top K principal directions (default: PR-preserving)",
    )
    t.add_argument("--steps", type=int, default=None, metavar="N", help="training steps")
    t.add_argument("--batch-size", type=int, default=None, metavar="B", help="batch size")
    t.add_argument(
        "--seed", type=int, default=0, help="seed of the training run and data draw (default 0)"
    )
    t.add_argument(
        "-n",
        "--num-points",
        type=int,
        default=None,
        metavar="N",
        help="points to draw (built-in sets, default 2000) or to subsample (files)",
    )
    t.add_argument("--key", default=None, help="array name inside an .npz file")
    t.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_map_and_sample(sub) -> None:
    for name, what, src, dst in (
        ("encode", "map data points to the latent space", "data points", "latents"),
        ("decode", "map latent points back to data space", "latents", "data points"),
    ):
        e = _add(
            sub,
            name,
            what,
            f"{what[0].upper()}{what[1:]}: read {src} (N, D) from IN and write "
            f"the {dst} (N, D) to OUT.npy.",
            f"example:\n  inflow {name} moons-flow in.npy --out out.npy",
        )
        e.add_argument("flow", metavar="DIR", help="a saved flow")
        e.add_argument("input", metavar="IN", help=f"{src}: .npy, .npz or .csv, one per row")
        e.add_argument("--out", required=True, metavar="OUT.npy", help=f"where to write {dst}")
        e.add_argument(
            "--reduced",
            action="store_true",
            help="use the reduced latent (N, k) of a PR-reducing flow "
            + ("(to_latent)" if name == "encode" else "(from_latent)"),
        )
        e.add_argument("--key", default=None, help="array name inside an .npz input")
        e.add_argument("--overwrite", action="store_true", help="replace an existing OUT.npy")
    s = _add(
        sub,
        "sample",
        "draw samples from a saved flow",
        "Draw N samples from the flow's base distribution, decoded to data space.",
        "example:\n  inflow sample moons-flow -n 1000 --seed 1 --out samples.npy",
    )
    s.add_argument("flow", metavar="DIR", help="a saved flow")
    s.add_argument("-n", "--num-samples", type=int, required=True, metavar="N", help="samples")
    s.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    s.add_argument("--out", required=True, metavar="OUT.npy", help="where to write (N, D)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing OUT.npy")


def _add_info_and_demo(sub) -> None:
    i = _add(
        sub,
        "info",
        "print a summary of a saved flow",
        "Print the configuration of a saved flow (no arrays are loaded).",
        "example:\n  inflow info moons-flow",
    )
    i.add_argument("flow", metavar="DIR", help="a saved flow")
    i.add_argument("--json", action="store_true", help="print the full config.json instead")
    d = _add(
        sub,
        "demo",
        "run the end-to-end demo (python -m numpyro_inflow.demo)",
        "Run the end-to-end demo: inpainting a held-out digit with the shipped "
        "digits prior and NUTS, plus a calibration check; with --oracle the exact "
        "Gaussian-mixture flow demo. Arguments after 'demo' go to the demo "
        "(see 'inflow demo --help' and 'inflow demo --oracle --help').",
        "examples:\n  inflow demo --out inflow-demo --quiet\n  inflow demo --quick\n"
        "  inflow demo --oracle",
        add_help=False,
    )
    d.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the demo")


def _add_sbc(sub) -> None:
    c = _add(
        sub,
        "sbc",
        "simulation-based calibration of posterior sampling with a saved flow prior",
        "Simulation-based calibration (nif.sbc) of the denoising problem "
        "y = x + N(0, noise^2 I) with the saved flow as the prior on x, sampled in its "
        "latent space: prints the Holm-adjusted p-value of each latent coordinate and a "
        "verdict. Uniform ranks (large p-values) mean calibrated posteriors.",
        "example:\n  inflow sbc moons-flow --simulations 100 --kernel mala --out sbc.json",
    )
    c.add_argument("flow", metavar="DIR", help="a saved flow")
    c.add_argument("--noise", type=float, default=0.3, help="observation noise sd (default 0.3)")
    c.add_argument("--simulations", type=int, default=100, metavar="N", help="default 100")
    c.add_argument("--warmup", type=int, default=300, metavar="W", help="warm-up per chain")
    c.add_argument("--samples", type=int, default=300, metavar="S", help="draws per chain")
    c.add_argument("--chains", type=int, default=2, metavar="C", help="chains per simulation")
    c.add_argument("--kernel", choices=("nuts", "mala"), default="nuts", help="MCMC kernel")
    c.add_argument("--batch-size", type=int, default=16, metavar="B", help="simulations per vmap")
    c.add_argument("--alpha", type=float, default=0.05, help="family-wise level (default 0.05)")
    c.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    c.add_argument("--out", default=None, metavar="REPORT.json", help="also write a JSON report")
    c.add_argument("--overwrite", action="store_true", help="replace an existing REPORT.json")
    c.add_argument("--quiet", action="store_true", help="no progress bar")


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=_PROG,
        description="Inflationary flows (de Albuquerque & Pearson, NeurIPS 2024) from the "
        "command line: train a flow on data, map points to and from its latent space, "
        "draw samples, inspect a saved flow.",
        epilog="Run 'inflow SUBCOMMAND --help' for the options of each subcommand.",
        formatter_class=_Formatter,
    )
    p.add_argument("--version", action="version", version=f"numpyro_inflow {__version__}")
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)
    sub.required = True
    for add in (_add_train, _add_map_and_sample, _add_info_and_demo, _add_sbc):
        add(sub)
    return p


# --------------------------------------------------------------------------- helpers
def _check_out_file(out: str, overwrite: bool) -> Path:
    path = Path(out)
    if path.suffix.lower() != ".npy":
        raise ValueError(f"--out: expected a path ending in .npy; got {out!r}")
    if not path.parent.is_dir():
        raise ValueError(f"--out: expected an existing parent directory; got {out!r}")
    if path.exists() and not overwrite:
        raise ValueError(f"--out: {out!r} exists; pass --overwrite to replace it")
    if path.is_dir():
        raise ValueError(f"--out: expected a file path; got the directory {out!r}")
    return path


def _write_npy(path: Path, array) -> None:
    import numpy as np

    with atomic_file(path, overwrite=True, name="--out") as tmp, tmp.open("wb") as f:
        np.save(f, np.asarray(array), allow_pickle=False)


def _check_out_dir(out: str, overwrite: bool) -> None:
    path = Path(out)
    if not path.parent.is_dir():
        raise ValueError(f"--out: expected an existing parent directory; got {out!r}")
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out: expected a directory path; got the existing file {out!r}")
    if path.exists() and not overwrite:
        raise ValueError(f"--out: {out!r} exists; pass --overwrite to replace it")


def _positive(value: int | None, name: str) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name}: expected a positive integer; got {value}")


def _load_flow(path: str):
    from .persistence import load_flow

    return load_flow(path)


def _load_points(path: str, dim: int, key: str | None, what: str):
    from .datasets import load_file

    x = load_file(path, key=key)
    if x.shape[1] != dim:
        raise ValueError(f"{path}: expected {what} with {dim} columns; got shape {x.shape}")
    return x


# --------------------------------------------------------------------------- subcommands
def _cmd_train(a) -> int:
    from . import datasets
    from .persistence import save_flow

    _check_out_dir(a.out, a.overwrite)
    _positive(a.steps, "--steps")
    _positive(a.batch_size, "--batch-size")
    if a.seed < 0:
        raise ValueError(f"--seed: expected a non-negative integer; got {a.seed}")
    from .train import fit

    x = datasets.load(a.data, n=a.num_points, seed=a.seed, key=a.key)
    budget = {"steps": a.steps, "batch_size": a.batch_size}
    budget = {k: v for k, v in budget.items() if v is not None}
    flow = fit(x, keep=a.keep, seed=a.seed, progress=not a.quiet, **budget)
    metadata = {
        "created_by": "inflow train",
        "data": a.data,
        "data_shape": list(x.shape),
        "num_points": a.num_points,
        "npz_key": a.key,
        "keep": a.keep,
        "steps": a.steps,
        "batch_size": a.batch_size,
        "seed": a.seed,
    }
    save_flow(flow, a.out, overwrite=a.overwrite, metadata={"training": metadata})
    if not a.quiet:
        print(f"saved flow ({x.shape[1]}-D data, latent dimension {flow.latent_dim}) to {a.out}")
    return 0


def _cmd_map(a) -> int:
    out = _check_out_file(a.out, a.overwrite)
    flow = _load_flow(a.flow)
    if a.reduced and not flow.schedule.is_reducing:
        raise ValueError(
            "--reduced: expected a PR-reducing flow (saved with keep < D); got a "
            "PR-preserving one, whose latent is already full"
        )
    if a.command == "encode":
        x = _load_points(a.input, flow.dim, a.key, "data points")
        y = flow.to_latent(x) if a.reduced else flow.encode(x)
    else:
        dim = flow.latent_dim if a.reduced else flow.dim
        z = _load_points(a.input, dim, a.key, "reduced latents" if a.reduced else "latents")
        y = flow.from_latent(z) if a.reduced else flow.decode(z)
    _write_npy(out, y)
    return 0


def _cmd_sample(a) -> int:
    import jax

    out = _check_out_file(a.out, a.overwrite)
    _positive(a.num_samples, "-n/--num-samples")
    if a.seed < 0:
        raise ValueError(f"--seed: expected a non-negative integer; got {a.seed}")
    flow = _load_flow(a.flow)
    _write_npy(out, flow.sample(jax.random.key(a.seed), (a.num_samples,)))
    return 0


def _fmt_obj(rec: dict) -> str:
    options = ", ".join(f"{k}={v}" for k, v in rec.items() if k != "name")
    return f"{rec.get('name', '?')}({options})"


def _cmd_info(a) -> int:
    from .persistence import read_config

    cfg = read_config(a.flow)
    if a.json:
        print(json.dumps(cfg, indent=2))
        return 0
    s, f, sc = cfg["schedule"], cfg["flow"], cfg["score"]
    summ = cfg.get("summary", {})
    kind = "PR-reducing" if s.get("keep") != s.get("dim") else "PR-preserving"
    lines = [
        f"flow:        {a.flow}",
        f"format:      {cfg['format']} v{cfg['format_version']} "
        f"(written by numpyro_inflow {cfg.get('package_version', '?')})",
        f"data:        dimension {s['dim']}, {s['dtype']}",
        f"latent:      {kind}, latent dimension {s['keep']}",
        f"schedule:    gamma0={s['gamma0']} rho={s['rho']} A0={s['A0']} "
        f"t_end={s['t_end']:.6g} proportional={s['proportional']}",
    ]
    if "eigenvalues" in summ:
        eig = ", ".join(f"{v:.4g}" for v in summ["eigenvalues"][:8])
        more = ", ..." if len(summ["eigenvalues"]) > 8 else ""
        lines.append(f"eigenvalues: {eig}{more}")
    if "participation_ratio" in summ:
        lines.append(f"PR:          {summ['participation_ratio']:.4g}")
    cfg_items = ", ".join(f"{k}={v}" for k, v in sc.get("config", {}).items())
    lines += [
        f"score:       {sc['class']}({cfg_items})",
        f"solver:      {_fmt_obj(f['solver'])}, dt0={f['dt0']}, max_steps={f['max_steps']}",
        f"controller:  {_fmt_obj(f['stepsize_controller'])}",
        f"adjoint:     {_fmt_obj(f['adjoint'])}",
        f"log-density: trace={f['trace']} num_probes={f['num_probes']} throw={f['throw']}",
    ]
    meta = cfg.get("metadata") or {}
    for k, v in meta.items():
        lines.append(f"metadata:    {k} = {json.dumps(v)}")
    print("\n".join(lines))
    return 0


def _run_forwarded(fn, args: list[str]) -> int:
    try:
        return int(fn(args) or 0)
    except SystemExit as e:  # the forwarded command's own --help or usage error
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


def _cmd_demo(args: list[str]) -> int:
    try:
        from .demo import main as demo_main
    except ImportError as e:
        print(f"inflow demo: unavailable in this installation ({e})", file=sys.stderr)
        return 1
    return _run_forwarded(demo_main, args)


def _cmd_sbc(a) -> int:
    import jax
    import jax.numpy as jnp

    try:
        from .calibration import sbc
        from .observations import LinearGaussianObservation, inverse_problem
    except ImportError:
        raise ValueError(
            "sbc: not available yet (this version of numpyro_inflow has no calibration module)"
        ) from None
    out = Path(a.out) if a.out else None
    if out is not None:
        if out.suffix.lower() != ".json":
            raise ValueError(f"--out: expected a path ending in .json; got {a.out!r}")
        if not out.parent.is_dir():
            raise ValueError(f"--out: expected an existing parent directory; got {a.out!r}")
        if out.exists() and not a.overwrite:
            raise ValueError(f"--out: {a.out!r} exists; pass --overwrite to replace it")
    for value, name in (
        (a.simulations, "--simulations"),
        (a.warmup, "--warmup"),
        (a.samples, "--samples"),
        (a.chains, "--chains"),
    ):
        _positive(value, name)
    if not a.noise > 0:
        raise ValueError(f"--noise: expected a positive number; got {a.noise}")
    flow = _load_flow(a.flow)
    dtype = flow.schedule.eigenvalues.dtype
    observation = LinearGaussianObservation(jnp.eye(flow.dim, dtype=dtype), a.noise, "identity")
    model = inverse_problem(flow, observation)
    if a.kernel == "mala":
        from .kernels import MALA

        kernel = MALA
    else:
        from numpyro.infer import NUTS

        kernel = NUTS
    result = sbc(
        model,
        jax.random.key(a.seed),
        observed="y",
        num_simulations=a.simulations,
        kernel=kernel,
        num_warmup=a.warmup,
        num_samples=a.samples,
        num_chains=a.chains,
        batch_size=min(a.batch_size, a.simulations),
        alpha=a.alpha,
        progress_bar=not a.quiet,
    )
    report = {
        "flow": str(a.flow),
        "observation": f"y = x + N(0, {a.noise}^2 I)",
        "kernel": a.kernel,
        "num_simulations": result.num_simulations,
        "alpha": result.alpha,
        "test": result.test,
        "adjusted_pvalues": {q: float(result.adjusted[q]) for q in result.quantities},
        "flagged": list(result.flagged),
        "seconds": float(result.seconds),
    }
    for q in result.quantities:
        print(f"{q}: adjusted p = {result.adjusted[q]:.3g}")
    verdict = (
        f"miscalibrated at alpha={result.alpha}: {', '.join(result.flagged)}"
        if result.flagged
        else f"no miscalibration detected at alpha={result.alpha}"
    )
    print(f"SBC ({result.num_simulations} simulations, {a.kernel}): {verdict}")
    if out is not None:
        with atomic_file(out, overwrite=True, name="--out") as tmp:
            tmp.write_text(json.dumps(report, indent=2))
    return 0


_COMMANDS = {
    "train": _cmd_train,
    "encode": _cmd_map,
    "decode": _cmd_map,
    "sample": _cmd_sample,
    "info": _cmd_info,
    "sbc": _cmd_sbc,
}
# Subcommands whose arguments are handed over untouched (they have their own parsers).
_FORWARDED = {"demo": _cmd_demo}


def main(argv=None) -> int:
    """Run the ``inflow`` command.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 for bad input or a failed run (one line on
        stderr), 2 for a malformed command line.

    Example:
        >>> main(["info", "no-such-flow"])
        1
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _FORWARDED:
        return _FORWARDED[argv[0]](argv[1:])
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        print(str(e), file=sys.stderr)
        return 2
    except SystemExit as e:  # --help / --version
        return int(e.code or 0)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"{_PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"{_PROG} {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
