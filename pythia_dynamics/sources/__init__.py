"""Where checkpoints come from: a suite on the Hub (Pythia, OLMo, ...), a local suite folder, or the embedded mini suite."""

from __future__ import annotations

import difflib
from pathlib import Path

from pythia_dynamics.catalog import UnknownModelError
from pythia_dynamics.sources.base import (
    CheckpointSource,
    CheckpointUnavailableError,
    UnsupportedCheckpointError,
    load_weight_files,
)
from pythia_dynamics.sources.hub import (
    HUB_PREFIX,
    CachePolicy,
    CheckpointsNotCachedError,
    HubSource,
    NoCheckpointBranchesError,
    resolve_hub_model,
)
from pythia_dynamics.sources.hub_cache import write_hub_cache
from pythia_dynamics.sources.local import LAYOUT_HELP, LocalSuite

__all__ = [
    "EMBEDDED_SUITE",
    "EMBEDDED_INDUCTION_SUITE",
    "HUB_PREFIX",
    "LAYOUT_HELP",
    "CachePolicy",
    "CheckpointSource",
    "CheckpointUnavailableError",
    "CheckpointsNotCachedError",
    "HubSource",
    "LocalSuite",
    "NoCheckpointBranchesError",
    "UnsupportedCheckpointError",
    "load_weight_files",
    "open_source",
    "write_hub_cache",
]

EMBEDDED_SUITE = "mini-pythia"
EMBEDDED_INDUCTION_SUITE = "mini-pythia-induction"  # the demo's second suite, where an induction head forms


def open_source(spec: str | Path | CheckpointSource, **hub_options) -> CheckpointSource:
    """'mini-pythia' (the embedded suite, trained on first use; 'mini-pythia-induction' the demo's second one,
    where an induction head forms), a local suite folder, a known model
    ('pythia-70m', 'olmo-1b', 'olmo-2-1b:stage2-ingredient1', `pythia-dynamics models` lists them) or any
    Hub repository 'hub:ORG/NAME'.

    `hub_options` go to HubSource (revision_pattern, series, cache_dir, cache_policy, token); options left
    None are dropped. A revision pattern or series given for a local folder is an error: a local suite's
    folder names are read by the known conventions."""
    if isinstance(spec, CheckpointSource):
        return spec
    hub_options = {key: value for key, value in hub_options.items() if value is not None}
    if str(spec) in (EMBEDDED_SUITE, EMBEDDED_INDUCTION_SUITE):
        from pythia_dynamics.train import INDUCTION_SUITE_CONFIG, ensure_default_suite

        return LocalSuite(ensure_default_suite(INDUCTION_SUITE_CONFIG if str(spec) == EMBEDDED_INDUCTION_SUITE else None))
    path = Path(spec).expanduser()
    if path.exists() and not str(spec).startswith(HUB_PREFIX):
        naming = {k for k in ("revision_pattern", "series") if k in hub_options}
        if naming:
            raise ValueError(f"{', '.join(sorted(naming))} apply to Hub models only; {path} is a local folder. {LAYOUT_HELP}")
        return LocalSuite(path)
    try:
        resolve_hub_model(str(spec), hub_options.get("revision_pattern"), hub_options.get("series"))
    except UnknownModelError as error:
        close = [*error.close, *difflib.get_close_matches(str(spec), [EMBEDDED_SUITE, EMBEDDED_INDUCTION_SUITE], n=1)]
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        unknown = UnknownModelError(
            f"{str(spec)!r} is not an existing folder ({path.absolute()}), a known model (Pythia, OLMo, OLMo 2, "
            f"Stanford CRFM GPT-2, SmolLM2/3, Amber), hub:ORG/NAME, or {EMBEDDED_SUITE!r}.{hint} "
            "`pythia-dynamics models` lists the models that can be named."
        )
        unknown.close = tuple(close)
        raise unknown from None
    return HubSource(str(spec), **hub_options)
