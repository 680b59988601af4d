"""Checkpoint source -> a TransformerLens model holding exactly that checkpoint's weights.

Weights are loaded raw by default (no layer-norm folding, no centring), as the source study analysed
them; `processed=True` gives TransformerLens's usual processed weights instead. Each checkpoint is
identified by a content hash of its weights as stored, so two steps with identical weights are
noticed (Pythia's step0 and step1 are identical) rather than analysed twice under two names.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import torch
import xxhash

from pythia_dynamics import installers
from pythia_dynamics.architectures import ArchitectureFamily, ModelShape, family_of, is_non_weight
from pythia_dynamics.sources import CheckpointSource, open_source
from pythia_dynamics.sources.base import StateDict

__all__ = [
    "Backend",
    "CheckpointId",
    "CheckpointLoader",
    "IdenticalCheckpointWarning",
    "LoadOptions",
    "LoadedCheckpoint",
    "Prefetcher",
    "StagedCheckpoint",
    "check_device",
    "content_hash",
    "hash_checkpoint",
    "load_checkpoint",
    "resolve_backend",
]

log = logging.getLogger(__name__)

Backend = Literal["auto", "hooked", "bridge"]


class IdenticalCheckpointWarning(UserWarning):
    """Two steps of one model hold identical weights."""


@dataclass
class LoadOptions:
    # HookedTransformer where TransformerLens still has it (3.x) and can build the family, else TransformerBridge
    backend: Backend = "auto"
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
    content_hash: str  # xxh3-128 of the weights as stored (names, dtypes, shapes, bytes)
    duplicate_of: int | None = None  # an earlier step of the same model with identical weights


@dataclass
class LoadedCheckpoint:
    model: Any  # a HookedTransformer or a TransformerBridge
    id: CheckpointId
    backend: str
    options: LoadOptions = field(repr=False)


def resolve_backend(backend: Backend, family: ArchitectureFamily | None = None) -> str:
    """The backend a request means with this TransformerLens, for `family` (GPT-NeoX when not given)."""
    from pythia_dynamics.architectures import FAMILIES

    return installers.choose_backend(backend, family or FAMILIES["gpt_neox"])


def content_hash(state_dict: StateDict) -> str:
    """xxh3-128 of the weights as stored, from each tensor's name, dtype, shape and bytes (`hash_checkpoint`).

    A non-cryptographic hash, about 30 times faster than blake2b (a checkpoint is hashed in a few
    percent of the time it takes to read); it tells checkpoints apart, it does not authenticate them.
    """
    return hash_checkpoint(state_dict)[0]


# Below this, a tensor hashes faster in the calling thread than it could be handed to another.
PARALLEL_HASH_BYTES = 4 << 20


def hash_checkpoint(state_dict: StateDict) -> tuple[str, dict[str, str]]:
    """(content hash, {tensor name: xxh3-128 of its dtype, shape and bytes}), in one pass over the bytes.

    Each tensor is hashed once; the content hash is the xxh3-128 of "name|tensor hash|" over the tensors in
    name order. So the per-tensor hashes (what the integrity audit compares across checkpoints: a tensor or
    shard taken from another step) cost nothing beyond the content hash. Tensors of 4 MiB and more are hashed
    on as many threads as torch uses (xxhash releases the GIL), largest first; the result does not depend on
    the order.
    """
    tensors = {name: state_dict[name].detach() for name in state_dict if not is_non_weight(name)}
    large = sorted((n for n, t in tensors.items() if t.numel() * t.element_size() >= PARALLEL_HASH_BYTES),
                   key=lambda name: -tensors[name].numel())  # fmt: skip
    threads = min(torch.get_num_threads(), len(large))
    tensor_hashes = {}
    if threads > 1:
        with ThreadPoolExecutor(threads, thread_name_prefix="pythia-dynamics-hash") as pool:
            tensor_hashes = dict(zip(large, pool.map(lambda name: _tensor_hash(tensors[name]), large)))
    for name, tensor in tensors.items():
        if name not in tensor_hashes:
            tensor_hashes[name] = _tensor_hash(tensor)
    digest = xxhash.xxh3_128()
    for name in sorted(tensor_hashes):
        digest.update(f"{name}|{tensor_hashes[name]}|".encode())
    return digest.hexdigest(), {name: tensor_hashes[name] for name in sorted(tensor_hashes)}


def _tensor_hash(tensor: torch.Tensor) -> str:
    tensor = tensor.contiguous().cpu()
    own = xxhash.xxh3_128(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    if tensor.numel():
        own.update(tensor.view(-1).view(torch.uint8).numpy())
    return own.hexdigest()


@dataclass
class StagedCheckpoint:
    """A checkpoint read from its source and identified by content, not yet in a model."""

    step: int
    state_dict: StateDict = field(repr=False)  # as stored; safetensors files are memory-mapped, not copied
    content_hash: str
    tensor_hashes: dict[str, str] = field(default_factory=dict, repr=False)  # name -> xxh3-128 (hash_checkpoint)
    shards: dict[str, str] | None = field(default=None, repr=False)  # name -> weight file, when sharded


class CheckpointLoader:
    """Loads a source's checkpoints one at a time into one TransformerLens model, built once.

    Loading is two halves: `read(step)` fetches and hashes the stored weights (no model involved, so
    it can run in a background thread: `prefetch`), and `install(staged)` copies them into the
    model, through the installer of the chosen backend (`pythia_dynamics.installers`) for the
    checkpoints' architecture family (`pythia_dynamics.architectures`, read from config.json). Either
    way the model object stays the same between raw checkpoints, so memory does not grow over a sweep.
    The family and backend are settled on first use (`family`, `backend`), from the source's config.

    That model is the caller's to move: after `model.to(torch.float16)` or `.to("cuda")` the next
    checkpoint is installed on the device and in the dtype the model has then (a processed bridge,
    booted anew for each checkpoint, comes back as `options` say). `load` and `iter` first ask the
    source to `preflight` the steps, so a source that cannot provide them fails before any read.
    """

    def __init__(self, source: CheckpointSource | str, options: LoadOptions | None = None, **option_kwargs):
        self.source = open_source(source)
        self.options = options or LoadOptions(**option_kwargs)
        if self.options.backend != "auto":
            resolve_backend(self.options.backend)  # a backend this TransformerLens lacks: refuse at once
        check_device(self.options.device)
        self._installer = None
        self._seen: dict[str, int] = {}  # content hash -> first step seen with it
        self._kept: dict[int, StagedCheckpoint] = {}

    @property
    def family(self) -> ArchitectureFamily:
        return self._the_installer().family

    @property
    def backend(self) -> str:
        return self._the_installer().backend

    def _the_installer(self):
        if self._installer is None:
            config = self.source.hf_config()
            family = family_of(config)
            backend = installers.choose_backend(self.options.backend, family)
            self._installer = installers.installer_for(backend)(family, ModelShape.of(config), self.options)
        return self._installer

    def read(self, step: int) -> StagedCheckpoint:
        """The stored weights of `step` and their content hash; safe to call from another thread."""
        kept = self._kept.pop(step, None)
        if kept is not None:
            return kept
        self.source.select([step])  # a step outside the schedule is an error listing the valid ones
        state_dict = self.source.read_state_dict(step)
        digest, tensor_hashes = hash_checkpoint(state_dict)
        shards = self.source.shard_map(step)  # before release: a Hub cache policy may delete the index
        self.source.release(step)
        return StagedCheckpoint(step, state_dict, digest, tensor_hashes, shards)

    def keep(self, staged: StagedCheckpoint) -> None:
        """Hand `staged` to the next `read` of its step instead of reading it again (a sweep reads its
        reference checkpoints first; with `--cache-policy delete-after-use` a second read would download)."""
        self._kept[staged.step] = staged

    def install(self, staged: StagedCheckpoint) -> LoadedCheckpoint:
        """Put a read checkpoint's weights into the model (in training order, for duplicate detection)."""
        checkpoint_id = self._identify(staged.step, staged.content_hash)
        installer = self._the_installer()
        model = installer.install(staged.state_dict, self.source, staged.step)
        if any(module.training for module in model.modules()):
            model.eval()  # only when needed: on a TransformerBridge eval() costs as much as a fifth of a refill
        return LoadedCheckpoint(model, checkpoint_id, self.backend, self.options)

    def load(self, step: int) -> LoadedCheckpoint:
        """Read and install one checkpoint; a source that cannot provide it is refused before any read."""
        if step not in self._kept:
            self.source.preflight([step])
        return self.install(self.read(step))

    def prefetch(self, steps: Iterable[int]) -> Prefetcher:
        """Read `steps` one ahead in a background thread: `with loader.prefetch(steps) as p: p.take(step)`."""
        return Prefetcher(self, list(steps))

    def iter(self, steps: Iterable[int] | str | None = None, *, prefetch: bool = True) -> Iterator[LoadedCheckpoint]:
        """The selected checkpoints in order, in the one model; all of them are preflighted before the first read."""
        selected = self.source.select(steps)
        self.source.preflight(selected)
        if not prefetch:
            for step in selected:
                yield self.load(step)
            return
        with self.prefetch(selected) as prefetcher:
            for step in selected:
                yield self.install(prefetcher.take(step))

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


