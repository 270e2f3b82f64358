"""Empirical coverage of posterior credible regions from samples and true values.

``samples`` ``(S, N, ...)`` hold ``N`` posterior draws for each of ``S`` simulated data
sets, ``truths`` ``(S, ...)`` the true values. `central_coverage` and `hdr_coverage` return
tables of empirical against nominal coverage with exact binomial tests (drawn by
`plot_coverage`); `tarp` is the test of Lemos et al. 2023 (arXiv 2302.03026).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

from .calibration import holm

__all__ = ["TARPResult", "central_coverage", "hdr_coverage", "plot_coverage", "tarp"]

DEFAULT_LEVELS = (0.5, 0.8, 0.9, 0.95)


def _arrays(samples, truths) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Samples ``(S, N, P)`` and truths ``(S, P)`` with the event flattened, and the event shape."""
    s = np.asarray(samples, float)
    t = np.asarray(truths, float)
    if s.ndim < 2:
        raise ValueError(f"samples: expected shape (S, N, ...); got shape {s.shape}")
    if t.shape != (want := (s.shape[0], *s.shape[2:])):
        raise ValueError(f"truths: expected shape {want} to match samples {s.shape}; got {t.shape}")
    return s.reshape(*s.shape[:2], -1), t.reshape(t.shape[0], -1), t.shape[1:]


def _levels(levels) -> np.ndarray:
    lv = np.atleast_1d(np.asarray(levels, float))
    if lv.ndim != 1 or np.any((lv <= 0) | (lv >= 1)):
        raise ValueError(f"levels: expected numbers in (0, 1); got {levels!r}")
    return lv


def _binomial_columns(hits: np.ndarray, n: np.ndarray, level: np.ndarray):
    """``scipy.stats.binomtest``'s 95% ``proportion_ci`` and ``pvalue``, per row, vectorised.

    The interval in beta-quantile closed form (scipy root-finds it, ~10 ms a row); the
    p-value sums the outcomes no more likely than ``k`` (scipy's relative tolerance 1e-7).
    """
    k, n = hits.astype(float), n.astype(float)
    lower = np.where(k > 0, stats.beta.ppf(0.025, np.maximum(k, 1), n - k + 1), 0.0)
    upper = np.where(k < n, stats.beta.isf(0.025, k + 1, np.maximum(n - k, 1)), 1.0)
    pmfs, pvalue = {}, np.empty(len(k))
    for i, (ki, ni, p) in enumerate(zip(hits, n.astype(int), level, strict=True)):
        if (ni, p) not in pmfs:
            pmfs[ni, p] = stats.binom.pmf(np.arange(ni + 1), ni, p)
        pmf = pmfs[ni, p]
        pvalue[i] = min(1.0, pmf[pmf <= pmf[ki] * (1 + 1e-7)].sum()) if ki != p * ni else 1.0
    return lower, upper, pvalue


