"""Where checkpoints come from: Pythia on the Hub, a local suite folder, or the embedded mini suite."""

from __future__ import annotations

import difflib
from pathlib import Path

from pythia_dynamics.catalog import UnknownModelError, resolve_pythia
from pythia_dynamics.sources.base import (
    CheckpointSource,
    CheckpointUnavailableError,
    UnsupportedCheckpointError,
    load_weight_files,
)
from pythia_dynamics.sources.hub import CachePolicy, CheckpointsNotCachedError, HubSource
from pythia_dynamics.sources.hub_cache import write_hub_cache
from pythia_dynamics.sources.local import LAYOUT_HELP, LocalSuite

__all__ = [
    "EMBEDDED_SUITE",
    "LAYOUT_HELP",
    "CachePolicy",
    "CheckpointSource",
    "CheckpointUnavailableError",
    "CheckpointsNotCachedError",
    "HubSource",
    "LocalSuite",
    "UnsupportedCheckpointError",
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
        close = [*error.close, *difflib.get_close_matches(str(spec), [EMBEDDED_SUITE], n=1)]
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        unknown = UnknownModelError(
            f"{str(spec)!r} is not an existing folder ({path.absolute()}), a known Pythia model, "
            f"or {EMBEDDED_SUITE!r}.{hint} `pythia-dynamics models` lists the models that can be named."
        )
        unknown.close = tuple(close)
        raise unknown from None
    return HubSource(str(spec), **hub_options)
