"""Registered analyses: every module in this package registers its functions with `@register(...)`.

Adding an analysis is one new module here (with `@register(...)`) plus its test; nothing else changes.
The modules are imported when an analysis is first asked for (`get_analysis`, `registered_analyses`),
not with this package, so that listing them (`analysis_infos`, `pythia-dynamics analyses`) needs no torch.
"""

from pythia_dynamics.analyses.registry import (
    Analysis,
    AnalysisInfo,
    UnknownAnalysisError,
    analysis_infos,
    get_analysis,
    register,
    registered_analyses,
)

__all__ = [
    "Analysis",
    "AnalysisInfo",
    "UnknownAnalysisError",
    "analysis_infos",
    "get_analysis",
    "register",
    "registered_analyses",
]
