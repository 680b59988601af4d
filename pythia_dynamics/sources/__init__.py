"""Where checkpoints come from: Pythia on the Hub, a local suite folder, or the embedded mini suite."""

from __future__ import annotations

from pathlib import Path

from pythia_dynamics.catalog import UnknownModelError, resolve_pythia
from pythia_dynamics.sources.base import CheckpointSource, CheckpointUnavailableError, load_weight_files
from pythia_dynamics.sources.hub import CachePolicy, HubSource
from pythia_dynamics.sources.hub_cache import write_hub_cache
from pythia_dynamics.sources.local import LAYOUT_HELP, LocalSuite

__all__ = [
    "EMBEDDED_SUITE",
    "LAYOUT_HELP",
    "CachePolicy",
    "CheckpointSource",
    "CheckpointUnavailableError",
    "HubSource",
    "LocalSuite",
    "load_weight_files",
    "open_source",
    "write_hub_cache",
]

EMBEDDED_SUITE = "mini-pythia"


def open_source(spec: str | Path | CheckpointSource, **hub_options) -> CheckpointSource:
    """'mini-pythia' (the embedded suite, trained on first use), a local suite folder, or a Pythia name."""
    if isinstance(spec, CheckpointSource):
        return spec
    if str(spec) == EMBEDDED_SUITE:
        from pythia_dynamics.train import ensure_default_suite

        return LocalSuite(ensure_default_suite())
    path = Path(spec).expanduser()
    if path.exists():
        return LocalSuite(path)
    try:
        resolve_pythia(str(spec))
    except UnknownModelError as error:
        raise UnknownModelError(
            f"{spec!r} is neither an existing folder nor a Pythia model name, nor {EMBEDDED_SUITE!r}. "
            f"{error}"
        ) from None
    return HubSource(str(spec), **hub_options)
