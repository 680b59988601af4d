"""Checkpoints into a HookedTransformer, for every family TransformerLens can build from a local config.

Build: `build(...)` makes an empty HookedTransformer from the checkpoint's config.json (no Hub access).
Raw refill: `HookedTransformerFiller` re-lays the model's parameters out as views of buffers shaped like
the stored tensors (the family description's views), so switching checkpoints is one contiguous copy per
stored tensor. Processed: `load_processed` folds layer norms and centres weights from those views, as
TransformerLens's `from_pretrained` does by default.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

from pythia_dynamics import compat
from pythia_dynamics.architectures import ArchitectureFamily, ModelShape
from pythia_dynamics.sources.base import StateDict

__all__ = ["GROUPED_NAMES", "HookedTransformerFiller", "build", "load_processed", "transformer_lens_parameters"]

log = logging.getLogger(__name__)

# Grouped-query attention keeps K and V with fewer heads under these names (W_K is an expanded copy).
GROUPED_NAMES = {"attn.W_K": "attn._W_K", "attn.W_V": "attn._W_V", "attn.b_K": "attn._b_K", "attn.b_V": "attn._b_V"}


def build(config_dir: Path, tokenizer, *, processed: bool, device: str, dtype: torch.dtype):
    """An empty HookedTransformer for the config in `config_dir` (no Hub access)."""
    # TransformerLens picks some architectures by words in the path ("llama", "gemma"): give it a
    # folder whose name says nothing, holding only the config.
    with tempfile.TemporaryDirectory(prefix="config-") as neutral:
        shutil.copyfile(Path(config_dir) / "config.json", Path(neutral) / "config.json")
        cfg = compat.get_pretrained_model_config(neutral, fold_ln=processed, device=device, dtype=dtype)
    cfg.tokenizer_name = None  # the tokenizer comes from the source, never fetched by name
    with warnings.catch_warnings():
        # 3.x deprecates HookedTransformer in favour of the bridge; choosing it here is deliberate.
        warnings.filterwarnings("ignore", "HookedTransformer is deprecated", DeprecationWarning)
        return compat.HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=True)


def _parameter_names(views: dict[str, Tensor], params: dict[str, Tensor]) -> dict[str, str]:
    """{TransformerLens name of a view: the model's parameter name} (grouped-query K/V renamed)."""
    out = {}
    for name in views:
        block, _, rest = name.partition(".") if name.startswith("blocks.") else ("", "", name)
        if block:
            layer, _, rest = rest.partition(".")
            grouped = GROUPED_NAMES.get(rest)
            candidate = f"blocks.{layer}.{grouped}" if grouped else name
            out[name] = candidate if candidate in params else name
        else:
            out[name] = name
    return out


def load_processed(model, family: ArchitectureFamily, shape: ModelShape, state_dict: StateDict, dtype: torch.dtype) -> None:
    """Fold layer norms and centre weights while loading, as TransformerLens's `from_pretrained` does."""
    params = dict(model.named_parameters())
    views = family.views(state_dict, shape)
    names = _parameter_names(views, params)
    # Folding builds new tensors (and may work in place): give it copies, never the mapped file.
    tl_state = {names[n]: view.to(dtype, copy=True) for n, view in views.items()}
    for name, param in params.items():  # biases the family does not have: TransformerLens sets them to zero
        if name not in tl_state and _is_bias(name):
            tl_state[name] = torch.zeros(param.shape, dtype=dtype)
    model.load_and_process_state_dict(
        tl_state, fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
    )


def _is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lstrip("_").startswith("b_")


def transformer_lens_parameters(model, family: ArchitectureFamily) -> dict[str, Tensor]:
    """{TransformerLens name: parameter} for the weights a checkpoint of `family` stores (not the zero
    biases TransformerLens adds), K and V un-expanded under grouped-query attention."""
    inverse = {grouped: plain for plain, grouped in GROUPED_NAMES.items()}
    stored = family.transformer_lens_names(ModelShape.of_hooked(model.cfg))
    out = {}
    for name, param in model.named_parameters():
        if name.startswith("blocks."):
            layer, rest = name.split(".", 2)[1:]
            name = f"blocks.{layer}.{inverse.get(rest, rest)}"
        if name in stored:
            out[name] = param
    return out


class HookedTransformerFiller:
    """Switches a HookedTransformer between checkpoints with one contiguous copy per stored tensor.

    On construction, the model's parameters are re-laid out as the checkpoint stores its tensors:
    each parameter becomes a view (the family description's rearrangement) into a buffer shaped like a
    stored tensor, so W_Q, W_K and W_V of a GPT-NeoX layer are three views into one buffer shaped like
    its fused query_key_value weight, and W_U is a transposed view of a [d_vocab, d_model] buffer (of
    the embedding's, where the family ties them). `fill(state_dict)` then copies each stored tensor into
    its buffer with no rearranging (converting dtype and device on the way), which is what makes
    switching cost about one read of the checkpoint. Values, shapes and names of the parameters are
    exactly TransformerLens's; only their strides differ (matmuls accept either). Biases TransformerLens
    has and the family does not (LLaMA's, every unembedding bias) are set to zero, as TransformerLens does.

    Moving the model (`model.to(torch.float16)`, `.to("cuda")`) gives its parameters new tensors that
    no longer view the buffers. `fill` notices and lays the parameters out again first, on the device
    and in the dtype each one has now, so the next checkpoint lands in the weights the model uses.
    """

    def __init__(self, model: torch.nn.Module, family: ArchitectureFamily, shape: ModelShape, state_dict: StateDict):
        self.model = model
        self.family = family
        self.shape = shape
        self.shapes = {n: t.shape for n, t in state_dict.items() if not family.is_non_weight(n)}
        self._lay_out()

    @torch.no_grad()
    def fill(self, state_dict: StateDict) -> None:
        """Copy a checkpoint into the model. Checks every tensor first: a mismatch changes nothing."""
        weights = {n: t for n, t in state_dict.items() if not self.family.is_non_weight(n)}
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
        # Shapes and which parameters each stored tensor holds, worked out on the meta device (no memory).
        meta = {name: torch.empty(shape, device="meta") for name, shape in self.shapes.items()}
        all_views = self.family.views(meta, self.shape)
        names = _parameter_names(all_views, params)
        zeros = [n for n in params if n not in set(names.values()) and _is_bias(n)]
        _check_fits({n: p for n, p in params.items() if n not in zeros}, {names[n]: v for n, v in all_views.items()})
        # (the embedding's stored tensor also holds W_U where the family ties them)
        holders = {name: [names[n] for n in self.family.views({name: tensor}, self.shape)] for name, tensor in meta.items()}
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
        views = {names[n]: v for n, v in self.family.views(buffers, self.shape).items()}
        for name, view in views.items():
            params[name].data = view
        for name in zeros:
            params[name].zero_()
        self.buffers, self.views = buffers, views


def _same_view(param: Tensor, view: Tensor) -> bool:
    # The filler holds its buffers, so their memory cannot be reused: an equal address is the same storage.
    return (param.data_ptr(), param.dtype, param.device, param.shape, param.stride()) == (
        view.data_ptr(), view.dtype, view.device, view.shape, view.stride()
    )


def _check_fits(params: dict[str, Tensor], views: dict[str, Tensor]) -> None:
    mismatch = _mismatch(params, views)
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


class HookedInstaller:
    """Puts checkpoints of one family into one HookedTransformer, built on the first."""

    backend = "hooked"

    def __init__(self, family: ArchitectureFamily, shape: ModelShape, options):
        if not family.hooked_transformer:
            raise ValueError(
                f"HookedTransformer cannot represent {family.name} checkpoints built from a local config "
                "(TransformerLens configures them by official model name only): use backend 'bridge' or 'auto'"
            )
        self.family, self.shape, self.options = family, shape, options
        self.model = None
        self._filler: HookedTransformerFiller | None = None

    def install(self, state_dict: StateDict, source, step: int):
        """Put `state_dict` (step `step` of `source`, whose config and tokenizer build the model) into the model."""
        opts = self.options
        if self.model is None:
            self.model = build(source.config_dir(step), source.tokenizer(), processed=opts.processed,
                               device=opts.device, dtype=opts.torch_dtype)  # fmt: skip
        if opts.processed:
            load_processed(self.model, self.family, self.shape, state_dict, opts.torch_dtype)
        else:
            if self._filler is None:
                self._filler = HookedTransformerFiller(self.model, self.family, self.shape, state_dict)
            self._filler.fill(state_dict)
        return self.model
