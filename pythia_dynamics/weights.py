"""A model's weights by TransformerLens component name and layer: the matrices the analyses read.

Which components: exactly the weights the model's checkpoints store, by their TransformerLens names
(`pythia_dynamics.architectures`): GPT-NeoX and GPT-2 have biases and LayerNorm weights and biases;
LLaMA-style models have none of the biases TransformerLens adds as zeros, RMSNorm weights only, and
a gated MLP (`W_gate`); OLMo-1 has no norm weights at all; OLMo-2 adds `q_norm.w` and `k_norm.w`;
GPT-2 has learned positions (`W_pos`). Under grouped-query attention W_K and W_V have the key/value
heads as stored, not TransformerLens's expanded copies. `W_QKV` is the fused view the source study
plotted (GPT-NeoX's `query_key_value`): Q, K and V of all heads side by side, d_model rows; only for
families that store Q, K and V fused (GPT-NeoX, GPT-2).

`float64_blocks` is how the analyses sum over a tensor's entries in float64 without a float64 copy of
the whole tensor (exact: float32, float16 and bfloat16 all convert to float64 exactly).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import einops
import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["COMPONENTS", "component_weights", "float64_blocks", "fused_qkv", "sort_components"]

# In the order reports list them. Layer norms and biases are tracked like matrices, as in the study.
BLOCK_COMPONENTS = [
    "W_QKV", "W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "q_norm.w", "k_norm.w", "W_O", "b_O",
    "W_gate", "W_in", "b_in", "W_out", "b_out", "ln1.w", "ln1.b", "ln2.w", "ln2.b",
]  # fmt: skip
MODEL_COMPONENTS = ["W_E", "W_pos", "W_U", "ln_final.w", "ln_final.b"]
COMPONENTS = BLOCK_COMPONENTS + MODEL_COMPONENTS
_ATTENTION = ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "W_O", "b_O")
_MLP = ("W_in", "b_in", "W_out", "b_out")
# 2 MiB of float64 per block: still in cache when the reductions read what the conversion wrote.
BLOCK_ELEMENTS = 1 << 18


def fused_qkv(
    W_Q: Float[Tensor, "head d_model d_head"],
    W_K: Float[Tensor, "head d_model d_head"],
    W_V: Float[Tensor, "head d_model d_head"],
) -> Float[Tensor, "d_model qkv_head_d_head"]:
    stacked = torch.stack([W_Q, W_K, W_V])
    return einops.rearrange(stacked, "qkv head d_model d_head -> d_model (qkv head d_head)")


def sort_components(keys) -> list[tuple[str, int | None]]:
    """(component, layer) keys in report order: block by block, then the model-level ones."""
    ordered = {c: i for i, c in enumerate(COMPONENTS)}
    return sorted(keys, key=lambda key: (key[1] if key[1] is not None else 1 << 30, ordered[key[0]]))


@torch.no_grad()
def component_weights(model) -> dict[tuple[str, int | None], Tensor]:
    """{(component, layer): tensor} for the weights the model's checkpoints store; layer is None for W_E etc.

    Raw models: the installed parameters by TransformerLens name (`installers.transformer_lens_parameters`:
    views of what a checkpoint stores, on either backend). Processed models (folded layer norms): each
    block's own tensors (`block.attn.W_Q`, `block.mlp.W_in`, ...), equal to `model.W_Q[layer]` and the
    like (the model-level stacks are fresh copies of every block's tensors on each access)."""
    from pythia_dynamics.architectures.family import component_of_transformer_lens_name
    from pythia_dynamics.installers import family_of_model, transformer_lens_parameters

    params = transformer_lens_parameters(model)
    if params is None:
        return _processed_component_weights(model)
    weights = {}
    for name, tensor in params.items():
        key = component_of_transformer_lens_name(name)
        if key is not None:
            weights[key] = tensor.detach()
    if family_of_model(model).fused_qkv_module:
        for layer in range(model.cfg.n_layers):
            weights[("W_QKV", layer)] = fused_qkv(*(weights[(f"W_{x}", layer)] for x in "QKV"))
    return {key: weights[key] for key in sort_components(weights)}


def _processed_component_weights(model) -> dict[tuple[str, int | None], Tensor]:
    from pythia_dynamics.installers import family_of_model

    fused = family_of_model(model).fused_qkv_module is not None
    weights: dict[tuple[str, int | None], Tensor] = {}
    for layer, block in enumerate(model.blocks):
        attn = {name: getattr(block.attn, name).detach() for name in _ATTENTION}
        if fused:
            weights[("W_QKV", layer)] = fused_qkv(attn["W_Q"], attn["W_K"], attn["W_V"])
        weights.update({(name, layer): tensor for name, tensor in attn.items()})
        weights.update({(name, layer): getattr(block.mlp, name).detach() for name in _MLP})
        if getattr(block.mlp, "W_gate", None) is not None:  # a bridge answers None for an MLP without a gate
            weights[("W_gate", layer)] = block.mlp.W_gate.detach()
        for norm in ("ln1", "ln2"):
            weights.update(_norm_weights(getattr(block, norm), norm, layer))
    weights[("W_E", None)] = model.W_E.detach()
    weights[("W_U", None)] = model.W_U.detach()
    weights.update(_norm_weights(model.ln_final, "ln_final", None))
    return {key: weights[key] for key in sort_components(weights)}


def _norm_weights(norm: torch.nn.Module, name: str, layer: int | None) -> dict:
    # Processed (folded) models have parameter-free LNPre layer norms: nothing to report there.
    return {(f"{name}.{p}", layer): getattr(norm, p).detach() for p in ("w", "b") if hasattr(norm, p)}


def float64_blocks(*tensors: Tensor, elements: int | None = None) -> Iterator[tuple[Tensor, ...]]:
    """Same-shaped tensors in float64, the same block of each at a time, on the first one's device.

    For sums over all entries, which do not depend on the order they are read in: the tensors are
    walked in the first one's memory order (W_U as a transposed view of the stored [d_vocab, d_model]
    matrix is read as that matrix), a tensor over `elements` entries in tiles of about that many (its
    dims after the memory-order permutation flattened to a matrix). Each block is copied into a buffer
    reused for every block (contiguous, so `.view(-1)` works): converting a 50304 x 512 matrix whole
    instead writes a fresh 200 MB, which costs several times more than the reductions run on it.
    """
    elements = elements or BLOCK_ELEMENTS
    shape = tensors[0].shape
    if any(t.shape != shape for t in tensors):
        raise ValueError(f"float64_blocks needs same-shaped tensors, got {[tuple(t.shape) for t in tensors]}")
    order = sorted(range(len(shape)), key=lambda d: -tensors[0].stride(d))
    tensors = [t.permute(order) for t in tensors]
    device = tensors[0].device
    if tensors[0].numel() <= elements or len(shape) < 2:
        yield tuple(torch.empty(t.shape, dtype=torch.float64, device=device).copy_(t) for t in tensors)
        return
    matrices = [t.flatten(0, -2) for t in tensors]
    n_rows, n_cols = matrices[0].shape
    cols = min(n_cols, max(math.isqrt(elements), elements // n_rows))
    rows = min(n_rows, elements // cols)
    buffers = [torch.empty(rows * cols, dtype=torch.float64, device=device) for _ in matrices]
    for row in range(0, n_rows, rows):
        for col in range(0, n_cols, cols):
            tiles = [m[row : row + rows, col : col + cols] for m in matrices]
            yield tuple(b[: tile.numel()].view(tile.shape).copy_(tile) for b, tile in zip(buffers, tiles))
