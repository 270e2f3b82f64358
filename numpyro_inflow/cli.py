"""The ``inflow`` command: train, inspect and use inflationary flows from a shell.

Subcommands ``train``, ``encode``, ``decode``, ``sample``, ``info``, ``demo`` and ``sbc``
(``inflow SUBCOMMAND --help`` for each; ``docs/cli.md``). Bad input (a missing file, a
wrong dimension, an existing output without ``--overwrite``) prints one line
``inflow SUBCOMMAND: error: ...`` on stderr and exits with status 1; a malformed command
line exits with status 2.
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


class _Formatter(argparse.HelpFormatter):
    """Wraps descriptions to the terminal but keeps the example epilogs as written."""

    def _fill_text(self, text, width, indent):
        if text.startswith("example"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------- helpers
# Integer options and their least value, checked for every subcommand that has them.
_LEAST = dict(steps=1, batch_size=1, num_samples=1, simulations=1, warmup=1, samples=1, chains=1)
_LEAST["seed"] = 0


def _check_counts(a) -> None:
    for name, least in _LEAST.items():
        value = getattr(a, name, None)
        if value is not None and value < least:
            kind = "a positive" if least else "a non-negative"
            raise ValueError(f"--{name.replace('_', '-')}: expected {kind} integer; got {value}")


def _check_out(out: str, overwrite: bool, suffix: str | None = None) -> Path:
    """``--out``: a new (or with ``--overwrite`` existing) file ending in ``suffix``, or a
    directory when ``suffix`` is ``None``, in an existing parent directory."""
    path = Path(out)
    if suffix and path.suffix.lower() != suffix:
        raise ValueError(f"--out: expected a path ending in {suffix}; got {out!r}")
    if not path.parent.is_dir():
        raise ValueError(f"--out: expected an existing parent directory; got {out!r}")
    if path.exists() and path.is_dir() == bool(suffix):
        got = "a file path; got the directory" if suffix else "a directory path; got the file"
        raise ValueError(f"--out: expected {got} {out!r}")
    if path.exists() and not overwrite:
        raise ValueError(f"--out: {out!r} exists; pass --overwrite to replace it")
    return path


def _write_npy(path: Path, array) -> None:
    import numpy as np

    with atomic_file(path, overwrite=True, name="--out") as tmp, tmp.open("wb") as f:
        np.save(f, np.asarray(array), allow_pickle=False)


# --------------------------------------------------------------------------- subcommands
def _cmd_train(a) -> int:
    from . import datasets
    from .persistence import save_flow
    from .train import fit

    _check_out(a.out, a.overwrite)
    x = datasets.load(a.data, n=a.num_points, seed=a.seed, key=a.key)
    budget = {k: v for k in ("steps", "batch_size") if (v := getattr(a, k)) is not None}
    flow = fit(x, keep=a.keep, seed=a.seed, progress=not a.quiet, **budget)
    metadata = dict(created_by="inflow train", data=a.data, data_shape=list(x.shape))
    metadata.update(num_points=a.num_points, npz_key=a.key, keep=a.keep, steps=a.steps)
    metadata.update(batch_size=a.batch_size, seed=a.seed)
    save_flow(flow, a.out, overwrite=a.overwrite, metadata={"training": metadata})
    if not a.quiet:
        print(f"saved flow ({x.shape[1]}-D data, latent dimension {flow.latent_dim}) to {a.out}")
    return 0


def _cmd_map(a) -> int:
    from .datasets import load_file
    from .persistence import load_flow

    out = _check_out(a.out, a.overwrite, ".npy")
    flow = load_flow(a.flow)
    if a.reduced and not flow.schedule.is_reducing:
        raise ValueError(
            "--reduced: expected a PR-reducing flow (saved with keep < D); got a "
            "PR-preserving one, whose latent is already full"
        )
    fn, dim, what = {  # the map, and the columns and kind of its input
        ("encode", False): (flow.encode, flow.dim, "data points"),
        ("encode", True): (flow.to_latent, flow.dim, "data points"),
        ("decode", False): (flow.decode, flow.dim, "latents"),
        ("decode", True): (flow.from_latent, flow.latent_dim, "reduced latents"),
    }[a.command, a.reduced]
    x = load_file(a.input, key=a.key)
    if x.shape[1] != dim:
        raise ValueError(f"{a.input}: expected {what} with {dim} columns; got shape {x.shape}")
    _write_npy(out, fn(x))
    return 0


def _cmd_sample(a) -> int:
    import jax

    from .persistence import load_flow

    out = _check_out(a.out, a.overwrite, ".npy")
    flow = load_flow(a.flow)
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
    s, f, sc, summ = cfg["schedule"], cfg["flow"], cfg["score"], cfg.get("summary", {})
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
    lines += [f"metadata:    {k} = {json.dumps(v)}" for k, v in (cfg.get("metadata") or {}).items()]
    print("\n".join(lines))
    return 0


def _cmd_demo(args: list[str]) -> int:
    try:
        from .demo import main as demo_main
    except ImportError as e:
        print(f"inflow demo: unavailable in this installation ({e})", file=sys.stderr)
        return 1
    try:
        return int(demo_main(args) or 0)
    except SystemExit as e:  # the demo's own --help or usage error
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


def _cmd_sbc(a) -> int:
    import jax
    import jax.numpy as jnp
    from numpyro.infer import NUTS

    from .calibration import sbc
    from .kernels import MALA
    from .observations import LinearGaussianObservation, inverse_problem
    from .persistence import load_flow

    out = _check_out(a.out, a.overwrite, ".json") if a.out else None
    if not a.noise > 0:
        raise ValueError(f"--noise: expected a positive number; got {a.noise}")
    flow = load_flow(a.flow)
    observation = LinearGaussianObservation(
        jnp.eye(flow.dim, dtype=flow.dtype), a.noise, "identity"
    )
    result = sbc(
        inverse_problem(flow, observation),
        jax.random.key(a.seed),
        observed="y",
        num_simulations=a.simulations,
        kernel={"nuts": NUTS, "mala": MALA}[a.kernel],
        num_warmup=a.warmup,
        num_samples=a.samples,
        num_chains=a.chains,
        batch_size=min(a.batch_size, a.simulations),
        alpha=a.alpha,
        progress_bar=not a.quiet,
    )
    for q in result.quantities:
        print(f"{q}: adjusted p = {result.adjusted[q]:.3g}")
    verdict = f"no miscalibration detected at alpha={result.alpha}"
    if result.flagged:
        verdict = f"miscalibrated at alpha={result.alpha}: {', '.join(result.flagged)}"
    print(f"SBC ({result.num_simulations} simulations, {a.kernel}): {verdict}")
    if out is not None:
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
        with atomic_file(out, overwrite=True, name="--out") as tmp:
            tmp.write_text(json.dumps(report, indent=2))
    return 0


# --------------------------------------------------------------------------- the parser
# An argument is (flags separated by "/", help) or (flags, help, add_argument options).
_FLAG = {"action": "store_true"}
_FLOW = ("flow", "a saved flow", {"metavar": "DIR"})
_QUIET = ("--quiet", "no progress bar", _FLAG)


def _int(metavar: str | None, default=None, **kwargs) -> dict:
    return dict(type=int, default=default, metavar=metavar, **kwargs)


def _out(metavar: str, help: str, required: bool = True) -> tuple:
    """``--out`` and its ``--overwrite``."""
    out = ("--out", help, {"required": required, "metavar": metavar})
    return out, ("--overwrite", f"replace an existing {metavar}", _FLAG)


def _map_command(name: str, what: str, src: str, dst: str, latent: str) -> tuple:
    return (
        _cmd_map,
        what,
        f"{what[0].upper()}{what[1:]}: read {src} (N, D) from IN and write the {dst} (N, D) "
        "to OUT.npy.",
        f"example:\n  inflow {name} moons-flow in.npy --out out.npy",
        _FLOW,
        ("input", f"{src}: .npy, .npz or .csv, one per row", {"metavar": "IN"}),
        *_out("OUT.npy", f"where to write {dst}"),
        ("--reduced", f"use the reduced latent (N, k) of a PR-reducing flow ({latent})", _FLAG),
        ("--key", "array name inside an .npz input"),
    )


# name -> (function, help, description, epilog, *arguments)
_SUBCOMMANDS = {
    "train": (
        _cmd_train,
        "train a flow on a data set or file and save it",
        "Fit an inflationary flow to DATA (nif.fit) and save it to DIR.",
        "examples:\n  inflow train moons --steps 2000 --out moons-flow\n"
        "  inflow train data.csv --keep 1 --out my-flow --overwrite",
        (
            "data",
            "a built-in data set (circles, moons, sine, s_curve, swirl, digits) or a "
            ".npy/.npz/.csv file with one point per row",
            {"metavar": "DATA"},
        ),
        *_out("DIR", "directory to save the flow to"),
        ("--keep", "PR-reducing: keep K principal directions (default: PR-preserving)", _int("K")),
        ("--steps", "training steps", _int("N")),
        ("--batch-size", "batch size", _int("B")),
        ("--seed", "seed of the training run and data draw (default 0)", _int(None, 0)),
        (
            "-n/--num-points",
            "points to draw (built-in sets, default 2000) or to subsample (files)",
            _int("N"),
        ),
        ("--key", "array name inside an .npz file"),
        _QUIET,
    ),
    "encode": _map_command(
        "encode", "map data points to the latent space", "data points", "latents", "to_latent"
    ),
    "decode": _map_command(
        "decode", "map latent points back to data space", "latents", "data points", "from_latent"
    ),
    "sample": (
        _cmd_sample,
        "draw samples from a saved flow",
        "Draw N samples from the flow's base distribution, decoded to data space.",
        "example:\n  inflow sample moons-flow -n 1000 --seed 1 --out samples.npy",
        _FLOW,
        ("-n/--num-samples", "samples", _int("N", required=True)),
        ("--seed", "PRNG seed (default 0)", _int(None, 0)),
        *_out("OUT.npy", "where to write (N, D)"),
    ),
    "info": (
        _cmd_info,
        "print a summary of a saved flow",
        "Print the configuration of a saved flow (no arrays are loaded).",
        "example:\n  inflow info moons-flow",
        _FLOW,
        ("--json", "print the full config.json instead", _FLAG),
    ),
    "demo": (
        _cmd_demo,
        "run the end-to-end demo (python -m numpyro_inflow.demo)",
        "Run the end-to-end demo: inpainting a held-out digit with the shipped "
        "digits prior and NUTS, plus a calibration check; with --oracle the exact "
        "Gaussian-mixture flow demo. Arguments after 'demo' go to the demo "
        "(see 'inflow demo --help' and 'inflow demo --oracle --help').",
        "examples:\n  inflow demo --out inflow-demo --quiet\n  inflow demo --quick\n"
        "  inflow demo --oracle",
        ("args", "arguments for the demo", {"nargs": argparse.REMAINDER}),
    ),
    "sbc": (
        _cmd_sbc,
        "simulation-based calibration of posterior sampling with a saved flow prior",
        "Simulation-based calibration (nif.sbc) of the denoising problem "
        "y = x + N(0, noise^2 I) with the saved flow as the prior on x, sampled in its "
        "latent space: prints the Holm-adjusted p-value of each latent coordinate and a "
        "verdict. Uniform ranks (large p-values) mean calibrated posteriors.",
        "example:\n  inflow sbc moons-flow --simulations 100 --kernel mala --out sbc.json",
        _FLOW,
        ("--noise", "observation noise sd (default 0.3)", {"type": float, "default": 0.3}),
        ("--simulations", "default 100", _int("N", 100)),
        ("--warmup", "warm-up per chain", _int("W", 300)),
        ("--samples", "draws per chain", _int("S", 300)),
        ("--chains", "chains per simulation", _int("C", 2)),
        ("--kernel", "MCMC kernel", {"choices": ("nuts", "mala"), "default": "nuts"}),
        ("--batch-size", "simulations per vmap", _int("B", 16)),
        ("--alpha", "family-wise level (default 0.05)", {"type": float, "default": 0.05}),
        ("--seed", "PRNG seed (default 0)", _int(None, 0)),
        *_out("REPORT.json", "also write a JSON report", required=False),
        _QUIET,
    ),
}


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
    for name, (run, help, description, epilog, *arguments) in _SUBCOMMANDS.items():
        s = sub.add_parser(
            name,
            help=help,
            description=description,
            epilog=epilog,
            formatter_class=_Formatter,
            add_help=name != "demo",  # the demo's arguments are forwarded untouched
        )
        s.set_defaults(run=run)
        for flags, text, *options in arguments:
            s.add_argument(*flags.split("/"), help=text, **(options[0] if options else {}))
    return p


def main(argv=None) -> int:
    """Run the ``inflow`` command.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 for bad input or a failed run (one line on
        stderr), 2 for a malformed command line.

    Examples:
        >>> main(["info", "no-such-flow"])
        1
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "demo":
        return _cmd_demo(argv[1:])
    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version or a malformed command line (2)
        return int(e.code or 0)
    try:
        _check_counts(args)
        return args.run(args)
    except KeyboardInterrupt:
        print(f"{_PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"{_PROG} {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
