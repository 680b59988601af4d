"""Checkpoints into a TransformerBridge, for every family TransformerLens has a bridge adapter for.

Build: `boot(...)` wraps a Hugging Face model of the family in a bridge (no Hub access). Raw refill:
`refill(bridge, family, state_dict)` copies a checkpoint into the booted bridge in place. Processed: the
bridge's weight processing happens at boot (`enable_compatibility_mode`), so a processed bridge is
booted again for each checkpoint.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

import einops
import torch
from torch import Tensor

from pythia_dynamics import compat
from pythia_dynamics.architectures import ArchitectureFamily, ModelShape
from pythia_dynamics.sources.base import StateDict

log = logging.getLogger(__name__)

__all__ = ["BridgeInstaller", "boot", "is_processed", "refill", "stored_parameters", "transformer_lens_parameters"]

# The bridge splices its components into the HF module tree, each holding the HF module it replaced here.
_BRIDGE_WRAPPER = "._original_component"


def boot(hf_model: torch.nn.Module, tokenizer, name: str, *, processed: bool, device: str, dtype: torch.dtype):
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
    # Given no tokenizer, booting loads one from `name` (the checkpoint folder), which fails for families
    # whose tokenizer class needs files (LLaMA's): boot with a placeholder instead, and drop it after.
    given = tokenizer if tokenizer is not None else _placeholder_tokenizer()
    bridge = compat.TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=given, device=device, dtype=dtype)
    if tokenizer is None:
        # TransformerLens 4 boots a placeholder tokenizer when given none; a missing one should stay missing.
        bridge.tokenizer = None
    if processed:
        bridge.enable_compatibility_mode()
    return bridge


@functools.cache
def _placeholder_tokenizer():
    """A one-token tokenizer, loaded from files as booting expects (it reads `name_or_path`)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(tempfile.mkdtemp(prefix="placeholder-tokenizer-"))
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")), unk_token="<unk>").save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def is_processed(bridge) -> bool:
    return bool(
        getattr(bridge, "_weights_processed", False)
        or (not hasattr(bridge, "_weights_processed") and getattr(bridge, "compatibility_mode", False))
    )


def stored_parameters(bridge) -> dict[str, torch.nn.Parameter]:
    """The wrapped Hugging Face model's parameters under their stored names (tied ones under each name)."""
    out = {}
    for name, param in bridge.original_model.named_parameters(remove_duplicate=False):
        out.setdefault(name.replace(_BRIDGE_WRAPPER, ""), param)
    return out


def transformer_lens_parameters(bridge, family: ArchitectureFamily) -> dict[str, Tensor]:
    """{TransformerLens name: view of the bridge's weight} for the weights a checkpoint of `family` stores
    (the split q/k/v copies and added biases are not among them)."""
    stored = {name: param.detach() for name, param in stored_parameters(bridge).items()}
    return family.views(stored, ModelShape.of(bridge.original_model.config), strict=False)


