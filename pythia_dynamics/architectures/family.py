"""What an architecture family description says, and the views of stored tensors it defines.

A description is data: for every tensor a checkpoint of the family stores, the TransformerLens
parameters it holds and how (an einops pattern from the stored layout to TransformerLens's). From that
alone, `ArchitectureFamily.views(state_dict, config)` maps a Hugging Face state dict, exactly as stored,
to TransformerLens parameter names (`embed.W_E`, `blocks.0.attn.W_Q`, `blocks.0.mlp.W_gate`, ...) as
views of the stored tensors: nothing is copied. The two installers (`pythia_dynamics.installers`) and
the reference-checkpoint reader (`ComponentViews`) consume these views; no other module knows how a
family lays its tensors out.

Pattern axes: `i` query heads, `j` key/value heads (fewer than `i` under grouped-query attention),
`h` d_head, `m` d_model, `f` d_mlp, `v` d_vocab, `qkv` the three of a fused projection.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import einops
from torch import Tensor

__all__ = ["ArchitectureFamily", "ComponentViews", "ModelShape"]


@dataclass(frozen=True)
class ModelShape:
    """The sizes the patterns need, read from a Hugging Face config of any family."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    tied_embeddings: bool

    @classmethod
    def of(cls, config: Any) -> ModelShape:
        n_heads = config.num_attention_heads
        return cls(
            n_layers=config.num_hidden_layers,
            n_heads=n_heads,
            n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )

    @classmethod
    def of_hooked(cls, cfg: Any) -> ModelShape:
        """From a HookedTransformerConfig (which does not record whether embeddings are tied)."""
        return cls(cfg.n_layers, cfg.n_heads, getattr(cfg, "n_key_value_heads", None) or cfg.n_heads, False)


@dataclass(frozen=True)
class ArchitectureFamily:
    """How one family's checkpoints store the weights TransformerLens names."""

    name: str  # as people write it: "GPT-NeoX", "LLaMA"
    model_type: str  # Hugging Face config's model_type
    hf_class: str  # the causal-LM class checkpoints are saved from
    block_prefix: str  # stored names of block l start with f"{block_prefix}.{l}."
    # stored name after the block prefix -> {TransformerLens name inside the block: pattern or None}
    block_layout: Mapping[str, Mapping[str, str | None]]
    # stored name -> (TransformerLens name, pattern or None)
    model_layout: Mapping[str, tuple[str, str | None]]
    # the stored tensor the unembedding is read from when the config ties it to the embedding
    tied_unembedding: tuple[str, str] | None = None
    # buffers some versions save next to weights; they are recomputed, not learned (regexes on the full name)
    non_weights: tuple[str, ...] = ()
    # Hugging Face renamed some tensors between versions: {old prefix: new prefix}, tried both ways
    renames: Mapping[str, str] = field(default_factory=dict)
    # whether TransformerLens's HookedTransformer can be built from a local config.json of this family
    # (its name-keyed configs, such as OLMo's, need an official model name)
    hooked_transformer: bool = True
    # for fused Q/K/V projections, the attribute of the HF attention module that holds them
    fused_qkv_module: str | None = None
    post_norm: bool = False  # layer norms after each sublayer (OLMo-2), not before

    def is_non_weight(self, name: str) -> bool:
        return any(re.search(pattern, name) for pattern in self.non_weights)

    def views(self, state_dict: Mapping[str, Tensor], shape: ModelShape, *, strict: bool = True) -> dict[str, Tensor]:
        """{TransformerLens name: view of the stored tensor in TransformerLens's layout}.

        Raises ValueError naming the tensors this family's checkpoints should not have (with `strict`;
        otherwise they are skipped: a model's own parameters include copies no checkpoint stores).
        """
        views: dict[str, Tensor] = {}
        unknown = []
        block = re.compile(rf"^{re.escape(self.block_prefix)}\.(\d+)\.(.+)$")
        for name, tensor in state_dict.items():
            if self.is_non_weight(name):
                continue
            stored = self._canonical(name)
            if stored in self.model_layout:
                target, pattern = self.model_layout[stored]
                views[target] = self._rearranged(tensor, pattern, shape)
                continue
            m = block.match(stored)
            if m is None or m.group(2) not in self.block_layout:
                unknown.append(name)
                continue
            for target, pattern in self.block_layout[m.group(2)].items():
                view = self._rearranged(tensor, pattern, shape)
                if pattern and pattern.split(" -> ")[1].startswith("qkv"):  # one of a fused Q/K/V
                    view = view["QKV".index(target[-1])]
                views[f"blocks.{m.group(1)}.{target}"] = view
        if shape.tied_embeddings and self.tied_unembedding and "unembed.W_U" not in views:
            source, pattern = self.tied_unembedding
            if source in state_dict:
                views["unembed.W_U"] = self._rearranged(state_dict[source], pattern, shape)
        if unknown and strict:
            raise ValueError(
                f"not a {self.name} checkpoint: {len(unknown)} tensor(s) with unexpected names, e.g. {sorted(unknown)[:5]}"
            )
        return views

    def transformer_lens_names(self, shape: ModelShape) -> set[str]:
        """Every TransformerLens parameter name a checkpoint of this family fills (W_U even where tied)."""
        names = {target for target, _ in self.model_layout.values()}
        for targets in self.block_layout.values():
            names |= {f"blocks.{layer}.{target}" for target in targets for layer in range(shape.n_layers)}
        return names

    def stored_name(self, name: str, available: set[str]) -> str | None:
        """`name` as spelled in `available` (a model's own names), trying this family's renames."""
        if name in available:
            return name
        for old, new in list(self.renames.items()) + [(n, o) for o, n in self.renames.items()]:
            if name.startswith(old) and new + name[len(old) :] in available:
                return new + name[len(old) :]
        return None

    def _canonical(self, name: str) -> str:
        for old, new in self.renames.items():
            if name.startswith(old):
                return new + name[len(old) :]
        return name

    @staticmethod
    def _rearranged(tensor: Tensor, pattern: str | None, shape: ModelShape) -> Tensor:
        if pattern is None:
            return tensor
        before = pattern.split(" -> ")[0]
        sizes = {"i": shape.n_heads, "j": shape.n_kv_heads, "qkv": 3}
        return einops.rearrange(tensor, pattern, **{k: v for k, v in sizes.items() if re.search(rf"\b{k}\b", before)})


