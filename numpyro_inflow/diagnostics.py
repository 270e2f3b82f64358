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
        table: per-parameter DataFrame (``mean, sd, ess_bulk, ess_tail, r_hat``) followed
            by the sampler columns ``divergences, accept_prob, step_size`` (run totals or
            means over chains, repeated on every row so that one table says it all).
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
    if state is None:
        return None
    if hasattr(state, "adapt_state") and hasattr(state.adapt_state, "step_size"):
        return np.atleast_1d(np.asarray(state.adapt_state.step_size))
    if hasattr(state, "step_size"):
        return np.atleast_1d(np.asarray(state.step_size))
    return None


def diagnose(
    mcmc,
    *,
    rhat_max: float = 1.01,
    ess_min_per_chain: float = 100.0,
    warn: bool = True,
) -> Diagnosis:
    """R-hat, bulk/tail ESS, divergences, acceptance and step size in one table.

    Works for `numpyro.infer.MCMC` runs with any kernel (NUTS, HMC,
    `numpyro_inflow.MALA`, `numpyro_inflow.ULA`) and for ArviZ
    DataTrees. Acceptance and step size come from the ``sample_stats`` group when they
    were collected (``extra_fields=("accept_prob", ...)``), else from the last state.

    Thresholds (Vehtari et al. 2021): R-hat below ``rhat_max`` and bulk and tail ESS at
    least ``ess_min_per_chain`` times the number of chains; no divergences.

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
    if hasattr(mcmc, "get_samples"):
        if getattr(mcmc, "_states", None) is None:
            raise ValueError("mcmc: expected a finished MCMC run; got one without samples")
        dt = from_numpyro(mcmc)
    else:
        dt = mcmc
    if "posterior" not in dt.children:
        raise ValueError("mcmc: expected a run or DataTree with a posterior group; got none")
    table = summary(dt, kind="all", round_to="none")[
        ["mean", "sd", "ess_bulk", "ess_tail", "r_hat"]
    ]
    table = pd.DataFrame(table).astype(float)
    n_chains = int(dt.posterior.sizes["chain"])

    stats = dt["sample_stats"].to_dataset() if "sample_stats" in dt.children else None
    per_chain = {}
    if stats is not None and "diverging" in stats:
        per_chain["divergences"] = stats["diverging"].sum("draw").values.astype(int)
    if stats is not None and "acceptance_rate" in stats:
        per_chain["accept_prob"] = stats["acceptance_rate"].mean("draw").values
    elif state is not None and hasattr(state, "mean_accept_prob"):
        per_chain["accept_prob"] = np.atleast_1d(np.asarray(state.mean_accept_prob))
    if stats is not None and "step_size" in stats:
        per_chain["step_size"] = stats["step_size"].mean("draw").values
    elif _step_size_of(state) is not None:
        per_chain["step_size"] = _step_size_of(state)
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

    problems = []
    bad_rhat = table.index[table["r_hat"] > rhat_max].tolist()
    if bad_rhat:
        problems.append(f"R-hat > {rhat_max} for {bad_rhat}")
    ess_min = ess_min_per_chain * n_chains
    for kind in ("ess_bulk", "ess_tail"):
        low = table.index[table[kind] < ess_min].tolist()
        if low:
            problems.append(f"{kind} < {ess_min:g} for {low}")
    if "divergences" in chains and chains["divergences"].sum() > 0:
        problems.append(f"{int(chains['divergences'].sum())} divergent transitions")
    if warn and problems:
        warnings.warn("diagnose: " + "; ".join(problems), DiagnosticWarning, stacklevel=2)
    return Diagnosis(table=table, chains=chains, problems=problems)
