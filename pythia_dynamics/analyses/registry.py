"""Analyses registered by name, each declaring what it needs from a checkpoint.

Two shapes, both registered with `@register(name, needs=...)` in one module of this package:
- `needs="weights"`: a plain function `fn(model) -> Records` (with `references=True`,
  also `references={"initial": weights, "final": weights}`, see `pythia_dynamics.weights`).
- `needs="forward"` or `"backward"`: a streaming class, because the evaluation batch is run in chunks
  and the forward/backward pass is shared by all such analyses of a checkpoint:
  `cls(model)` with `.hooks` (hook names it wants), `.update(chunk: ChunkPasses)` per chunk and
  `.finish(totals: BatchTotals) -> Records`.
`Analysis.run(model, tokens=...)` runs either shape on a model you hold, no sweep needed.

The package's modules are imported (torch and all) only when an analysis is asked for
(`get_analysis`, `registered_analyses`). `analysis_infos` lists them without importing them, by
reading each module's top-level `@register("name", needs=...)` decorators and docstrings, which is
why the decorator's arguments are written as literals.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

__all__ = [
    "Analysis",
    "AnalysisInfo",
    "Need",
    "UnknownAnalysisError",
    "analysis_infos",
    "get_analysis",
    "register",
    "registered_analyses",
]

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
    version: int = 1  # bumped when the analysis's numbers change; a store never mixes two versions

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


@dataclass(frozen=True)
class AnalysisInfo:
    """What `pythia-dynamics analyses` lists about an analysis; no function, so no import needed."""

    name: str
    needs: Need
    description: str
    references: bool = False
    version: int = 1


_REGISTRY: dict[str, Analysis] = {}
_PACKAGE = __name__.rpartition(".")[0]


def register(name: str, *, needs: Need = "weights", references: bool = False, version: int = 1):
    """Register an analysis under `name` (see the module docstring); its docstring's first line describes it.

    `version` (a whole number from 1) is recorded with every result; bump it when a change alters the
    analysis's numbers, so that a store refuses to mix the two (`sweep(..., recompute=[name])` replaces them).
    """
    if needs not in get_args(Need):
        raise ValueError(f"needs must be one of {get_args(Need)}, got {needs!r}")
    if references and needs != "weights":
        raise ValueError("references= is for weights analyses")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a whole number >= 1, got {version!r}")

    def decorator(fn: Callable) -> Callable:
        if not _is_builtin(fn):
            _load_builtin_analyses()  # so that a name taken by a built-in analysis is refused here
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"an analysis named {name!r} is already registered ({_REGISTRY[name].fn.__module__})")
        if (needs != "weights") != inspect.isclass(fn):
            raise TypeError(f"{name}: weights analyses are functions; forward/backward analyses are streaming classes")
        _REGISTRY[name] = Analysis(name, fn, needs, _first_line(fn.__doc__), references, version)
        return fn

    return decorator


def registered_analyses() -> dict[str, Analysis]:
    """Every analysis, the package's (importing them) in module order, then those user code registered."""
    _load_builtin_analyses()
    return {analysis.name: analysis for analysis in sorted(_REGISTRY.values(), key=_rank)}


def analysis_infos() -> list[AnalysisInfo]:
    """Name, needs and description of every analysis, in `registered_analyses()` order, importing none.

    The package's modules are read with `ast`; a module whose `@register(...)` arguments are not
    literals is imported instead. Analyses already registered (user code's included) are listed as the
    registry has them.
    """
    infos: dict[str, AnalysisInfo] = {}
    for module in _builtin_modules():
        found = _read_registrations(Path(__file__).with_name(f"{module}.py"))
        if found is None:
            importlib.import_module(f"{_PACKAGE}.{module}")
            found = [_info(a) for a in _REGISTRY.values() if a.fn.__module__ == f"{_PACKAGE}.{module}"]
        infos.update((info.name, info) for info in found)
    infos.update((analysis.name, _info(analysis)) for analysis in _REGISTRY.values())
    return list(infos.values())


def get_analysis(name: str) -> Analysis:
    analyses = registered_analyses()
    if name not in analyses:
        close = difflib.get_close_matches(name, analyses, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownAnalysisError(f"no analysis named {name!r}.{hint} Registered: {', '.join(sorted(analyses))}")
    return analyses[name]


@functools.cache
def _builtin_modules() -> tuple[str, ...]:
    """The package's analysis modules: every module next to this one ("adding one is one new file")."""
    here = Path(__file__).parent
    return tuple(m.name for m in pkgutil.iter_modules([str(here)]) if m.name != "registry")


def _load_builtin_analyses() -> None:
    # Importing the package's analysis modules runs their @register decorators.
    for module in _builtin_modules():
        importlib.import_module(f"{_PACKAGE}.{module}")


def _is_builtin(fn: Callable) -> bool:
    return fn.__module__.startswith(_PACKAGE + ".")


def _rank(analysis: Analysis) -> int:
    # The package's analyses in module order, then user code's; the stable sort keeps registration
    # order within each, so the order does not depend on which module happened to be imported first.
    modules = _builtin_modules()
    module = analysis.fn.__module__.rpartition(".")[2]
    return modules.index(module) if _is_builtin(analysis.fn) and module in modules else len(modules)


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def _info(analysis: Analysis) -> AnalysisInfo:
    return AnalysisInfo(analysis.name, analysis.needs, analysis.description, analysis.references, analysis.version)


def _read_registrations(path: Path) -> list[AnalysisInfo] | None:
    """The analyses a module's top-level `@register(...)` decorators declare; None if only importing can tell."""
    if not path.is_file():  # a package or a compiled-only module
        return None
    found = []
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue
        for decorator in node.decorator_list:
            if not _is_register_call(decorator):
                continue
            try:
                (name,) = [ast.literal_eval(arg) for arg in decorator.args]
                options = {k.arg: ast.literal_eval(k.value) for k in decorator.keywords if k.arg is not None}
            except ValueError:  # a name that is not a literal, or not exactly one positional argument
                return None
            if len(options) != len(decorator.keywords):  # register(..., **options)
                return None
            docstring = _first_line(ast.get_docstring(node, clean=False))
            needs, references = options.get("needs", "weights"), options.get("references", False)
            found.append(AnalysisInfo(name, needs, docstring, references, options.get("version", 1)))
    return found


def _is_register_call(decorator: ast.expr) -> bool:
    if not isinstance(decorator, ast.Call):
        return False
    func = decorator.func
    if isinstance(func, ast.Attribute):  # registry.register(...)
        return func.attr == "register"
    return isinstance(func, ast.Name) and func.id == "register"