# TransformerLens parameter name inside a block -> (analysis component, module the component sits in)
_BLOCK_COMPONENT = {
    "attn.W_Q": "W_Q", "attn.W_K": "W_K", "attn.W_V": "W_V", "attn.W_O": "W_O",
    "attn.b_Q": "b_Q", "attn.b_K": "b_K", "attn.b_V": "b_V", "attn.b_O": "b_O",
    "attn.q_norm.w": "q_norm.w", "attn.k_norm.w": "k_norm.w",
    "mlp.W_in": "W_in", "mlp.W_gate": "W_gate", "mlp.W_out": "W_out", "mlp.b_in": "b_in", "mlp.b_out": "b_out",
    "ln1.w": "ln1.w", "ln1.b": "ln1.b", "ln2.w": "ln2.w", "ln2.b": "ln2.b",
}  # fmt: skip
_MODEL_COMPONENT = {
    "embed.W_E": "W_E", "pos_embed.W_pos": "W_pos", "unembed.W_U": "W_U", "ln_final.w": "ln_final.w", "ln_final.b": "ln_final.b",
}  # fmt: skip


def component_of_transformer_lens_name(name: str) -> tuple[str, int | None] | None:
    """('W_in', 3) for 'blocks.3.mlp.W_in'; None for a name no analysis tracks."""
    if name in _MODEL_COMPONENT:
        return _MODEL_COMPONENT[name], None
    m = re.match(r"^blocks\.(\d+)\.(.+)$", name)
    if m and m.group(2) in _BLOCK_COMPONENT:
        return _BLOCK_COMPONENT[m.group(2)], int(m.group(1))
    return None


class ComponentViews(Mapping):
    """A checkpoint's weights keyed like `pythia_dynamics.weights.component_weights`, read from its stored
    tensors without copying them (W_QKV, which no stored tensor holds in that layout, is assembled when
    asked for, for families that fuse Q, K and V). Values keep the stored dtype and device."""

    def __init__(self, family: ArchitectureFamily, state_dict: Mapping[str, Tensor], shape: ModelShape):
        from pythia_dynamics.weights import sort_components

        self._by_key = {}
        for name, view in family.views(state_dict, shape).items():
            key = component_of_transformer_lens_name(name)
            if key is not None:
                self._by_key[key] = view
        self._fused = family.fused_qkv_module is not None
        keys = list(self._by_key) + ([("W_QKV", layer) for layer in range(shape.n_layers)] if self._fused else [])
        self._keys = sort_components(keys)

    def __getitem__(self, key: tuple[str, int | None]) -> Tensor:
        from pythia_dynamics.weights import fused_qkv

        component, layer = key
        if component == "W_QKV" and self._fused and key in self._keys:
            return fused_qkv(*(self._by_key[(f"W_{x}", layer)] for x in "QKV"))
        return self._by_key[key]

    def __iter__(self) -> Iterator[tuple[str, int | None]]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