def refill(bridge, family: ArchitectureFamily, state_dict: StateDict) -> None:
    """Copy a Hugging Face state dict (HF parameter names, as the checkpoint stores them) into an
    already booted TransformerBridge, in place, so it behaves exactly as a bridge freshly booted on those weights.

    The bridge runs the HF model it wraps, except attention of families that fuse Q, K and V (GPT-NeoX's
    `query_key_value`, GPT-2's `c_attn`): booting splits the fused projection into separate q/k/v linears
    (copies, not views) that the forward pass and W_Q/W_K/W_V read. So every HF parameter is copied into
    its existing storage, then q, k and v are copied out of the refilled fused weight into their existing
    storage, with the family description's rearrangement (checked once per refill plan against TransformerLens's
    own `split_qkv_matrix`, which booting used). An unembedding bias TransformerLens adds where the family
    has none is reset to zero, as booting sets it. Values are converted to the bridge's dtype and device by
    `copy_`, so the result equals a boot on the state dict converted the same way, bit for bit; gradients
    are cleared, as on a fresh boot. Which parameter each weight goes into is worked out once per bridge (a
    `_RefillPlan`); every call checks, in one walk of the wrapped model, that no parameter has moved or been
    replaced since, so a bridge moved since (`bridge.to(torch.float16)`) is refilled where it now is.

    Raw bridges only: a processed bridge holds folded and centred weights computed from the raw ones, so it
    raises NotImplementedError; boot a new bridge instead. Also raises NotImplementedError if this
    TransformerLens holds a parameter that is neither an HF weight nor a q/k/v split (a derived copy this
    function would leave stale), and ValueError, before copying anything, if the names or shapes do not fit.
    """
    if is_processed(bridge):
        raise NotImplementedError(
            "refill cannot refill a processed bridge (enable_compatibility_mode folded and centred its "
            "weights); boot a new bridge on the checkpoint instead"
        )
    weights = {name: tensor for name, tensor in state_dict.items() if not family.is_non_weight(name)}
    plan = _plan_for(bridge, family, weights)
    mis_shaped = [f"{name}: checkpoint {tuple(weights[name].shape)}, bridge {tuple(param.shape)}"
                  for name, param in plan.pairs if param.shape != weights[name].shape]  # fmt: skip
    if mis_shaped:  # copy_ would broadcast a smaller tensor silently
        raise ValueError(f"checkpoint weights do not fit this TransformerBridge: mis-shaped {mis_shaped[:5]}")
    with torch.no_grad():
        for name, param in plan.pairs:
            param.copy_(weights[name])
        for split, fused in plan.splits:
            split.copy_(fused)
        for tensor in plan.synthetic:
            tensor.zero_()
    for param in plan.parameters:
        param.grad = None


@dataclass
class _RefillPlan:
    """What refilling one bridge with one checkpoint layout takes, worked out from the bridge's module tree
    once: walking its modules costs more than a tenth of a refill, so later refills only copy."""

    layout: tuple  # (id, data_ptr, dtype, device) of every wrapped parameter: stale once any moved or was replaced
    names: frozenset[str]  # the checkpoint weights it pairs
    pairs: list[tuple[str, torch.nn.Parameter]]  # (checkpoint weight, the parameter it is copied into)
    splits: list[tuple[Tensor, Tensor]]  # (a q/k/v linear's weight or bias, its view of the refilled fused weight)
    synthetic: list[Tensor]  # parameters booting sets to zero
    parameters: list[torch.nn.Parameter]  # every parameter, whose gradients a refill clears


# Weak: a plan must never keep a replaced bridge alive.
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _plan_for(bridge, family: ArchitectureFamily, weights: StateDict) -> _RefillPlan:
    """The bridge's refill plan for these weights' names, made anew when the bridge's parameters were moved or
    replaced since (`bridge.to(torch.float16)`), so a refill always writes where the parameters now are."""
    layout = tuple((id(p), p.data_ptr(), p.dtype, p.device) for p in bridge.original_model.parameters())
    plan = _PLANS.get(bridge)
    if plan is not None and plan.layout == layout and plan.names == frozenset(weights):
        return plan
    shape = ModelShape.of(bridge.original_model.config)
    pairs = _refill_pairs(bridge, family, weights)
    attentions = _split_qkv_attentions(bridge) if family.fused_qkv_module else []
    synthetic = _synthetic_zero_bias(bridge, pairs)
    _check_nothing_left_stale(bridge, pairs, attentions, synthetic)
    if attentions:
        _check_split_layout(attentions[0], family, shape)
    splits = [pair for attention in attentions for pair in _split_views(attention, family, shape)]
    plan = _RefillPlan(layout, frozenset(weights), pairs, splits, synthetic, list(bridge.parameters()))
    _PLANS[bridge] = plan
    return plan


