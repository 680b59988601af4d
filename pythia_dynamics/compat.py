"""The only module that knows which TransformerLens is installed.

TransformerLens 3.x has both `HookedTransformer` and `TransformerBridge`; 4.x removed
`HookedTransformer` (importing it raises ImportError, not AttributeError). Everything else in the
package asks this module what exists and calls the functions here, never branching on versions.
"""

from __future__ import annotations

import warnings
from importlib import import_module
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "TL_VERSION",
    "available_backends",
    "boot_bridge",
    "build_hooked_transformer",
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


_HookedTransformer = _optional("transformer_lens", "HookedTransformer")
_TransformerBridge = _optional("transformer_lens.model_bridge", "TransformerBridge")


def has_hooked_transformer() -> bool:
    return _HookedTransformer is not None


def has_transformer_bridge() -> bool:
    return _TransformerBridge is not None


def available_backends() -> list[str]:
    return [name for name, ok in (("hooked", has_hooked_transformer()), ("bridge", has_transformer_bridge())) if ok]


def is_hooked_transformer(model: Any) -> bool:
    return _HookedTransformer is not None and isinstance(model, _HookedTransformer)


def is_transformer_bridge(model: Any) -> bool:
    return _TransformerBridge is not None and isinstance(model, _TransformerBridge)


def build_hooked_transformer(config_dir: Path, tokenizer, *, processed: bool, device: str, dtype: torch.dtype):
    """An empty HookedTransformer for the GPT-NeoX config in `config_dir` (no Hub access)."""
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    cfg = get_pretrained_model_config(str(config_dir), fold_ln=processed, device=device, dtype=dtype)
    cfg.tokenizer_name = None  # the tokenizer comes from the source, never fetched by name
    with warnings.catch_warnings():
        # 3.x deprecates HookedTransformer in favour of the bridge; choosing it here is deliberate.
        warnings.filterwarnings("ignore", "HookedTransformer is deprecated", DeprecationWarning)
        return _HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=True)


def load_into_hooked_transformer(model, hf_model: torch.nn.Module, *, processed: bool) -> None:
    """Copy a GPT-NeoX Hugging Face model's weights into an existing HookedTransformer, in place."""
    from transformer_lens.pretrained.weight_conversions.neox import convert_neox_weights

    state_dict = convert_neox_weights(hf_model, model.cfg)
    if processed:
        model.load_and_process_state_dict(
            state_dict, fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
        )
    else:
        # strict=False only because the attention masks and rotary tables are buffers, not weights.
        result = model.load_state_dict(state_dict, strict=False)
        if result.unexpected_keys or any(".W_" in k or ".b_" in k for k in result.missing_keys):
            raise RuntimeError(f"weights did not map onto the HookedTransformer: {result}")


def boot_bridge(hf_model: torch.nn.Module, tokenizer, name: str, *, processed: bool, device: str, dtype: torch.dtype):
    """Wrap a Hugging Face model (which the bridge mutates) in a TransformerBridge, with no Hub access."""
    bridge = _TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype)
    if tokenizer is None:
        # TransformerLens 4 boots a placeholder tokenizer when given none; a missing one should stay missing.
        bridge.tokenizer = None
    if processed:
        bridge.enable_compatibility_mode()
    return bridge
