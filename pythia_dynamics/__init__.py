"""pythia_dynamics: how language models change during training, through TransformerLens.

    import pythia_dynamics as pd_
    pd_.sweep("pythia-70m", "store/", steps="log:12")        # or a local suite folder, or "mini-pythia"
    pd_.Store("store/").scalars(analysis="weight_norms")      # tidy pandas DataFrame
    pd_.load_checkpoint("pythia-70m", 1000).model             # a TransformerLens model at step 1000
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pythia_dynamics.loading import CheckpointId, CheckpointLoader, LoadOptions, load_checkpoint
    from pythia_dynamics.schedule import PYTHIA_STEPS, PYTHIA_V0_STEPS, select_steps
    from pythia_dynamics.sources import HubSource, LocalSuite, open_source
    from pythia_dynamics.store import Store
    from pythia_dynamics.sweeps import SweepSummary, sweep
    from pythia_dynamics.timeline import events

# Each name is imported from its module on first use (PEP 562): importing the package, or running a
# command that builds no model (`pythia-dynamics --help`, `analyses`, `models`), then needs no torch.
_EXPORTS = {
    "PYTHIA_STEPS": "schedule",
    "PYTHIA_V0_STEPS": "schedule",
    "CheckpointId": "loading",
    "CheckpointLoader": "loading",
    "HubSource": "sources",
    "LoadOptions": "loading",
    "LocalSuite": "sources",
    "Store": "store",
    "SweepSummary": "sweeps",
    "load_checkpoint": "loading",
    "open_source": "sources",
    "events": "timeline",
    "select_steps": "schedule",
    "sweep": "sweeps",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
