"""numpyro_inflow: inflationary flows as learned priors for Bayesian inference in NumPyro.

An inflationary flow (de Albuquerque & Pearson, NeurIPS 2024) is a diffusion model's
probability-flow ODE with a noise schedule that makes it an invertible map from data
to a small standard-normal latent. This package builds such flows (from exact oracles
or learned denoisers), and exposes them to NumPyro.

>>> import numpyro_inflow as nif
"""

from ._version import __version__
from .flow import InflationaryFlow, PFODEField, SolveInfo
from .schedule import InflationSchedule, participation_ratio
from .scores import AbstractScore, EmpiricalScore, GaussianMixtureScore

__all__ = [
    "AbstractScore",
    "EmpiricalScore",
    "GaussianMixtureScore",
    "InflationSchedule",
    "InflationaryFlow",
    "PFODEField",
    "SolveInfo",
    "__version__",
    "participation_ratio",
]
