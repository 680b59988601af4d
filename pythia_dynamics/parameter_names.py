"""Trained parameters by TransformerLens component name, whichever backend holds them.

Gradients live on `named_parameters()`, whose names differ: HookedTransformer uses TransformerLens names
(`blocks.1.mlp.W_out`), TransformerBridge the wrapped GPT-NeoX module's (`gpt_neox.layers.1.mlp.
dense_4h_to_h.weight`, with split `attention.q/k/v`). Entry-wise statistics (norms, moments, histograms)
do not depend on a tensor's layout, so mapping names is all it takes to compare them.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

__all__ = ["component_gradients", "component_of_parameter"]

_HF_BLOCK_SUFFIXES = {
    "input_layernorm.weight": "ln1.w", "input_layernorm.bias": "ln1.b",
    "post_attention_layernorm.weight": "ln2.w", "post_attention_layernorm.bias": "ln2.b",
    "attention.q.weight": "W_Q", "attention.q.bias": "b_Q", "attention.k.weight": "W_K",
    "attention.k.bias": "b_K", "attention.v.weight": "W_V", "attention.v.bias": "b_V",
    "attention.o.weight": "W_O", "attention.o.bias": "b_O",
    "attention.dense.weight": "W_O", "attention.dense.bias": "b_O",
    "attention.query_key_value.weight": "W_QKV",
    "mlp.dense_h_to_4h.weight": "W_in", "mlp.dense_h_to_4h.bias": "b_in",
    "mlp.dense_4h_to_h.weight": "W_out", "mlp.dense_4h_to_h.bias": "b_out",
}  # fmt: skip
_MODEL_LEVEL = {
    "embed.W_E": "W_E", "gpt_neox.embed_in.weight": "W_E",
    "unembed.W_U": "W_U", "lm_head.weight": "W_U", "embed_out.weight": "W_U",
    "ln_final.w": "ln_final.w", "ln_final.b": "ln_final.b",
    "gpt_neox.final_layer_norm.weight": "ln_final.w", "gpt_neox.final_layer_norm.bias": "ln_final.b",
}  # fmt: skip
_HF_BLOCK = re.compile(r"^gpt_neox\.layers\.(\d+)\.(.+)$")


def component_of_parameter(name: str) -> tuple[str, int | None] | None:
    """('W_out', 1) for either backend's name of block 1's MLP output weight; None if not a Pythia weight.

    The unembedding bias both backends add (always zero in GPT-NeoX) maps to None.
    """
    name = name.replace("._original_component", "")
    if name in _MODEL_LEVEL:
        return _MODEL_LEVEL[name], None
    if m := _HF_BLOCK.match(name):
        component = _HF_BLOCK_SUFFIXES.get(m.group(2))
        return (component, int(m.group(1))) if component else None
    if m := re.match(r"^blocks\.(\d+)\.(attn|mlp)\.(\w+)$", name):
        return m.group(3), int(m.group(1))
    if m := re.match(r"^blocks\.(\d+)\.(ln1|ln2)\.(w|b)$", name):
        return f"{m.group(2)}.{m.group(3)}", int(m.group(1))
    return None


def component_gradients(grads: dict[str, Tensor]) -> dict[tuple[str, int | None], Tensor]:
    """{(component, layer): gradient} with a fused W_QKV entry (Q, K and V flattened together) per block."""
    out: dict[tuple[str, int | None], Tensor] = {}
    for name, grad in grads.items():
        key = component_of_parameter(name)
        if key is not None:
            out[key] = grad
    layers = sorted({layer for (component, layer) in out if component in ("W_Q", "W_K", "W_V")})
    for layer in layers:
        if ("W_QKV", layer) not in out:
            out[("W_QKV", layer)] = torch.cat([out[(c, layer)].flatten() for c in ("W_Q", "W_K", "W_V")])
    return out
