"""The only module that knows which TransformerLens is installed.

TransformerLens 3.x has both `HookedTransformer` and `TransformerBridge`; 4.x removed
`HookedTransformer` (importing it raises ImportError, not AttributeError). Everything else in the
package asks this module what exists and calls the functions here, never branching on versions.
"""

from __future__ import annotations

import warnings
import weakref
from importlib import import_module
from importlib.metadata import version
from pathlib import Path
from typing import Any

import einops
import torch

from pythia_dynamics.neox_layout import NON_WEIGHT_SUFFIXES

__all__ = [
    "TL_VERSION",
    "available_backends",
    "boot_bridge",
    "build_hooked_transformer",
    "has_hooked_transformer",
    "has_transformer_bridge",
    "is_hooked_transformer",
    "is_transformer_bridge",
    "load_processed_into_hooked_transformer",
    "refill_bridge",
]

TL_VERSION = version("transformer-lens")


def _optional(module: str, name: str) -> Any | None:
    try:
        return getattr(import_module(module), name)
    except (ImportError, AttributeError):
        return None


_HookedTransformer = _optional("transformer_lens", "HookedTransformer")
_TransformerBridge = _optional("transformer_lens.model_bridge", "TransformerBridge")
_JointQKVAttentionBridge = _optional("transformer_lens.model_bridge.generalized_components", "JointQKVAttentionBridge")


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


def load_processed_into_hooked_transformer(model, state_dict: dict[str, torch.Tensor]) -> None:
    """Fold layer norms and centre weights, as TransformerLens's `from_pretrained` does by default, while
    loading a state dict in HookedTransformer names (the unembedding bias is added as zeros)."""
    state_dict = dict(state_dict)
    state_dict.setdefault("unembed.b_U", torch.zeros(model.cfg.d_vocab, dtype=model.cfg.dtype))
    model.load_and_process_state_dict(
        state_dict, fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
    )


def boot_bridge(hf_model: torch.nn.Module, tokenizer, name: str, *, processed: bool, device: str, dtype: torch.dtype):
    """Wrap a Hugging Face model (which the bridge mutates) in a TransformerBridge, with no Hub access."""
    # boot_transformers ignores device and dtype when handed a model: place it first. Only floating
    # parameters are cast, as TransformerLens's own loading does; buffers such as the rotary
    # frequencies keep their precision.
    with torch.no_grad():
        for param in hf_model.parameters():
            param.data = param.data.to(device=device, dtype=dtype if param.is_floating_point() else param.dtype)
        for module in hf_model.modules():
            for key, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[key] = buffer.to(device)
    bridge = _TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype)
    if tokenizer is None:
        # TransformerLens 4 boots a placeholder tokenizer when given none; a missing one should stay missing.
        bridge.tokenizer = None
    if processed:
        bridge.enable_compatibility_mode()
    return bridge


# transformers 5 renamed GPT-NeoX's output layer; checkpoints carry either name.
_OUTPUT_LAYER_RENAMES = {"embed_out.": "lm_head.", "lm_head.": "embed_out."}
# The bridge splices its components into the HF module tree, each holding the HF module it replaced here.
_BRIDGE_WRAPPER = "._original_component"
# Bridges whose q/k/v layout was checked against TransformerLens's split_qkv_matrix (weak: keeps none alive).
_SPLIT_CHECKED: weakref.WeakSet = weakref.WeakSet()


