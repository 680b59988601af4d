"""Analyses registered by name, each declaring what it needs from a checkpoint.

Two shapes, both registered with `@register(name, needs=...)` in one module of this package:
- `needs="weights"`: a plain function `fn(model) -> Records` (with `references=True`,
  also `references={"initial": weights, "final": weights}`, see `pythia_dynamics.weights`).
- `needs="forward"` or `"backward"`: a streaming class, because the evaluation batch is run in chunks
  and the forward/backward pass is shared by all such analyses of a checkpoint:
  `cls(model)` with `.hooks` (hook names it wants), `.update(chunk: ChunkPasses)` per chunk and
  `.finish(totals: BatchTotals) -> Records`.
`Analysis.run(model, tokens=...)` runs either shape on a model you hold, no sweep needed.
"""

from __future__ import annotations

import difflib
import inspect
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
    references: bool = False  # wants the first and final checkpoints' weights

    @property
    def streaming(self) -> bool:
        return self.needs != "weights"

    def run(self, model, tokens=None, *, chunk_size: int | None = None, references: dict | None = None):
        """This analysis on one model: `get_analysis("residual_outliers").run(model, tokens)`."""
        if not self.streaming:
            if self.references:
                if references is None:
                    raise ValueError(f"{self.name} compares against reference checkpoints: pass references=")
                return self.fn(model, references=references)
            return self.fn(model)
        if tokens is None:
            raise ValueError(f"{self.name} needs a {self.needs} pass: pass tokens (an int tensor [batch, pos])")
        from pythia_dynamics.passes import run_chunked_passes

        accumulator = self.fn(model)
        totals = run_chunked_passes(
            model, tokens, hooks=accumulator.hooks, backward=self.needs == "backward",
            chunk_size=chunk_size, on_chunk=accumulator.update,
        )  # fmt: skip
        return accumulator.finish(totals)


_REGISTRY: dict[str, Analysis] = {}


def register(name: str, *, needs: Need = "weights", references: bool = False):
    """Register an analysis under `name` (see the module docstring); its docstring's first line describes it."""
    if needs not in get_args(Need):
        raise ValueError(f"needs must be one of {get_args(Need)}, got {needs!r}")
    if references and needs != "weights":
        raise ValueError("references= is for weights analyses")

    def decorator(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"an analysis named {name!r} is already registered ({_REGISTRY[name].fn.__module__})")
        description = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        if (needs != "weights") != inspect.isclass(fn):
            raise TypeError(f"{name}: weights analyses are functions; forward/backward analyses are streaming classes")
        _REGISTRY[name] = Analysis(name, fn, needs, description, references)
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
