"""One installer per TransformerLens backend: each builds its model, refills it in place and owns the processed path.

Both consume the architecture family descriptions (`pythia_dynamics.architectures`); the loader only picks
one. `transformer_lens_parameters(model)` gives a loaded model's raw weights by TransformerLens name,
whichever backend holds them, for the analyses.
"""

from __future__ import annotations

from torch import Tensor

from pythia_dynamics import compat
from pythia_dynamics.architectures import FAMILIES, ArchitectureFamily, family_of
from pythia_dynamics.installers import bridge, hooked
from pythia_dynamics.installers.bridge import BridgeInstaller
from pythia_dynamics.installers.hooked import HookedInstaller

__all__ = ["BridgeInstaller", "HookedInstaller", "choose_backend", "family_of_model", "installer_for", "transformer_lens_parameters"]

INSTALLERS = {"hooked": HookedInstaller, "bridge": BridgeInstaller}


def choose_backend(requested: str, family: ArchitectureFamily) -> str:
    """The backend for `family`: 'auto' prefers HookedTransformer where it exists and can build the family."""
    available = compat.available_backends()
    usable = [b for b in available if b != "hooked" or family.hooked_transformer]
    if requested == "auto":
        if not usable:
            raise RuntimeError(
                f"TransformerLens {compat.TL_VERSION} has no backend that can load {family.name} checkpoints "
                f"(available: {', '.join(available) or 'none'})"
            )
        return usable[0]
    if requested not in available:
        raise ValueError(
            f"backend {requested!r} is not available with TransformerLens {compat.TL_VERSION}; "
            f"available: {', '.join(available) or 'none'}"
        )
    if requested not in usable:
        raise ValueError(
            f"backend {requested!r} cannot load {family.name} checkpoints: TransformerLens's HookedTransformer "
            "builds this family only from its official model names, not from a checkpoint's config.json. "
            f"Use backend 'bridge' (or 'auto'); HookedTransformer reads "
            f"{', '.join(f.name for f in FAMILIES.values() if f.hooked_transformer)}."
        )
    return requested


def installer_for(backend: str):
    return INSTALLERS[backend]


def family_of_model(model) -> ArchitectureFamily:
    if compat.is_transformer_bridge(model):
        return family_of(model.original_model.config)
    architecture = getattr(model.cfg, "original_architecture", None)
    for family in FAMILIES.values():
        if family.hf_class == architecture:
            return family
    raise ValueError(f"no architecture description for a HookedTransformer of {architecture!r}")


def transformer_lens_parameters(model) -> dict[str, Tensor] | None:
    """{TransformerLens name: weight} of a raw model, for the weights its checkpoints store; None for a
    processed model (folded and centred weights are read through the model's own attributes)."""
    if compat.is_transformer_bridge(model):
        return None if bridge.is_processed(model) else bridge.transformer_lens_parameters(model, family_of_model(model))
    if model.cfg.normalization_type not in ("LN", "RMS") and model.cfg.normalization_type is not None:
        return None  # LNPre / RMSPre: layer norms were folded
    return hooked.transformer_lens_parameters(model, family_of_model(model))