def refill_bridge(bridge, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy a GPT-NeoX Hugging Face state dict (HF parameter names, as the checkpoint stores them) into an
    already booted TransformerBridge, in place, so it behaves exactly as a bridge freshly booted on those weights.

    The bridge runs the HF model it wraps, except attention: booting splits each fused `query_key_value` into
    separate q/k/v linears (copies, not views) that the forward pass and W_Q/W_K/W_V read. So every HF
    parameter is copied into its existing storage, then q, k and v are copied out of the refilled fused
    weight into their existing storage (GPT-NeoX's per-head interleaving, checked once per bridge against
    TransformerLens's own `split_qkv_matrix`, which booting used). The unembedding bias TransformerLens adds
    to bias-free GPT-NeoX (a zero parameter in 3.x, a zero buffer in 4.x) is reset to zero, as booting sets
    it. Values are converted to the bridge's dtype and device by `copy_`, so the result equals a boot on
    the state dict converted the same way, bit for bit; gradients are cleared, as on a fresh boot.
    Parameters are looked up by name on every call, so a bridge moved since (`bridge.to(torch.float16)`,
    which gives it new parameter tensors, q/k/v splits included) is refilled where it now is.

    Raw bridges only: a processed bridge (`enable_compatibility_mode()`) holds folded and centred weights
    computed from the raw ones and stored in replaced parameters, so it raises NotImplementedError; boot a
    new bridge instead. Also raises NotImplementedError if this TransformerLens holds a parameter that is
    neither an HF weight nor a q/k/v split (a derived copy this function would leave stale), and ValueError,
    before copying anything, if the names or shapes do not fit the bridge.
    """
    if getattr(bridge, "_weights_processed", False) or (
        not hasattr(bridge, "_weights_processed") and getattr(bridge, "compatibility_mode", False)
    ):
        raise NotImplementedError(
            "refill_bridge cannot refill a processed bridge (enable_compatibility_mode folded and centred its "
            "weights); boot a new bridge on the checkpoint instead"
        )
    pairs = _refill_pairs(bridge, state_dict)
    splits = _split_qkv_attentions(bridge)
    synthetic = _synthetic_zero_bias(bridge, pairs)
    _check_nothing_left_stale(bridge, pairs, splits, synthetic)
    if splits and bridge not in _SPLIT_CHECKED:
        _check_split_layout(splits[0], bridge.cfg.n_heads)
        _SPLIT_CHECKED.add(bridge)
    with torch.no_grad():
        for param, tensor in pairs:
            param.copy_(tensor)
        for attention in splits:
            _resplit_qkv(attention, bridge.cfg.n_heads)
        for tensor in synthetic:
            tensor.zero_()
    for param in bridge.parameters():
        param.grad = None


def _refill_pairs(bridge, state_dict: dict[str, torch.Tensor]) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """(bridge parameter, checkpoint tensor) for every weight in the state dict, validated before any copy."""
    by_hf_name = {}
    for name, param in bridge.original_model.named_parameters(remove_duplicate=False):
        by_hf_name.setdefault(name.replace(_BRIDGE_WRAPPER, ""), param)
    pairs, unexpected, mis_shaped = [], [], []
    for name, tensor in state_dict.items():
        if name.endswith(NON_WEIGHT_SUFFIXES):
            continue
        param = by_hf_name.get(name)
        for old, new in _OUTPUT_LAYER_RENAMES.items():
            if param is None and name.startswith(old):
                param = by_hf_name.get(new + name[len(old) :])
        if param is None:
            unexpected.append(name)
        elif param.shape != tensor.shape:  # copy_ would broadcast a smaller tensor silently
            mis_shaped.append(f"{name}: checkpoint {tuple(tensor.shape)}, bridge {tuple(param.shape)}")
        else:
            pairs.append((param, tensor))
    if unexpected or mis_shaped:
        raise ValueError(
            f"checkpoint weights do not fit this TransformerBridge: unexpected {unexpected[:5]}, "
            f"mis-shaped {mis_shaped[:5]}"
        )
    return pairs


def _split_qkv_attentions(bridge) -> list:
    if _JointQKVAttentionBridge is None:
        return []
    return [m for m in bridge.original_model.modules() if isinstance(m, _JointQKVAttentionBridge)]


def _split_parameters(attention) -> list[torch.nn.Parameter]:
    return [p for linear in _split_linears(attention) for p in (linear.weight, linear.bias) if p is not None]


def _synthetic_zero_bias(bridge, pairs: list) -> list[torch.Tensor]:
    """The zero unembedding bias booting adds when the checkpoint has none (GPT-NeoX never has one)."""
    unembed = getattr(bridge, "unembed", None)
    bias = getattr(getattr(unembed, "original_component", None), "bias", None)
    if bias is None or any(param is bias for param, _ in pairs):
        return []
    return [bias]


def _check_nothing_left_stale(bridge, pairs: list, splits: list, synthetic: list) -> None:
    """Every bridge parameter is either filled from the checkpoint or re-derived from it, none left behind."""
    covered = {id(param) for param, _ in pairs} | {id(p) for a in splits for p in _split_parameters(a)}
    covered |= {id(tensor) for tensor in synthetic}
    left = [name for name, p in bridge.original_model.named_parameters() if id(p) not in covered]
    if left:
        raise NotImplementedError(
            f"refill_bridge would leave these TransformerBridge (TransformerLens {TL_VERSION}) parameters "
            f"stale: {left[:5]}{'...' if len(left) > 5 else ''}. Either the checkpoint lacks them or this "
            "TransformerLens keeps a derived copy refill_bridge does not know; boot a new bridge instead."
        )


def _neox_qkv(fused: torch.nn.Linear, n_heads: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Views of GPT-NeoX's fused query_key_value as [qkv head d_head d_model] (and bias [qkv head d_head]).

    GPT-NeoX interleaves Q, K and V per head, rows (head, qkv, d_head), as HF's GPTNeoXAttention reads them.
    """
    weight = einops.rearrange(fused.weight, "(head qkv d_head) d_model -> qkv head d_head d_model", head=n_heads, qkv=3)
    if fused.bias is None:
        return weight, None
    return weight, einops.rearrange(fused.bias, "(head qkv d_head) -> qkv head d_head", head=n_heads, qkv=3)


def _split_linears(attention) -> list[torch.nn.Linear]:
    return [getattr(attention, name).original_component for name in ("q", "k", "v")]


def _resplit_qkv(attention, n_heads: int) -> None:
    """Copy q, k and v out of the (refilled) fused weight into the existing split storage, one strided copy each."""
    weight, bias = _neox_qkv(attention.original_component.query_key_value, n_heads)
    for i, linear in enumerate(_split_linears(attention)):
        linear.weight.unflatten(0, (n_heads, -1)).copy_(weight[i])  # a view: writes the parameter's storage
        if bias is not None:
            linear.bias.unflatten(0, (n_heads, -1)).copy_(bias[i])


@torch.no_grad()
def _check_split_layout(attention, n_heads: int) -> None:
    """Refuse, before copying anything, if this TransformerLens splits query_key_value unlike `_neox_qkv`."""
    # split_qkv_matrix builds throwaway nn.Linear modules around the split tensors; on the meta device
    # their random initialisation costs nothing, while the split itself runs on the real weights.
    with torch.device("meta"):
        expected = attention.split_qkv_matrix(attention.original_component)
    weight, bias = _neox_qkv(attention.original_component.query_key_value, n_heads)
    ours = [(weight[i].flatten(0, 1), None if bias is None else bias[i].flatten()) for i in range(3)]
    same = all(
        torch.equal(w, linear.weight) and (b is None) == (linear.bias is None) and (b is None or torch.equal(b, linear.bias))
        for (w, b), linear in zip(ours, expected)
    )
    if not same:
        raise NotImplementedError(
            f"TransformerLens {TL_VERSION} splits GPT-NeoX's query_key_value into q/k/v differently from "
            "refill_bridge; boot a new bridge instead"
        )
