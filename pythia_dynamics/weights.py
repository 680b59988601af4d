"""A model's weights by TransformerLens component name and layer: the matrices the analyses read.

Both HookedTransformer and TransformerBridge expose the stacked views used here (`W_Q`, `b_in`, ...)
and layer norms as `.w`/`.b`, so this works on either. `W_QKV` is the fused view the source study
plotted (GPT-NeoX's `query_key_value`): Q, K and V of all heads side by side, d_model rows.

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

__all__ = ["COMPONENTS", "component_weights", "float64_blocks", "fused_qkv"]

# In the order reports list them. Layer norms and biases are tracked like matrices, as in the study.
BLOCK_COMPONENTS = [
    "W_QKV", "W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "W_O", "b_O",
    "W_in", "b_in", "W_out", "b_out", "ln1.w", "ln1.b", "ln2.w", "ln2.b",
]  # fmt: skip
MODEL_COMPONENTS = ["W_E", "W_U", "ln_final.w", "ln_final.b"]
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


@torch.no_grad()
def component_weights(model) -> dict[tuple[str, int | None], Tensor]:
    """{(component, layer): tensor} for every component in COMPONENTS; layer is None for W_E etc.

    Each block's own tensors (`block.attn.W_Q`, `block.mlp.W_in`, ...), equal to `model.W_Q[layer]`
    and the like: the model-level stacks are fresh copies of every block's tensors on each access."""
    weights: dict[tuple[str, int | None], Tensor] = {}
    for layer, block in enumerate(model.blocks):
        attn = {name: getattr(block.attn, name).detach() for name in _ATTENTION}
        weights[("W_QKV", layer)] = fused_qkv(attn["W_Q"], attn["W_K"], attn["W_V"])
        weights.update({(name, layer): tensor for name, tensor in attn.items()})
        weights.update({(name, layer): getattr(block.mlp, name).detach() for name in _MLP})
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
