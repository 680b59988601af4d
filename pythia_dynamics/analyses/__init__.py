"""Registered analyses. Each module registers its functions on import (see `registry`)."""

from pythia_dynamics.analyses import loss, norms  # noqa: F401
from pythia_dynamics.analyses.registry import (
    Analysis,
    UnknownAnalysisError,
    get_analysis,
    register,
    registered_analyses,
)

__all__ = ["Analysis", "UnknownAnalysisError", "get_analysis", "register", "registered_analyses"]
