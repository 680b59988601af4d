"""Trained parameters by TransformerLens component name, whichever backend and family hold them.

Gradients live on `named_parameters()`, whose names differ: HookedTransformer uses TransformerLens names
(`blocks.1.mlp.W_out`, `blocks.1.attn._W_K` under grouped-query attention), TransformerBridge the wrapped
Hugging Face module's (`gpt_neox.layers.1.mlp.dense_4h_to_h.weight`, `model.layers.1.mlp.down_proj.weight`),
with fused Q/K/V projections split into `q`/`k`/`v` linears (the copies the forward pass reads, so the ones
with gradients). The Hugging Face names are read through the family descriptions
(`pythia_dynamics.architectures`). Entry-wise statistics (norms, moments, histograms) do not depend on a
tensor's layout, so mapping names is all it takes to compare them.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from pythia_dynamics.architectures import FAMILIES, ArchitectureFamily
from pythia_dynamics.architectures.family import component_of_transformer_lens_name
from pythia_dynamics.installers.hooked import GROUPED_NAMES

__all__ = ["component_gradients", "component_of_parameter"]

# HookedTransformer's names for un-expanded grouped-query K/V ("_W_K") -> TransformerLens's ("W_K").
_GROUPED = {grouped.split(".")[-1]: plain.split(".")[-1] for plain, grouped in GROUPED_NAMES.items()}
# The q/k/v/o linears TransformerBridge puts inside an attention module (split copies of a fused projection).
_BRIDGE_SPLIT = re.compile(r"^(?:attention|attn|self_attn)\.([qkvo])\.(weight|bias)$")


def component_of_parameter(name: str, family: ArchitectureFamily | None = None) -> tuple[str, int | None] | None:
    """('W_out', 1) for either backend's name of block 1's MLP output weight; None if no analysis tracks it.

    `family` limits Hugging Face names to one family's (all families are tried otherwise). The unembedding
    bias both backends add (always zero) maps to None.
    """
    name = name.replace("._original_component", "")
    if name.startswith("blocks.") or name in ("embed.W_E", "pos_embed.W_pos", "unembed.W_U", "ln_final.w", "ln_final.b"):
        parts = name.split(".")
        parts[-1] = _GROUPED.get(parts[-1], parts[-1])
        return component_of_transformer_lens_name(".".join(parts))
    for candidate in [family] if family else FAMILIES.values():
        key = _hf_component(name, candidate)
        if key is not None:
            return key
    return None


def _hf_component(name: str, family: ArchitectureFamily) -> tuple[str, int | None] | None:
    stored = family.stored_name(name, set(family.model_layout)) or name
    if stored in family.model_layout:
        return component_of_transformer_lens_name(family.model_layout[stored][0])
    m = re.match(rf"^{re.escape(family.block_prefix)}\.(\d+)\.(.+)$", name)
    if m is None:
        return None
    layer, rest = int(m.group(1)), m.group(2)
    if split := _BRIDGE_SPLIT.match(rest):
        kind = "W" if split.group(2) == "weight" else "b"
        return f"{kind}_{split.group(1).upper()}", layer
    targets = list(family.block_layout.get(rest, {}))
    if len(targets) == 3:  # a fused Q/K/V projection: its weight is W_QKV (the bias is tracked as b_Q/b_K/b_V)
        return ("W_QKV", layer) if rest.endswith("weight") else None
    if len(targets) == 1:
        key = component_of_transformer_lens_name(f"blocks.{layer}.{targets[0]}")
        return key
    return None


def component_gradients(grads: dict[str, Tensor], family: ArchitectureFamily | None = None) -> dict[tuple[str, int | None], Tensor]:
    """{(component, layer): gradient} with a fused W_QKV entry (Q, K and V flattened together) per block for
    families that fuse them. With `family`, only the weights its checkpoints store (not the zero biases
    HookedTransformer adds to LLaMA-style models)."""
    stored = None if family is None else _stored_components(family)
    out: dict[tuple[str, int | None], Tensor] = {}
    for name, grad in grads.items():
        key = component_of_parameter(name, family)
        if key is not None and (stored is None or key[0] in stored):
            out[key] = grad
    fused = family is None or family.fused_qkv_module is not None
    layers = sorted({layer for (component, layer) in out if component in ("W_Q", "W_K", "W_V")})
    for layer in layers if fused else []:
        if ("W_QKV", layer) not in out:
            out[("W_QKV", layer)] = torch.cat([out[(c, layer)].flatten() for c in ("W_Q", "W_K", "W_V")])
    return out


def _stored_components(family: ArchitectureFamily) -> set[str]:
    """The components a checkpoint of `family` stores (plus W_QKV where Q, K and V are fused)."""
    names = [target for target, _ in family.model_layout.values()]
    names += [f"blocks.0.{target}" for targets in family.block_layout.values() for target in targets]
    components = {key[0] for name in names if (key := component_of_transformer_lens_name(name)) is not None}
    return components | ({"W_QKV"} if family.fused_qkv_module else set())
