"""Checkpoint source -> a TransformerLens model holding exactly that checkpoint's weights.

Weights are loaded raw by default (no layer-norm folding, no centring), as the source study analysed
them; `processed=True` gives TransformerLens's usual processed weights instead. Each checkpoint is
identified by a content hash of its weights as stored, so two steps with identical weights are
noticed (Pythia's step0 and step1 are identical) rather than analysed twice under two names.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from pythia_dynamics import compat
from pythia_dynamics.sources import CheckpointSource, open_source
from pythia_dynamics.sources.base import StateDict

__all__ = [
    "Backend",
    "CheckpointId",
    "CheckpointLoader",
    "IdenticalCheckpointWarning",
    "LoadOptions",
    "LoadedCheckpoint",
    "content_hash",
    "load_checkpoint",
    "resolve_backend",
]

log = logging.getLogger(__name__)

Backend = Literal["auto", "hooked", "bridge"]
# Saved alongside weights by some GPT-NeoX versions; they are recomputed, not learned.
_NON_WEIGHT_SUFFIXES = ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq", "original_inv_freq")


class IdenticalCheckpointWarning(UserWarning):
    """Two steps of one model hold identical weights."""


@dataclass
class LoadOptions:
    backend: Backend = "auto"  # HookedTransformer where TransformerLens still has it (3.x), else TransformerBridge
    processed: bool = False  # raw weights, as the source study; True folds layer norms and centres weights
    device: str = "cpu"
    dtype: str = "float32"  # analyses run in float32 whatever the checkpoint's storage dtype (Pythia: fp16)

    def __post_init__(self):
        if self.backend not in get_args(Backend):
            raise ValueError(f"backend must be one of {get_args(Backend)}, got {self.backend!r}")
        if not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"dtype must name a torch dtype such as 'float32' or 'bfloat16', got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CheckpointId:
    model: str
    step: int | None
    content_hash: str  # blake2b of the weights as stored (names, dtypes, shapes, bytes)
    duplicate_of: int | None = None  # an earlier step of the same model with identical weights


@dataclass
class LoadedCheckpoint:
    model: Any  # a HookedTransformer or a TransformerBridge
    id: CheckpointId
    backend: str
    options: LoadOptions = field(repr=False)


def resolve_backend(backend: Backend) -> str:
    available = compat.available_backends()
    if backend == "auto":
        if not available:
            raise RuntimeError(f"TransformerLens {compat.TL_VERSION} has neither HookedTransformer nor TransformerBridge")
        return available[0]
    if backend not in available:
        raise ValueError(
            f"backend {backend!r} is not available with TransformerLens {compat.TL_VERSION}; "
            f"available: {', '.join(available) or 'none'}"
        )
    return backend


def content_hash(state_dict: StateDict) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(state_dict):
        if name.endswith(_NON_WEIGHT_SUFFIXES):
            continue
        tensor = state_dict[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _matching_keys(state_dict: StateDict, model: torch.nn.Module) -> StateDict:
    """Rename to the model's parameter names (transformers 5 calls GPT-NeoX's `embed_out` `lm_head`)."""
    expected = set(model.state_dict())
    renames = {"embed_out.": "lm_head.", "lm_head.": "embed_out."}
    out = {}
    for name, tensor in state_dict.items():
        if name.endswith(_NON_WEIGHT_SUFFIXES):
            continue
        if name not in expected:
            for old, new in renames.items():
                if name.startswith(old) and new + name[len(old) :] in expected:
                    name = new + name[len(old) :]
        out[name] = tensor
    missing = sorted(k for k in expected - set(out) if not k.endswith(_NON_WEIGHT_SUFFIXES))
    unexpected = sorted(set(out) - expected)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint weights do not fit a {type(model).__name__} of this config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    return out


class CheckpointLoader:
    """Loads a source's checkpoints one at a time into a TransformerLens model.

    A HookedTransformer is built once and refilled in place for each checkpoint; a TransformerBridge
    is booted around a fresh copy of the Hugging Face model, because the bridge keeps its own split
    copies of the fused QKV weights. Only one checkpoint's weights are held at a time.
    """

    def __init__(self, source: CheckpointSource | str, options: LoadOptions | None = None, **option_kwargs):
        self.source = open_source(source)
        self.options = options or LoadOptions(**option_kwargs)
        self.backend = resolve_backend(self.options.backend)
        self._hf_model: GPTNeoXForCausalLM | None = None
        self._hooked = None
        self._seen: dict[str, int] = {}  # content hash -> first step seen with it

    def _staging_hf_model(self, step: int) -> GPTNeoXForCausalLM:
        if self._hf_model is None:
            config = GPTNeoXConfig.from_pretrained(self.source.config_dir(step))
            self._hf_model = GPTNeoXForCausalLM(config).eval()
        return self._hf_model

    def load(self, step: int) -> LoadedCheckpoint:
        self.source.select([step])  # a step outside the schedule is an error listing the valid ones
        state_dict = self.source.read_state_dict(step)
        checkpoint_id = self._identify(step, content_hash(state_dict))
        hf_model = self._staging_hf_model(step)
        hf_model.load_state_dict(_matching_keys(state_dict, hf_model), strict=False)
        del state_dict
        self.source.release(step)
        return LoadedCheckpoint(self._to_transformer_lens(hf_model, step), checkpoint_id, self.backend, self.options)

    def iter(self, steps: Iterable[int] | str | None = None) -> Iterator[LoadedCheckpoint]:
        for step in self.source.select(steps):
            yield self.load(step)

    def _identify(self, step: int, digest: str) -> CheckpointId:
        first = self._seen.setdefault(digest, step)
        if first != step:
            warnings.warn(
                f"{self.source.name}: step {step} has weights identical to step {first} "
                f"(content hash {digest[:12]}); results for both describe the same weights",
                IdenticalCheckpointWarning,
                stacklevel=3,
            )
            return CheckpointId(self.source.name, step, digest, duplicate_of=first)
        return CheckpointId(self.source.name, step, digest)

    def _to_transformer_lens(self, hf_model: GPTNeoXForCausalLM, step: int):
        opts = self.options
        if self.backend == "hooked":
            if self._hooked is None:
                self._hooked = compat.build_hooked_transformer(
                    self.source.config_dir(step),
                    self.source.tokenizer(),
                    processed=opts.processed,
                    device=opts.device,
                    dtype=opts.torch_dtype,
                )
            compat.load_into_hooked_transformer(self._hooked, hf_model, processed=opts.processed)
            return self._hooked.eval()
        bridge_name = str(self.source.config_dir(step))
        return compat.boot_bridge(
            copy.deepcopy(hf_model),
            self.source.tokenizer(),
            bridge_name,
            processed=opts.processed,
            device=opts.device,
            dtype=opts.torch_dtype,
        ).eval()


def load_checkpoint(source: CheckpointSource | str, step: int, **options) -> LoadedCheckpoint:
    """One checkpoint as a TransformerLens model: `load_checkpoint("pythia-70m", 1000).model`."""
    return CheckpointLoader(source, LoadOptions(**options)).load(step)
