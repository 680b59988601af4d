"""The only module that knows which TransformerLens is installed.

TransformerLens 3.x has both `HookedTransformer` and `TransformerBridge`; 4.x removed
`HookedTransformer` (importing it raises ImportError, not AttributeError). Everything else in the
package asks this module what exists, never branching on versions. How checkpoints get into either
model is `pythia_dynamics.installers`' business.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import version
from typing import Any

__all__ = [
    "HookedTransformer",
    "JointQKVAttentionBridge",
    "TL_VERSION",
    "TransformerBridge",
    "available_backends",
    "get_pretrained_model_config",
    "has_hooked_transformer",
    "has_transformer_bridge",
    "is_hooked_transformer",
    "is_transformer_bridge",
]

TL_VERSION = version("transformer-lens")


def _optional(module: str, name: str) -> Any | None:
    try:
        return getattr(import_module(module), name)
    except (ImportError, AttributeError):
        return None


HookedTransformer = _optional("transformer_lens", "HookedTransformer")
TransformerBridge = _optional("transformer_lens.model_bridge", "TransformerBridge")
# 3.x: builds a HookedTransformerConfig from a local config.json.
get_pretrained_model_config = _optional("transformer_lens.loading_from_pretrained", "get_pretrained_model_config")
# The bridge component that splits a fused Q/K/V projection into separate q, k and v linears.
JointQKVAttentionBridge = _optional("transformer_lens.model_bridge.generalized_components", "JointQKVAttentionBridge")


def has_hooked_transformer() -> bool:
    return HookedTransformer is not None


def has_transformer_bridge() -> bool:
    return TransformerBridge is not None


def available_backends() -> list[str]:
    return [name for name, ok in (("hooked", has_hooked_transformer()), ("bridge", has_transformer_bridge())) if ok]


def is_hooked_transformer(model: Any) -> bool:
    return HookedTransformer is not None and isinstance(model, HookedTransformer)


def is_transformer_bridge(model: Any) -> bool:
    return TransformerBridge is not None and isinstance(model, TransformerBridge)