class Prefetcher:
    """Reads the next checkpoint in a background thread while the current one is analysed.

    `take(step)` returns that step's `StagedCheckpoint` (raising the error its read raised, if any)
    and starts reading the step after it, so at most two checkpoints are staged at once: the one
    being installed and the next. Reading is I/O, hashing and memory mapping; installing and
    analysing stay in the calling thread, in order.
    """

    def __init__(self, loader: CheckpointLoader, steps: list[int]):
        self.loader = loader
        self.steps = steps
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pythia-dynamics-prefetch")
        self._pending: dict[int, Future] = {}

    def take(self, step: int) -> StagedCheckpoint:
        future = self._pending.pop(step, None) or self._executor.submit(self.loader.read, step)
        position = self.steps.index(step) if step in self.steps else len(self.steps)
        if position + 1 < len(self.steps) and self.steps[position + 1] not in self._pending:
            following = self.steps[position + 1]
            self._pending[following] = self._executor.submit(self.loader.read, following)
        return future.result()

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self._executor.shutdown(wait=True)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, before any work, saying what is available."""
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"device {device!r} is not a torch device ('cpu', 'cuda', 'cuda:1', 'mps'): {error}") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(kind, True):
        have = ", ".join(k for k, ok in available.items() if ok)
        raise ValueError(
            f"device {device!r} was asked for, but this torch ({torch.__version__}) sees no {kind} device; "
            f"available here: {have}"
        )


def load_checkpoint(source: CheckpointSource | str, step: int, **options) -> LoadedCheckpoint:
    """One checkpoint as a TransformerLens model: `load_checkpoint("pythia-70m", 1000).model`."""
    return CheckpointLoader(source, LoadOptions(**options)).load(step)
