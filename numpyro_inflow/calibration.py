"""Simulation-based calibration (SBC) for any NumPyro model.

SBC (Talts et al. 2018, arXiv 1804.06788) draws $\\theta^\\star \\sim p(\\theta)$ and
$y \\sim p(y | \\theta^\\star)$, fits $p(\\theta | y)$ with the sampler under test and
ranks $\\theta^\\star$ among nearly independent posterior draws: uniform ranks for an exact
sampler; a U-shaped histogram means over-confidence, a hump under-confidence, a slope bias.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
import warnings
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from numpyro import handlers
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import NUTS, Predictive
from scipy import stats

from ._checks import check_positive_int

__all__ = ["SBCResult", "holm", "sbc"]


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment of p-values (controls the family-wise error rate).

    Args:
        pvalues: array of raw p-values.

    Returns:
        Adjusted p-values, same shape; reject at level ``alpha`` where ``adjusted < alpha``.
    """
    p = np.asarray(pvalues, float)
    flat = p.ravel()
    order = np.argsort(flat)
    out = np.empty(flat.size)
    out[order] = np.maximum.accumulate(np.minimum(1.0, np.arange(flat.size, 0, -1) * flat[order]))
    return out.reshape(p.shape)


def _flatten_site(name: str, arr: np.ndarray, lead: int) -> dict[str, np.ndarray]:
    """Split the event part of ``arr`` (after ``lead`` batch axes) into scalar quantities."""
    event = arr.shape[lead:]
    names = [f"{name}[{','.join(map(str, i))}]" for i in np.ndindex(*event)] if event else [name]
    flat = arr.reshape((*arr.shape[:lead], -1))
    return {n: flat[..., j] for j, n in enumerate(names)}


def _latent_sites(model, model_args, model_kwargs, observed) -> list[str]:
    tr = handlers.trace(handlers.seed(model, 0)).get_trace(*model_args, **model_kwargs)
    missing = [o for o in observed if o not in tr]
    if missing:
        raise ValueError(
            f"observed: expected names of sample sites of the model; got {missing} "
            f"(sites: {sorted(tr)})"
        )
    return [
        name
        for name, site in tr.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and name not in observed
        and not site.get("infer", {}).get("is_auxiliary", False)
    ]


