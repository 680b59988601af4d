"""Where each TransformerLens weight sits in a GPT-NeoX checkpoint, as views of the stored tensors.

`transformer_lens_views(state_dict, n_heads)` maps a Hugging Face GPT-NeoX state dict, exactly as a
checkpoint stores it, to HookedTransformer parameter names (`embed.W_E`, `blocks.0.attn.W_Q`, ...).
Each value is a view of a stored tensor, rearranged the way TransformerLens lays the weight out; the
tensors are the ones TransformerLens's own `convert_neox_weights` builds (a test checks they are equal).
Nothing is copied, so:

- switching an already built HookedTransformer to another checkpoint is one contiguous copy per
  stored tensor (`HookedTransformerFiller`), with no Hugging Face model in between;
- a reference checkpoint (the first or final one, for distances) can be read through
  `ComponentViews` without holding a copy of it: safetensors files are memory-mapped, so its
  weights stay in the page cache, not in the process's own memory.

Raw weights only: folding layer norms (`processed=True`) builds new tensors, which TransformerLens's
`load_and_process_state_dict` does from these views.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

import einops
import torch
from torch import Tensor

from pythia_dynamics.sources.base import StateDict
from pythia_dynamics.weights import COMPONENTS, fused_qkv

__all__ = ["ComponentViews", "HookedTransformerFiller", "NON_WEIGHT_SUFFIXES", "transformer_lens_views"]

log = logging.getLogger(__name__)

# Saved alongside weights by some GPT-NeoX versions; they are recomputed, not learned.
NON_WEIGHT_SUFFIXES = ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq", "original_inv_freq")

# Per block: stored tensor -> the TransformerLens parameters it holds, and how (an einops pattern).
_BLOCK_LAYOUT = {
    "input_layernorm.weight": {"ln1.w": None},
    "input_layernorm.bias": {"ln1.b": None},
    "post_attention_layernorm.weight": {"ln2.w": None},
    "post_attention_layernorm.bias": {"ln2.b": None},
    # GPT-NeoX interleaves Q, K and V per head: rows are (head, qkv, d_head).
    "attention.query_key_value.weight": {f"attn.W_{x}": "(i qkv h) m -> qkv i m h" for x in "QKV"},
    "attention.query_key_value.bias": {f"attn.b_{x}": "(i qkv h) -> qkv i h" for x in "QKV"},
    "attention.dense.weight": {"attn.W_O": "m (i h) -> i h m"},
    "attention.dense.bias": {"attn.b_O": None},
    "mlp.dense_h_to_4h.weight": {"mlp.W_in": "f m -> m f"},
    "mlp.dense_h_to_4h.bias": {"mlp.b_in": None},
    "mlp.dense_4h_to_h.weight": {"mlp.W_out": "m f -> f m"},
    "mlp.dense_4h_to_h.bias": {"mlp.b_out": None},
}
_MODEL_LAYOUT = {
    "gpt_neox.embed_in.weight": ("embed.W_E", None),
    "gpt_neox.final_layer_norm.weight": ("ln_final.w", None),
    "gpt_neox.final_layer_norm.bias": ("ln_final.b", None),
    "embed_out.weight": ("unembed.W_U", "v m -> m v"),
    "lm_head.weight": ("unembed.W_U", "v m -> m v"),  # transformers 5 renamed embed_out
}
_QKV_INDEX = {"Q": 0, "K": 1, "V": 2}


def transformer_lens_views(state_dict: StateDict, n_heads: int) -> dict[str, Tensor]:
    """{HookedTransformer parameter name: view of the stored tensor in TransformerLens's layout}.

    Raises ValueError naming the tensors a GPT-NeoX checkpoint should not have.
    """
    views: dict[str, Tensor] = {}
    unknown = []
    for name, tensor in state_dict.items():
        if name.endswith(NON_WEIGHT_SUFFIXES):
            continue
        if name in _MODEL_LAYOUT:
            target, pattern = _MODEL_LAYOUT[name]
            views[target] = _rearranged(tensor, pattern, n_heads)
            continue
        parts = name.split(".")  # gpt_neox.layers.<l>.<rest>
        rest = ".".join(parts[3:])
        if parts[:2] != ["gpt_neox", "layers"] or rest not in _BLOCK_LAYOUT:
            unknown.append(name)
            continue
        for target, pattern in _BLOCK_LAYOUT[rest].items():
            view = _rearranged(tensor, pattern, n_heads)
            if pattern and "qkv" in pattern:
                view = view[_QKV_INDEX[target[-1]]]
            views[f"blocks.{parts[2]}.{target}"] = view
    if unknown:
        raise ValueError(
            f"not a GPT-NeoX checkpoint: {len(unknown)} tensor(s) with unexpected names, e.g. {sorted(unknown)[:5]}"
        )
    return views


def _rearranged(tensor: Tensor, pattern: str | None, n_heads: int) -> Tensor:
    if pattern is None:
        return tensor
    sizes = {"i": n_heads} | ({"qkv": 3} if "qkv" in pattern else {})
    return einops.rearrange(tensor, pattern, **{k: v for k, v in sizes.items() if k in pattern.split(" -> ")[0]})


class HookedTransformerFiller:
    """Switches a HookedTransformer between checkpoints with one contiguous copy per stored tensor.

    On construction, the model's parameters are re-laid out as the checkpoint stores its tensors:
    each parameter becomes a view (the same rearrangement `transformer_lens_views` applies) into a
    buffer shaped like a stored tensor, so W_Q, W_K and W_V of a layer are three views into one
    buffer shaped like GPT-NeoX's fused query_key_value weight, and W_U is a transposed view of a
    [d_vocab, d_model] buffer. `fill(state_dict)` then copies each stored tensor into its buffer
    with no rearranging (converting dtype and device on the way), which is what makes switching
    cost about one read of the checkpoint. Values, shapes and names of the parameters are exactly
    TransformerLens's; only their strides differ (matmuls accept either).

    Moving the model (`model.to(torch.float16)`, `.to("cuda")`) gives its parameters new tensors that
    no longer view the buffers. `fill` notices and lays the parameters out again first, on the device
    and in the dtype each one has now, so the next checkpoint lands in the weights the model uses.
    """

    def __init__(self, model: torch.nn.Module, state_dict: StateDict):
        self.model = model
        self.shapes = {n: t.shape for n, t in state_dict.items() if not n.endswith(NON_WEIGHT_SUFFIXES)}
        self._lay_out()

    @torch.no_grad()
    def fill(self, state_dict: StateDict) -> None:
        """Copy a checkpoint into the model. Checks every tensor first: a mismatch changes nothing."""
        weights = {n: t for n, t in state_dict.items() if not n.endswith(NON_WEIGHT_SUFFIXES)}
        mismatch = _mismatch(self.buffers, weights)
        if mismatch:
            raise ValueError(f"checkpoint weights do not fit the model built from the first checkpoint: {mismatch}")
        if not self.laid_out():
            log.info("the model's parameters were moved or replaced since the last checkpoint: laying them out again")
            self._lay_out()
        for name, tensor in weights.items():
            self.buffers[name].copy_(tensor)

    def laid_out(self) -> bool:
        """Whether every parameter is still the view of a buffer that `fill` writes."""
        params = dict(self.model.named_parameters())
        return all(name in params and _same_view(params[name], view) for name, view in self.views.items())

    @torch.no_grad()
    def _lay_out(self) -> None:
        params = dict(self.model.named_parameters())
        n_heads = self.model.cfg.n_heads
        # Shapes and which parameters each stored tensor holds, worked out on the meta device (no memory).
        meta = {name: torch.empty(shape, device="meta") for name, shape in self.shapes.items()}
        _check_fits(params, transformer_lens_views(meta, n_heads))
        holders = {name: list(transformer_lens_views({name: tensor}, n_heads)) for name, tensor in meta.items()}
        buffers = {}
        for name, shape in self.shapes.items():
            placements = {(params[p].device, params[p].dtype) for p in holders[name]}
            if len(placements) > 1:
                raise ValueError(
                    f"{', '.join(holders[name])} share the stored tensor {name} but sit on different devices or "
                    f"dtypes ({sorted(map(str, placements))}); move the whole model, not parts of it, between checkpoints"
                )
            device, dtype = placements.pop()
            buffers[name] = torch.empty(shape, dtype=dtype, device=device)
        views = transformer_lens_views(buffers, n_heads)
        for name, view in views.items():
            params[name].data = view
        if "unembed.b_U" in params:  # not a GPT-NeoX weight: TransformerLens sets it to zero
            params["unembed.b_U"].zero_()
        self.buffers, self.views = buffers, views


def _same_view(param: Tensor, view: Tensor) -> bool:
    # The filler holds its buffers, so their memory cannot be reused: an equal address is the same storage.
    return (param.data_ptr(), param.dtype, param.device, param.shape, param.stride()) == (
        view.data_ptr(), view.dtype, view.device, view.shape, view.stride()
    )


def _check_fits(params: dict[str, Tensor], views: dict[str, Tensor]) -> None:
    # The unembedding bias is not a GPT-NeoX weight: TransformerLens sets it to zero.
    mismatch = _mismatch({n: p for n, p in params.items() if n != "unembed.b_U"}, views)
    if mismatch:
        raise ValueError(f"checkpoint weights do not fit a HookedTransformer of this config: {mismatch}")


def _mismatch(expected: dict[str, Tensor], given: dict[str, Tensor]) -> str:
    """What keeps `given` from filling `expected` name for name and shape for shape ('' if nothing)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong_shape = [f"{n} {tuple(t.shape)} != {tuple(expected[n].shape)}" for n, t in given.items()
                   if n in expected and t.shape != expected[n].shape]  # fmt: skip
    if not (missing or unexpected or wrong_shape):
        return ""
    return f"missing {missing[:5]}, unexpected {unexpected[:5]}, size mismatch {wrong_shape[:5]}"


class ComponentViews(Mapping):
    """A checkpoint's weights keyed like `pythia_dynamics.weights.component_weights`, read from its
    stored tensors without copying them (W_QKV, which no stored tensor holds in that layout, is
    assembled when asked for). Values keep the stored dtype and device."""

    def __init__(self, state_dict: StateDict, n_layers: int, n_heads: int):
        self._views = transformer_lens_views(state_dict, n_heads)
        self._keys = [(c, layer) for layer in range(n_layers) for c in COMPONENTS[: COMPONENTS.index("W_E")]]
        self._keys += [(c, None) for c in COMPONENTS[COMPONENTS.index("W_E") :]]

    def __getitem__(self, key: tuple[str, int | None]) -> Tensor:
        component, layer = key
        if key not in self._keys:
            raise KeyError(key)
        if component == "W_QKV":
            return fused_qkv(*(self[(f"W_{x}", layer)] for x in "QKV"))
        if layer is None:
            return self._views[{"W_E": "embed.W_E", "W_U": "unembed.W_U"}.get(component, component)]
        module = "attn" if component[2:] in ("Q", "K", "V", "O") else "mlp" if component[2:] in ("in", "out") else None
        return self._views[f"blocks.{layer}.{module}.{component}" if module else f"blocks.{layer}.{component}"]

    def __iter__(self) -> Iterator[tuple[str, int | None]]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