def _refill_pairs(bridge, family: ArchitectureFamily, weights: StateDict) -> list[tuple[str, torch.nn.Parameter]]:
    """(checkpoint weight name, bridge parameter) for every weight, refusing names the bridge does not have."""
    by_hf_name = stored_parameters(bridge)
    available = set(by_hf_name)
    pairs, unexpected = [], []
    for name in weights:
        hf_name = family.stored_name(name, available)
        param = by_hf_name.get(hf_name) if hf_name else None
        if param is None:
            unexpected.append(name)
        else:
            pairs.append((name, param))
    if unexpected:
        raise ValueError(f"checkpoint weights do not fit this TransformerBridge: unexpected {unexpected[:5]}")
    return pairs


def _split_qkv_attentions(bridge) -> list:
    if compat.JointQKVAttentionBridge is None:
        return []
    return [m for m in bridge.original_model.modules() if isinstance(m, compat.JointQKVAttentionBridge)]


def _split_linears(attention) -> list[torch.nn.Linear]:
    return [getattr(attention, name).original_component for name in ("q", "k", "v")]


def _split_parameters(attention) -> list[torch.nn.Parameter]:
    return [p for linear in _split_linears(attention) for p in (linear.weight, linear.bias) if p is not None]


def _synthetic_zero_bias(bridge, pairs: list) -> list[Tensor]:
    """The zero unembedding bias booting adds when the checkpoint has none."""
    unembed = getattr(bridge, "unembed", None)
    bias = getattr(getattr(unembed, "original_component", None), "bias", None)
    if bias is None or any(param is bias for _, param in pairs):
        return []
    return [bias]


def _check_nothing_left_stale(bridge, pairs: list, attentions: list, synthetic: list) -> None:
    """Every bridge parameter is either filled from the checkpoint or re-derived from it, none left behind."""
    covered = {id(param) for _, param in pairs} | {id(p) for a in attentions for p in _split_parameters(a)}
    covered |= {id(tensor) for tensor in synthetic}
    left = [name for name, p in bridge.original_model.named_parameters() if id(p) not in covered]
    if left:
        raise NotImplementedError(
            f"refilling would leave these TransformerBridge (TransformerLens {compat.TL_VERSION}) parameters "
            f"stale: {left[:5]}{'...' if len(left) > 5 else ''}. Either the checkpoint lacks them or this "
            "TransformerLens keeps a derived copy the installer does not know; boot a new bridge instead."
        )


def _fused_views(attention, family: ArchitectureFamily, shape: ModelShape) -> dict[str, Tensor]:
    """The refilled fused projection as TransformerLens's W_Q/W_K/W_V [head d_model d_head] (and b_ [head d_head])."""
    fused = getattr(attention.original_component, family.fused_qkv_module)
    stored = {f"{family.block_prefix}.0.{suffix}": None for suffix in family.block_layout}
    weight_name = next(n for n in stored if n.endswith(f"{family.fused_qkv_module}.weight"))
    tensors = {weight_name: fused.weight.detach()}
    if getattr(fused, "bias", None) is not None:
        tensors[weight_name[: -len("weight")] + "bias"] = fused.bias.detach()
    return {name.split(".", 2)[2]: view for name, view in family.views(tensors, shape).items()}


def _split_views(attention, family: ArchitectureFamily, shape: ModelShape) -> list[tuple[Tensor, Tensor]]:
    """(q, k or v linear's weight or bias, as [head d_model d_head] / [head d_head]; the same entries' view of
    the fused weight): copying each pair re-derives the split from a refilled fused projection, one strided
    copy each."""
    views = _fused_views(attention, family, shape)
    out = []
    for x, linear in zip("QKV", _split_linears(attention)):
        heads = views[f"attn.W_{x}"].shape[0]
        out.append((einops.rearrange(linear.weight.detach(), "(n h) m -> n m h", n=heads), views[f"attn.W_{x}"]))
        if linear.bias is not None and f"attn.b_{x}" in views:
            out.append((einops.rearrange(linear.bias.detach(), "(n h) -> n h", n=heads), views[f"attn.b_{x}"]))
    return out


