"""One-call convergence diagnostics of a NumPyro MCMC run (via ArviZ).

`diagnose` gathers split R-hat, bulk and tail ESS (ArviZ's rank-normalised
estimators, Vehtari et al. 2021), divergences, acceptance and step size in one table,
and warns when a threshold is crossed.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

__all__ = ["Diagnosis", "DiagnosticWarning", "diagnose"]


class DiagnosticWarning(UserWarning):
    """An MCMC run crossed a diagnostic threshold (R-hat, ESS, divergences)."""


@dataclasses.dataclass
class Diagnosis:
    """Result of `diagnose`.

    Attributes:
        table: per-parameter DataFrame (``mean, sd, ess_bulk, ess_tail, r_hat``) and the
            run's ``divergences, accept_prob, step_size`` repeated on every row.
        chains: per-chain DataFrame of ``divergences, accept_prob, step_size``.
        problems: human-readable list of crossed thresholds (empty when all is well).
    """

    table: object
    chains: object
    problems: list[str]

    @property
    def ok(self) -> bool:
        """True when no threshold was crossed."""
        return not self.problems

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "PROBLEMS:\n  " + "\n  ".join(self.problems)
        return f"{self.table.to_string()}\n\nper chain:\n{self.chains.to_string()}\n\n{verdict}"

    def _repr_html_(self) -> str:
        return self.table.to_html()


def _step_size_of(state):
    for obj in (getattr(state, "adapt_state", None), state):
        if hasattr(obj, "step_size"):
            return np.atleast_1d(np.asarray(obj.step_size))
    return None


def diagnose(
    mcmc, *, rhat_max: float = 1.01, ess_min_per_chain: float = 100.0, warn: bool = True
) -> Diagnosis:
    """R-hat, bulk/tail ESS, divergences, acceptance and step size in one table.

    For `numpyro.infer.MCMC` runs with any kernel and for ArviZ DataTrees. Acceptance and
    step size come from ``sample_stats`` when collected, else from the last state.
    Thresholds (Vehtari et al. 2021): R-hat below ``rhat_max``, bulk and tail ESS at
    least ``ess_min_per_chain`` times the number of chains, no divergences.

    Args:
        mcmc: a finished `numpyro.infer.MCMC` or an ArviZ DataTree.
        rhat_max: largest acceptable R-hat.
        ess_min_per_chain: smallest acceptable ESS per chain.
        warn: emit a `DiagnosticWarning` listing the problems.

    Returns:
        A `Diagnosis`.

    Raises:
        ValueError: if ``mcmc`` has no posterior samples.
    """
    import pandas as pd
    from arviz_base import from_numpyro
    from arviz_stats import summary

    state = getattr(mcmc, "last_state", None)
    is_run = hasattr(mcmc, "get_samples")
    if is_run and getattr(mcmc, "_states", None) is None:
        raise ValueError("mcmc: expected a finished MCMC run; got one without samples")
    dt = from_numpyro(mcmc) if is_run else mcmc
    if "posterior" not in dt.children:
        raise ValueError("mcmc: expected a run or DataTree with a posterior group; got none")
    columns = ["mean", "sd", "ess_bulk", "ess_tail", "r_hat"]
    table = pd.DataFrame(summary(dt, kind="all", round_to="none")[columns]).astype(float)
    n_chains = int(dt.posterior.sizes["chain"])

    stats = dt["sample_stats"].to_dataset() if "sample_stats" in dt.children else {}
    per_chain = {}
    if "diverging" in stats:
        per_chain["divergences"] = stats["diverging"].sum("draw").values.astype(int)
    if "acceptance_rate" in stats:
        per_chain["accept_prob"] = stats["acceptance_rate"].mean("draw").values
    elif hasattr(state, "mean_accept_prob"):
        per_chain["accept_prob"] = np.atleast_1d(np.asarray(state.mean_accept_prob))
    step = stats["step_size"].mean("draw").values if "step_size" in stats else _step_size_of(state)
    if step is not None:
        per_chain["step_size"] = step
    per_chain = {
        k: np.broadcast_to(v, (n_chains,))
        if np.size(v) in (1, n_chains)
        else np.full(n_chains, np.nan)
        for k, v in per_chain.items()
    }
    chains = pd.DataFrame(per_chain, index=pd.Index(range(n_chains), name="chain"))
    for col in ("divergences", "accept_prob", "step_size"):
        if col in chains:
            table[col] = chains[col].sum() if col == "divergences" else chains[col].mean()

    ess_min = ess_min_per_chain * n_chains
    crossed = {
        f"R-hat > {rhat_max}": table["r_hat"] > rhat_max,
        f"ess_bulk < {ess_min:g}": table["ess_bulk"] < ess_min,
        f"ess_tail < {ess_min:g}": table["ess_tail"] < ess_min,
    }
    problems = [f"{k} for {table.index[bad].tolist()}" for k, bad in crossed.items() if bad.any()]
    if "divergences" in chains and chains["divergences"].sum() > 0:
        problems.append(f"{int(chains['divergences'].sum())} divergent transitions")
    if warn and problems:
        warnings.warn("diagnose: " + "; ".join(problems), DiagnosticWarning, stacklevel=2)
    return Diagnosis(table=table, chains=chains, problems=problems)
