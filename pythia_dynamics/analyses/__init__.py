"""Registered analyses: every module in this package registers its functions on import.

Adding an analysis is one new module here (with `@register(...)`) plus its test; nothing else changes.
"""

import importlib
import pkgutil

from pythia_dynamics.analyses.registry import (
    Analysis,
    UnknownAnalysisError,
    get_analysis,
    register,
    registered_analyses,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Analysis", "UnknownAnalysisError", "get_analysis", "register", "registered_analyses"]
