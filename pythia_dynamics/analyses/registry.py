"""Analyses registered by name, each declaring what it needs from a checkpoint.

An analysis is a plain function `(model, passes) -> Records`: `model` is a loaded TransformerLens
model, `passes` the forward/backward results on the evaluation batch that the sweep computes once and
shares (None when the analysis needs weights only). Adding an analysis is one new module in
`pythia_dynamics/analyses/` with an `@register(...)` decorator, plus its test.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["Analysis", "Need", "UnknownAnalysisError", "get_analysis", "register", "registered_analyses"]

Need = Literal["weights", "forward", "backward"]  # each implies the ones before it


class UnknownAnalysisError(ValueError):
    """An analysis name that nothing registered."""


@dataclass(frozen=True)
class Analysis:
    name: str
    fn: Callable
    needs: Need
    description: str

    def __call__(self, model, passes=None):
        return self.fn(model, passes)


_REGISTRY: dict[str, Analysis] = {}


def register(name: str, *, needs: Need = "weights"):
    """Register `fn(model, passes) -> Records` under `name`; the first docstring line describes it."""
    if needs not in get_args(Need):
        raise ValueError(f"needs must be one of {get_args(Need)}, got {needs!r}")

    def decorator(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"an analysis named {name!r} is already registered ({_REGISTRY[name].fn.__module__})")
        description = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _REGISTRY[name] = Analysis(name, fn, needs, description)
        return fn

    return decorator


def registered_analyses() -> dict[str, Analysis]:
    _load_builtin_analyses()
    return dict(_REGISTRY)


def get_analysis(name: str) -> Analysis:
    analyses = registered_analyses()
    if name not in analyses:
        close = difflib.get_close_matches(name, analyses, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownAnalysisError(f"no analysis named {name!r}.{hint} Registered: {', '.join(sorted(analyses))}")
    return analyses[name]


def _load_builtin_analyses() -> None:
    # Importing the package's analysis modules runs their @register decorators.
    import pythia_dynamics.analyses  # noqa: F401