@torch.no_grad()
def _check_split_layout(attention, family: ArchitectureFamily, shape: ModelShape) -> None:
    """Refuse, before copying anything, if this TransformerLens splits the fused projection unlike the description."""
    # split_qkv_matrix builds throwaway nn.Linear modules around the split tensors; on the meta device
    # their random initialisation costs nothing, while the split itself runs on the real weights.
    with torch.device("meta"):
        expected = attention.split_qkv_matrix(attention.original_component)
    views = _fused_views(attention, family, shape)
    same = True
    for x, linear in zip("QKV", expected):
        weight = einops.rearrange(views[f"attn.W_{x}"], "n m h -> (n h) m")
        bias = views.get(f"attn.b_{x}")
        bias = None if bias is None else bias.flatten()
        same &= torch.equal(weight, linear.weight) and (bias is None) == (linear.bias is None)
        same &= bias is None or torch.equal(bias, linear.bias)
    if not same:
        raise NotImplementedError(
            f"TransformerLens {compat.TL_VERSION} splits {family.name}'s {family.fused_qkv_module} into q/k/v "
            "differently from the architecture description; boot a new bridge instead"
        )


class BridgeInstaller:
    """Puts checkpoints of one family into one TransformerBridge: booted on the first checkpoint and refilled
    in place after that; with `processed=True` booted again for each checkpoint, as its weight processing
    happens at boot."""

    backend = "bridge"

    def __init__(self, family: ArchitectureFamily, shape: ModelShape, options):
        self.family, self.shape, self.options = family, shape, options
        self.model = None

    def install(self, state_dict: StateDict, source, step: int):
        """Put `state_dict` (step `step` of `source`, whose config and tokenizer boot the model) into the model."""
        opts = self.options
        if self.model is not None and not opts.processed:
            try:
                refill(self.model, self.family, state_dict)
                return self.model
            except NotImplementedError as error:  # a bridge layout the refill does not know: boot afresh
                log.info("booting a new TransformerBridge: %s", error)
        self.model = None  # let the previous bridge go before booting the next
        config_dir = source.config_dir(step)
        self.model = boot(
            _hf_model(self.family, state_dict, config_dir), source.tokenizer(), str(config_dir),
            processed=opts.processed, device=opts.device, dtype=opts.torch_dtype,
        )  # fmt: skip
        return self.model


def _hf_model(family: ArchitectureFamily, state_dict: StateDict, config_dir: Path) -> torch.nn.Module:
    """The Hugging Face model of `config_dir` holding `state_dict` (tensors renamed where transformers renamed them)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    # Built on the CPU, not the meta device: non-persistent buffers (rotary frequencies) need their values.
    hf_model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir))
    expected = set(hf_model.state_dict())
    renamed, unexpected = {}, []
    for name, tensor in state_dict.items():
        if family.is_non_weight(name):
            continue
        hf_name = family.stored_name(name, expected)
        if hf_name is None:
            unexpected.append(name)
        else:
            renamed[hf_name] = tensor
    tied = {n for n in expected if n not in renamed and _tied(hf_model, n)}
    missing = sorted(expected - set(renamed) - tied - {n for n in expected if family.is_non_weight(n)})
    if missing or unexpected:
        raise ValueError(
            f"checkpoint weights do not fit a {type(hf_model).__name__} of this config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    hf_model.load_state_dict(renamed, strict=False)
    if tied:
        hf_model.tie_weights()
    hf_model.eval()
    return hf_model


def _tied(hf_model: torch.nn.Module, name: str) -> bool:
    """Whether `name` is the output embedding a config ties to the input embedding (not stored)."""
    return bool(getattr(hf_model.config, "tie_word_embeddings", False)) and name.startswith(("lm_head.", "embed_out."))
