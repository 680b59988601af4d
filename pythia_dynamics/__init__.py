"""pythia_dynamics: how language models change during training, through TransformerLens.

    import pythia_dynamics as pd_
    pd_.sweep("pythia-70m", "store/", steps="log:12")        # or a local suite folder, or "mini-pythia"
    pd_.Store("store/").scalars(analysis="weight_norms")      # tidy pandas DataFrame
    pd_.load_checkpoint("pythia-70m", 1000).model             # a TransformerLens model at step 1000
"""

__version__ = "0.1.0"

from pythia_dynamics.loading import CheckpointId, CheckpointLoader, LoadOptions, load_checkpoint  # noqa: E402
from pythia_dynamics.schedule import PYTHIA_STEPS, PYTHIA_V0_STEPS, select_steps  # noqa: E402
from pythia_dynamics.sources import HubSource, LocalSuite, open_source  # noqa: E402
from pythia_dynamics.store import Store  # noqa: E402
from pythia_dynamics.sweeps import SweepSummary, sweep  # noqa: E402

__all__ = [
    "PYTHIA_STEPS",
    "PYTHIA_V0_STEPS",
    "CheckpointId",
    "CheckpointLoader",
    "HubSource",
    "LoadOptions",
    "LocalSuite",
    "Store",
    "SweepSummary",
    "load_checkpoint",
    "open_source",
    "select_steps",
    "sweep",
]
