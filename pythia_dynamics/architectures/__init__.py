"""One description per architecture family: how its checkpoints store the weights TransformerLens names.

Nothing outside this package (and the two installers that consume its descriptions) knows how a
checkpoint's tensors are laid out.
"""

from __future__ import annotations

__all__ = ["SUPPORTED_MODEL_TYPES", "supported_families_text"]

# Hugging Face model_type -> the causal-LM class its checkpoints are saved from.
SUPPORTED_MODEL_TYPES: dict[str, str] = {
    "gpt_neox": "GPTNeoXForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "olmo": "OlmoForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
}


def supported_families_text() -> str:
    return ", ".join(f"{cls} (model_type {kind!r})" for kind, cls in SUPPORTED_MODEL_TYPES.items())
