"""A model's weights by TransformerLens component name and layer: the matrices the analyses read.

Both HookedTransformer and TransformerBridge expose the stacked views used here (`W_Q`, `b_in`, ...)
and layer norms as `.w`/`.b`, so this works on either. `W_QKV` is the fused view the source study
plotted (GPT-NeoX's `query_key_value`): Q, K and V of all heads side by side, d_model rows.
"""

from __future__ import annotations

import einops
import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["COMPONENTS", "component_weights", "fused_qkv"]

# In the order reports list them. Layer norms and biases are tracked like matrices, as in the study.
BLOCK_COMPONENTS = [
    "W_QKV", "W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "W_O", "b_O",
    "W_in", "b_in", "W_out", "b_out", "ln1.w", "ln1.b", "ln2.w", "ln2.b",
]  # fmt: skip
MODEL_COMPONENTS = ["W_E", "W_U", "ln_final.w", "ln_final.b"]
COMPONENTS = BLOCK_COMPONENTS + MODEL_COMPONENTS


def fused_qkv(
    W_Q: Float[Tensor, "head d_model d_head"],
    W_K: Float[Tensor, "head d_model d_head"],
    W_V: Float[Tensor, "head d_model d_head"],
) -> Float[Tensor, "d_model qkv_head_d_head"]:
    stacked = torch.stack([W_Q, W_K, W_V])
    return einops.rearrange(stacked, "qkv head d_model d_head -> d_model (qkv head d_head)")


@torch.no_grad()
def component_weights(model) -> dict[tuple[str, int | None], Tensor]:
    """{(component, layer): tensor} for every component in COMPONENTS; layer is None for W_E etc."""
    stacked = {name: getattr(model, name).detach() for name in ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V",
                                                                 "W_O", "b_O", "W_in", "b_in", "W_out", "b_out")}  # fmt: skip
    weights: dict[tuple[str, int | None], Tensor] = {}
    for layer, block in enumerate(model.blocks):
        weights[("W_QKV", layer)] = fused_qkv(stacked["W_Q"][layer], stacked["W_K"][layer], stacked["W_V"][layer])
        for name, tensor in stacked.items():
            weights[(name, layer)] = tensor[layer]
        for norm in ("ln1", "ln2"):
            weights.update(_norm_weights(getattr(block, norm), norm, layer))
    weights[("W_E", None)] = model.W_E.detach()
    weights[("W_U", None)] = model.W_U.detach()
    weights.update(_norm_weights(model.ln_final, "ln_final", None))
    ordered = {c: i for i, c in enumerate(COMPONENTS)}
    return dict(sorted(weights.items(), key=lambda kv: (kv[0][1] if kv[0][1] is not None else 1 << 30, ordered[kv[0][0]])))


def _norm_weights(norm: torch.nn.Module, name: str, layer: int | None) -> dict:
    # Processed (folded) models have parameter-free LNPre layer norms: nothing to report there.
    return {(f"{name}.{p}", layer): getattr(norm, p).detach() for p in ("w", "b") if hasattr(norm, p)}
