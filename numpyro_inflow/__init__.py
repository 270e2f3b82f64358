"""numpyro_inflow: inflationary flows as learned priors for Bayesian inference in NumPyro.

An inflationary flow (de Albuquerque & Pearson, NeurIPS 2024) is a diffusion model's
probability-flow ODE with a noise schedule that makes it an invertible map from data
to a small standard-normal latent. This package builds such flows (from exact oracles
or learned denoisers), exposes them to NumPyro as a transform, a distribution and a
reparameterizer, samples posteriors in the latent space, and checks calibration.

The layers, each importing only those above it in this list (``tests/test_architecture.py``
checks it):

- schedule, scores, field, solvers, flow: the engine (eigenbasis, denoisers, pfODE);
- nets, denoiser, datasets, checkpoint, persistence, train, pretrained: learning and
  keeping flows;
- numpyro, observations: the NumPyro objects and inverse-problem likelihoods;
- laplace, kernels, evaluation, calibration, coverage, diagnostics: inference and its
  checks; demo and cli are programs over the public namespace.

>>> import numpyro_inflow as nif
>>> nif.InflationaryFlow.__name__
'InflationaryFlow'
"""

from . import datasets, evaluation
from ._version import __version__

# Engine
from .schedule import InflationSchedule, participation_ratio
from .scores import AbstractScore, EmpiricalScore, GaussianMixtureScore
from .field import PFODEField, SolveConfig, SolveInfo
from .flow import InflationaryFlow
from .solvers import ExponentialEuler, ExponentialMidpoint, ExponentialMultistep

# Learning and keeping flows
from .denoiser import LearnedDenoiser
from .checkpoint import Checkpoints
from .train import TrainingHistory, adam_warmup_cosine, fit, fit_with_history, init_flow, train_flow
from .persistence import load_flow, read_config, save_flow
from .pretrained import pretrained

# NumPyro
from .numpyro import (
    InflationaryFlowDistribution,
    InflationaryFlowTransform,
    LatentReparam,
    ReducedLatentTransform,
    SolveFailureCounter,
)
from .observations import LinearGaussianObservation, NonlinearGaussianObservation, inverse_problem

# Inference and calibration
from .kernels import MALA, ULA, LangevinState
from .laplace import LatentLaplace, laplace_approximation, latent_map
from .calibration import SBCResult, sbc
from .coverage import TARPResult, central_coverage, hdr_coverage, plot_coverage, tarp
from .diagnostics import Diagnosis, DiagnosticWarning, diagnose

__all__ = [
    # engine
    "AbstractScore",
    "EmpiricalScore",
    "ExponentialEuler",
    "ExponentialMidpoint",
    "ExponentialMultistep",
    "GaussianMixtureScore",
    "InflationSchedule",
    "InflationaryFlow",
    "PFODEField",
    "SolveConfig",
    "SolveInfo",
    "participation_ratio",
    # learning and keeping flows
    "Checkpoints",
    "LearnedDenoiser",
    "TrainingHistory",
    "adam_warmup_cosine",
    "datasets",
    "evaluation",
    "fit",
    "fit_with_history",
    "init_flow",
    "load_flow",
    "pretrained",
    "read_config",
    "save_flow",
    "train_flow",
    # NumPyro
    "InflationaryFlowDistribution",
    "InflationaryFlowTransform",
    "LatentReparam",
    "LinearGaussianObservation",
    "NonlinearGaussianObservation",
    "ReducedLatentTransform",
    "SolveFailureCounter",
    "inverse_problem",
    # inference and calibration
    "MALA",
    "ULA",
    "Diagnosis",
    "DiagnosticWarning",
    "LangevinState",
    "LatentLaplace",
    "SBCResult",
    "TARPResult",
    "central_coverage",
    "diagnose",
    "hdr_coverage",
    "laplace_approximation",
    "latent_map",
    "plot_coverage",
    "sbc",
    "tarp",
    "__version__",
]
