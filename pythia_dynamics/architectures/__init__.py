"""One description per architecture family: how its checkpoints store the weights TransformerLens names.

Nothing outside this package and the two installers that consume its descriptions
(`pythia_dynamics.installers`) knows how a checkpoint's tensors are laid out. Adding a family is one
description here (its stored names and rearrangements) plus a tiny config in `synthetic.TINY_FAMILY_CONFIGS`
for its tests.
"""

from __future__ import annotations

from typing import Any

from pythia_dynamics.architectures.family import ArchitectureFamily, ComponentViews, ModelShape
from pythia_dynamics.architectures.gpt2 import GPT2
from pythia_dynamics.architectures.gpt_neox import GPT_NEOX
from pythia_dynamics.architectures.llama import LLAMA, OLMO, OLMO2, SMOLLM3

__all__ = [
    "ArchitectureFamily",
    "ComponentViews",
    "FAMILIES",
    "ModelShape",
    "SUPPORTED_MODEL_TYPES",
    "family_of",
    "is_non_weight",
    "supported_families_text",
]

FAMILIES: dict[str, ArchitectureFamily] = {f.model_type: f for f in (GPT_NEOX, GPT2, LLAMA, SMOLLM3, OLMO, OLMO2)}
# Hugging Face model_type -> the causal-LM class its checkpoints are saved from.
SUPPORTED_MODEL_TYPES: dict[str, str] = {kind: family.hf_class for kind, family in FAMILIES.items()}


def supported_families_text() -> str:
    return ", ".join(f"{f.hf_class} (model_type {kind!r})" for kind, f in FAMILIES.items())


def family_of(config: Any) -> ArchitectureFamily:
    """The family of a Hugging Face config (object or config.json dict); ValueError naming the supported ones."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"no architecture description for model_type {model_type!r}; pythia-dynamics reads {supported_families_text()}"
        )
    return FAMILIES[model_type]


def is_non_weight(name: str) -> bool:
    """A buffer some family saves next to its weights (recomputed, not learned): never hashed or installed."""
    return any(family.is_non_weight(name) for family in FAMILIES.values())