@dataclasses.dataclass
class SBCResult:
    """Outcome of `sbc`.

    Attributes:
        quantities: names of the scalar quantities checked (``"theta[0]"``, derived names).
        ranks: ``{quantity: (num_simulations,)}`` rank of the truth among the thinned draws.
        num_draws: ``(num_simulations,)`` number of thinned draws per simulation.
        pit: ``{quantity: (num_simulations,)}`` randomised PIT ``(rank + U) / (num_draws + 1)``.
        truths: ``{quantity: (num_simulations,)}`` the simulated true values.
        pvalues: ``{quantity: p}`` raw p-values of the chosen uniformity test.
        pvalues_ks, pvalues_chi2: raw p-values of both tests, for reference.
        adjusted: ``{quantity: p}`` Holm-adjusted p-values of the chosen test.
        alpha: family-wise significance level.
        test: ``"ks"`` or ``"chi2"``.
        bins: number of bins of the chi-square test and rank histograms.
        min_ess: ``(num_simulations,)`` smallest bulk ESS over quantities per simulation.
        seconds: wall time of the fits (compilation included).
    """

    quantities: list[str]
    ranks: dict[str, np.ndarray]
    num_draws: np.ndarray
    pit: dict[str, np.ndarray]
    truths: dict[str, np.ndarray]
    pvalues: dict[str, float]
    pvalues_ks: dict[str, float]
    pvalues_chi2: dict[str, float]
    adjusted: dict[str, float]
    alpha: float
    test: str
    bins: int
    min_ess: np.ndarray
    seconds: float

    @property
    def num_simulations(self) -> int:
        """Number of simulations."""
        return int(self.num_draws.shape[0])

    @property
    def flagged(self) -> list[str]:
        """Quantities whose adjusted p-value is below ``alpha``."""
        return [q for q in self.quantities if self.adjusted[q] < self.alpha]

    @property
    def passed(self) -> bool:
        """True when no quantity is flagged (family-wise level ``alpha``)."""
        return not self.flagged

    @property
    def verdict(self) -> str:
        """``"PASS"`` or ``"FAIL: q1, q2"``."""
        return "PASS" if self.passed else "FAIL: " + ", ".join(self.flagged)

    def __repr__(self) -> str:
        return (
            f"SBCResult({self.num_simulations} simulations, {len(self.quantities)} quantities, "
            f"{self.test} + Holm at alpha={self.alpha}: {self.verdict})"
        )

    def summary(self):
        """One row per quantity: p-values, adjusted p-value, flag (a pandas DataFrame)."""
        import pandas as pd

        columns = {
            "ks_p": self.pvalues_ks,
            "chi2_p": self.pvalues_chi2,
            "adjusted_p": self.adjusted,
        }
        table = pd.DataFrame(columns).loc[self.quantities].rename_axis("quantity")
        return table.assign(flagged=table["adjusted_p"] < self.alpha)

    def to_datatree(self):
        """ArviZ DataTree with the PIT values in group ``prior_sbc`` (and truths in ``prior``).

        Each quantity has dims ``(chain=1, draw=num_simulations)``, as `plot_ecdf_pit` reads.
        """
        from arviz_base import from_dict

        groups = {"prior_sbc": self.pit, "prior": self.truths}
        return from_dict(
            {g: {q: np.asarray(d[q])[None, :] for q in self.quantities} for g, d in groups.items()}
        )

    def plot_ranks(self, bins: int | None = None, band: float = 0.99):
        """Rank histograms with a pointwise binomial band per bin.

        Args:
            bins: number of bins (default: the result's ``bins``).
            band: probability of the grey band that each bin count falls in under uniformity.

        Returns:
            A matplotlib Figure, one panel per quantity.
        """
        import matplotlib.pyplot as plt

        bins = self.bins if bins is None else int(bins)
        n, q = self.num_simulations, len(self.quantities)
        cols = min(q, 4)
        rows = math.ceil(q / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
        lo, hi = stats.binom.ppf([(1 - band) / 2, (1 + band) / 2], n, 1.0 / bins)
        for ax, name in zip(axes.ravel(), self.quantities, strict=False):
            ax.axhspan(lo, hi, color="0.85", label=f"{band:.0%} band")
            ax.axhline(n / bins, color="0.5", lw=0.8)
            ax.hist(self.pit[name], bins=np.linspace(0, 1, bins + 1), color="C0", alpha=0.8)
            flag = " (flagged)" if name in self.flagged else ""
            ax.set_title(f"{name}{flag}", fontsize=9)
            ax.set_xlabel("normalised rank")
        for ax in axes.ravel()[q:]:
            ax.set_visible(False)
        fig.suptitle(f"SBC rank histograms: {self.verdict}", fontsize=10)
        fig.tight_layout()
        return fig

    def plot_ecdf(self, var_names=None, method: str = "pot_c", **kwargs):
        """PIT-ECDF difference plots with ArviZ's uniformity test (`arviz_plots.plot_ecdf_pit`).

        ``"pot_c"`` marks the points that drive a departure from uniformity and prints its
        p-value; ``"envelope"`` draws the simultaneous band of Säilynoja et al. 2022.

        Args:
            var_names: quantities to plot (default all).
            method: ArviZ uniformity method (``"pot_c"``, ``"prit_c"``, ``"piet_c"``,
                ``"envelope"``).
            **kwargs: passed to `arviz_plots.plot_ecdf_pit`.

        Returns:
            An arviz-plots ``PlotCollection``.
        """
        from arviz_plots import plot_ecdf_pit

        kwargs.setdefault("backend", "matplotlib")
        return plot_ecdf_pit(self.to_datatree(), var_names=var_names, method=method, **kwargs)


def _build_fit(
    model, kernel, model_args, model_kwargs, num_warmup, num_samples, num_chains, derived
):
    """The per-simulation sampler: (key, data dict) -> dict of (chains, draws, ...) arrays."""

    def one_chain(key, data):
        kern = kernel(handlers.condition(model, data))
        state = kern.init(jax.random.split(key)[0], num_warmup, None, model_args, model_kwargs)

        def step(s, _=None):
            s = kern.sample(s, model_args, model_kwargs)
            return s, getattr(s, kern.sample_field)

        state = jax.lax.fori_loop(0, num_warmup, lambda _, s: step(s)[0], state)
        _, zs = jax.lax.scan(step, state, None, length=num_samples)
        values = jax.vmap(kern.postprocess_fn(model_args, model_kwargs))(zs)
        for name, fn in derived.items():
            values[name] = jax.vmap(fn)(values)
        return values

    def fit(key, data):
        return jax.vmap(one_chain, in_axes=(0, None))(jax.random.split(key, num_chains), data)

    return fit


def sbc(
    model,
    rng_key: jax.Array,
    *,
    observed: str | Sequence[str],
    num_simulations: int = 100,
    kernel: Callable | None = None,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    derived: Mapping[str, Callable] | None = None,
    fit_model=None,
    model_args: tuple = (),
    model_kwargs: Mapping | None = None,
    batch_size: int = 16,
    alpha: float = 0.05,
    test: str = "ks",
    bins: int | None = None,
    progress_bar: bool = True,
) -> SBCResult:
    """Simulation-based calibration of ``kernel`` on ``model``.

    ``model`` samples the latents and the ``observed`` sites, which each fit fixes with
    `numpyro.handlers.condition`, so any NumPyro model works unchanged. The $C$ chains of
    $N$ draws are pooled and thinned by $\\lceil C N / \\widehat{\\mathrm{ESS}}_{\\min} \\rceil$
    (NumPyro's bulk ESS) to nearly independent draws, whose ranks become randomised PIT
    values; each quantity gets a KS or chi-square test, with Holm's correction at ``alpha``.

    Args:
        model: a NumPyro model.
        rng_key: JAX PRNG key.
        observed: name(s) of the data sites.
        num_simulations: number of simulated data sets.
        kernel: a callable ``model -> MCMCKernel`` (default `numpyro.infer.NUTS`).
        num_warmup: warm-up iterations per chain.
        num_samples: post-warm-up iterations per chain.
        num_chains: chains per simulation.
        derived: ``{name: f}`` with ``f(values) -> array`` applied to one draw (a dict of
            constrained latents and deterministic sites) and to the truth.
        fit_model: the model fitted (default ``model``; one with the same latent sites).
        model_args: positional arguments of the model.
        model_kwargs: keyword arguments of the model.
        batch_size: simulations per vectorised call (``jax.vmap``, compiled once).
        alpha: family-wise significance level of the verdict.
        test: ``"ks"`` (Kolmogorov-Smirnov) or ``"chi2"`` (chi-square on ``bins`` bins).
        bins: number of bins (default ``max(5, min(20, num_simulations // 10))``).
        progress_bar: show a tqdm bar over simulations.

    Returns:
        An `SBCResult`.

    Raises:
        ValueError: for bad arguments or unknown observed sites.

    Examples:
        >>> import jax, numpyro, numpyro.distributions as dist
        >>> import numpyro_inflow as nif
        >>> def model():
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("y", dist.Normal(mu, 0.5).expand([3]).to_event(1))
        >>> res = nif.sbc(model, jax.random.key(0), observed="y", num_simulations=20,
        ...               num_warmup=100, num_samples=100, progress_bar=False)
        >>> res.quantities
        ['mu']
    """
    observed = (observed,) if isinstance(observed, str) else tuple(observed)
    model_kwargs = dict(model_kwargs or {})
    derived = dict(derived or {})
    kernel = NUTS if kernel is None else kernel
    _check_arguments(
        num_warmup, test, alpha, kernel, num_simulations, num_samples, num_chains, batch_size
    )
    bins = max(5, min(20, num_simulations // 10)) if bins is None else int(bins)

    latents = _latent_sites(model, model_args, model_kwargs, observed)
    key_prior, key_fit, key_jitter = jax.random.split(rng_key, 3)
    prior = Predictive(model, num_samples=num_simulations)(key_prior, *model_args, **model_kwargs)
    truths = {k: v for k, v in prior.items() if k not in observed}
    for name, fn in derived.items():
        truths[name] = jax.vmap(fn)(truths)
    fit_model = model if fit_model is None else fit_model
    fit = _build_fit(
        fit_model, kernel, model_args, model_kwargs, num_warmup, num_samples, num_chains, derived
    )
    data = {o: prior[o] for o in observed}
    draws, seconds = _run_fits(fit, key_fit, data, batch_size, progress_bar)
    q_draws, q_truth = {}, {}  # scalar quantities: (S, C, N) draws, (S,) truths
    for t in latents + list(derived):
        q_draws |= _flatten_site(t, draws[t], 3)
        q_truth |= _flatten_site(t, np.asarray(truths[t]), 1)
    return _result(q_draws, q_truth, key_jitter, bins=bins, test=test, alpha=alpha, seconds=seconds)


def _check_arguments(num_warmup, test, alpha, kernel, *positive) -> None:
    """Raise ``ValueError`` on the first bad argument of `sbc`."""
    names = ("num_simulations", "num_samples", "num_chains", "batch_size")
    for name, value in zip(names, positive, strict=True):
        check_positive_int(value, name)
    if not isinstance(num_warmup, numbers.Integral) or num_warmup < 0:
        raise ValueError(f"num_warmup: expected a non-negative integer; got {num_warmup!r}")
    if test not in ("ks", "chi2"):
        raise ValueError(f"test: expected 'ks' or 'chi2'; got {test!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a number in (0, 1); got {alpha!r}")
    if not callable(kernel):
        raise ValueError(f"kernel: expected a callable model -> MCMCKernel; got {kernel!r}")


def _run_fits(fit, key, data, batch_size, progress_bar):
    """Draws ``{site: (S, chains, draws, ...)}`` of ``fit`` in batches, and the wall time."""
    from tqdm.auto import tqdm

    num_simulations = len(next(iter(data.values())))
    fit = jax.jit(jax.vmap(fit))
    keys = jax.random.split(key, num_simulations)
    batches = []
    t0 = time.perf_counter()
    with tqdm(total=num_simulations, desc="SBC", disable=not progress_bar) as bar:
        for start in range(0, num_simulations, batch_size):
            idx = np.arange(start, start + batch_size) % num_simulations  # pad the last batch
            batches.append(jax.device_get(fit(keys[idx], {o: v[idx] for o, v in data.items()})))
            bar.update(min(batch_size, num_simulations - start))
    draws = jax.tree.map(lambda *b: np.concatenate(b)[:num_simulations], *batches)
    return draws, time.perf_counter() - t0


def _result(q_draws, q_truth, key_jitter, *, bins, test, alpha, seconds) -> SBCResult:
    """Thin, rank and test the scalar quantities ``{name: (S, C, N)}`` against ``{name: (S,)}``."""
    names = list(q_draws)
    draws = np.stack([q_draws[n] for n in names], axis=-1)  # (S, C, N, Q)
    truths = np.stack([q_truth[n] for n in names], axis=-1)  # (S, Q)
    num_simulations, num_chains, num_samples = draws.shape[:3]
    ess = np.stack([effective_sample_size(d.astype(np.float64)) for d in draws])
    min_ess = np.maximum(np.where(np.isfinite(ess), ess, 1.0).min(axis=1), 1.0)
    thin = np.maximum(1, np.ceil(num_chains * num_samples / min_ess).astype(int))
    kept = [d[:, ::k].reshape(-1, len(names)) for d, k in zip(draws, thin, strict=True)]
    num_draws = np.array([len(k) for k in kept])
    rank = np.stack([np.sum(k < t, axis=0) for k, t in zip(kept, truths, strict=True)])
    if np.median(num_draws) < 20:
        warnings.warn(
            f"sbc: the median number of nearly independent draws is {np.median(num_draws):.0f}; "
            "ranks are coarse, increase num_samples",
            stacklevel=3,
        )
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key_jitter)).ravel())
    ranks = {n: rank[:, j] for j, n in enumerate(names)}
    pit = {n: (r + rng.uniform(size=num_simulations)) / (num_draws + 1) for n, r in ranks.items()}
    edges = np.linspace(0, 1, bins + 1)
    p_ks = {n: float(stats.kstest(u, "uniform").pvalue) for n, u in pit.items()}
    p_chi2 = {n: float(stats.chisquare(np.histogram(u, edges)[0]).pvalue) for n, u in pit.items()}
    chosen = p_ks if test == "ks" else p_chi2
    return SBCResult(
        quantities=names,
        ranks=ranks,
        num_draws=num_draws,
        pit=pit,
        truths=q_truth,
        pvalues=chosen,
        pvalues_ks=p_ks,
        pvalues_chi2=p_chi2,
        adjusted=dict(zip(names, map(float, holm(list(chosen.values()))), strict=True)),
        alpha=float(alpha),
        test=test,
        bins=bins,
        min_ess=min_ess,
        seconds=seconds,
    )