def _table(rows, alpha):
    """Add exact binomial interval, two-sided test, Holm-adjusted flag."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=["quantity", "level", "hits", "n"])
    k, n, lv = df["hits"].to_numpy(), df["n"].to_numpy(), df["level"].to_numpy()
    df["coverage"] = k / n
    df["lower"], df["upper"], df["pvalue"] = _binomial_columns(k, n, lv)
    df["flagged"] = holm(df["pvalue"].to_numpy()) < alpha
    df.attrs["alpha"] = alpha
    return df


def central_coverage(samples, truths, levels=DEFAULT_LEVELS, *, alpha: float = 0.01):
    """Coverage of central (equal-tailed) credible intervals, per scalar quantity.

    The level-$\\ell$ interval is between the $(1-\\ell)/2$ and
    $(1+\\ell)/2$ sample quantiles of each simulation's draws.

    Args:
        samples: ``(S, N, ...)`` posterior draws.
        truths: ``(S, ...)`` true values.
        levels: nominal levels in (0, 1).
        alpha: family-wise level (Holm) of the ``flagged`` column.

    Returns:
        DataFrame with columns ``quantity, level, hits, n, coverage, lower, upper, pvalue,
        flagged`` (``lower``/``upper``: 95% Clopper-Pearson interval of the coverage;
        ``pvalue``: exact binomial test of coverage = level).

    Raises:
        ValueError: on mismatched shapes or levels outside (0, 1).
    """
    s, t, event = _arrays(samples, truths)
    names = [f"[{','.join(map(str, i))}]" for i in np.ndindex(*event)] if event else ["value"]
    rows = []
    for level in _levels(levels):
        lo, hi = np.quantile(s, [(1 - level) / 2, (1 + level) / 2], axis=1)
        hits = np.sum((t >= lo) & (t <= hi), axis=0)
        rows += [(name, float(level), int(h), len(t)) for name, h in zip(names, hits, strict=True)]
    return _table(rows, alpha)


def _kde_logpdf(points: np.ndarray, query: np.ndarray) -> np.ndarray:
    """`scipy.stats.gaussian_kde` of ``points`` (N, d) at ``query``, vectorised for small N."""
    n, d = points.shape
    cov = np.atleast_2d(np.cov(points, rowvar=False)) * n ** (-2.0 / (d + 4))
    chol = np.linalg.cholesky(cov + 1e-12 * np.trace(cov) / d * np.eye(d))
    white = np.linalg.solve(chol, (query[:, None, :] - points[None, :, :]).reshape(-1, d).T)
    sq = np.sum(white**2, axis=0).reshape(query.shape[0], n)
    log_norm = 0.5 * d * np.log(2 * np.pi) + np.sum(np.log(np.diag(chol))) + np.log(n)
    m = np.min(sq, axis=1, keepdims=True)
    return -0.5 * m[:, 0] + np.log(np.sum(np.exp(-0.5 * (sq - m)), axis=1)) - log_norm


def hdr_coverage(
    samples,
    truths,
    levels=DEFAULT_LEVELS,
    *,
    log_density_samples=None,
    log_density_truths=None,
    alpha: float = 0.01,
):
    """Coverage of highest-density regions (HDR) of the joint posterior.

    The truth lies in the level-$\\ell$ HDR when its posterior density exceeds the
    $(1-\\ell)$ quantile of the density at the draws. Without exact log densities, a
    Gaussian KDE of the draws is used, whose smoothing slightly inflates the regions.

    Args:
        samples: ``(S, N, ...)`` posterior draws (event dims are treated jointly).
        truths: ``(S, ...)`` true values.
        levels: nominal levels in (0, 1).
        log_density_samples: optional ``(S, N)`` posterior log density at the draws.
        log_density_truths: optional ``(S,)`` posterior log density at the truths.
        alpha: family-wise level (Holm) of the ``flagged`` column.

    Returns:
        DataFrame as `central_coverage`, one row per level (quantity ``"joint"``).

    Raises:
        ValueError: on mismatched shapes, or only one of the two log-density arrays.
    """
    s, t, _ = _arrays(samples, truths)
    lv = _levels(levels)
    S, N = s.shape[:2]
    if (log_density_samples is None) != (log_density_truths is None):
        raise ValueError(
            "log_density_samples/log_density_truths: expected both or neither; got one"
        )
    if log_density_samples is None:
        lp = np.stack([_kde_logpdf(si, np.vstack([si, ti])) for si, ti in zip(s, t, strict=True)])
        lp_s, lp_t = lp[:, :-1], lp[:, -1]
    else:
        lp_s, lp_t = np.asarray(log_density_samples, float), np.asarray(log_density_truths, float)
        if lp_s.shape != (S, N) or lp_t.shape != (S,):
            raise ValueError(
                f"log_density_samples/log_density_truths: expected shapes {(S, N)} and {(S,)}; "
                f"got {lp_s.shape} and {lp_t.shape}"
            )
    hits = np.sum(lp_t >= np.quantile(lp_s, 1 - lv, axis=1), axis=1)
    return _table([("joint", float(v), int(h), S) for v, h in zip(lv, hits, strict=True)], alpha)


def _figure_axes(ax):
    """The given Axes and its Figure, or a new square 4x4-inch pair."""
    if ax is not None:
        return ax.figure, ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(4, 4))


def plot_coverage(table, ax=None, title: str | None = None):
    """Calibration curve: empirical against nominal coverage with 95% intervals.

    Args:
        table: output of `central_coverage` or `hdr_coverage`.
        ax: optional matplotlib Axes.
        title: optional title.

    Returns:
        The matplotlib Figure.
    """
    fig, ax = _figure_axes(ax)
    ax.plot([0, 1], [0, 1], color="0.5", lw=0.8, ls="--", label="nominal")
    for name, grp in table.groupby("quantity", sort=False):
        y = grp["coverage"].to_numpy()
        err = np.stack([y - grp["lower"].to_numpy(), grp["upper"].to_numpy() - y])
        ax.errorbar(grp["level"], y, yerr=err, marker="o", ms=3, capsize=2, label=str(name))
    ax.set(xlabel="nominal coverage", ylabel="empirical coverage", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return fig


@dataclasses.dataclass
class TARPResult:
    """Outcome of `tarp`.

    Attributes:
        alpha_grid: credibility levels $\\alpha$ in [0, 1].
        ecp: expected coverage probability at each level (the diagonal when calibrated).
        f: ``(S,)`` per-simulation fraction of draws closer to the reference than the
            truth (randomised; uniform on (0, 1) under calibration).
        pvalue: KS test of ``f`` against the uniform distribution.
        atc: signed area between the ECP curve and the diagonal (> 0: under-confident,
            < 0: over-confident).
        significance: level of the ``passed`` verdict.
    """

    alpha_grid: np.ndarray
    ecp: np.ndarray
    f: np.ndarray
    pvalue: float
    atc: float
    significance: float

    @property
    def passed(self) -> bool:
        """True when uniformity of ``f`` is not rejected at ``significance``."""
        return self.pvalue >= self.significance

    def plot(self, ax=None):
        """ECP against credibility level with a 95% pointwise binomial band.

        Returns:
            The matplotlib Figure.
        """
        fig, ax = _figure_axes(ax)
        n = self.f.size
        lo, hi = stats.binom.ppf([[0.025], [0.975]], n, self.alpha_grid) / n
        ax.fill_between(self.alpha_grid, lo, hi, color="0.85", label="95% band")
        ax.plot([0, 1], [0, 1], color="0.5", lw=0.8, ls="--")
        ax.plot(self.alpha_grid, self.ecp, color="C0", label="TARP ECP")
        ax.set(xlabel="credibility level", ylabel="expected coverage")
        ax.set_title(f"TARP: p = {self.pvalue:.3g}", fontsize=9)
        ax.legend(fontsize=7)
        return fig


def tarp(
    samples,
    truths,
    *,
    references=None,
    seed: int = 0,
    num_levels: int = 101,
    significance: float = 0.01,
) -> TARPResult:
    """TARP coverage test for multivariate posteriors (Lemos et al. 2023).

    $f_i$ is the fraction of posterior draws closer than the truth $\\theta^\\star_i$ to a
    reference point $r_i$ drawn independently of it (after standardising by the truths'
    mean and deviation): uniform under calibration, so $\\Pr(f < \\alpha)$ is the diagonal.

    Args:
        samples: ``(S, N, ...)`` posterior draws.
        truths: ``(S, ...)`` true values.
        references: optional ``(S, ...)`` reference points (original units); default:
            uniform in the bounding box of the standardised truths.
        seed: NumPy seed for references and the tie-breaking jitter.
        num_levels: number of credibility levels on [0, 1].
        significance: level of `TARPResult.passed`.

    Returns:
        A `TARPResult`.

    Raises:
        ValueError: on mismatched shapes.
    """
    s, t, _ = _arrays(samples, truths)
    S, N = s.shape[:2]
    mean, sd = t.mean(0), t.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    s, t = (s - mean) / sd, (t - mean) / sd
    rng = np.random.default_rng(seed)
    if references is None:
        r = rng.uniform(t.min(0), t.max(0), size=t.shape)
    else:
        r = np.asarray(references, float).reshape(S, -1)
        if r.shape != t.shape:
            raise ValueError(f"references: expected shape {t.shape} (flattened); got {r.shape}")
        r = (r - mean) / sd
    d_truth = np.linalg.norm(t - r, axis=-1)
    count = np.sum(np.linalg.norm(s - r[:, None, :], axis=-1) < d_truth[:, None], axis=1)
    f = (count + rng.uniform(size=S)) / (N + 1)
    grid = np.linspace(0, 1, num_levels)
    ecp = np.mean(f[None, :] < grid[:, None], axis=1)
    atc = float(np.trapezoid(ecp - grid, grid))
    pvalue = float(stats.kstest(f, "uniform").pvalue)
    return TARPResult(grid, ecp, f, pvalue, atc, float(significance))
