"""What the audit records about one checkpoint, from one read of it: hashes, layout, config, distances.

An `Observation` is everything the cross-checkpoint checks (`audit.judge`) need, so a checkpoint is
read once (by the audit itself, or by the sweep whose read the audit shares) and never again:

- `tensor_hashes`: xxh3-128 of each tensor's dtype, shape and bytes (`loading.hash_checkpoint`, computed
  in the pass that computes the checkpoint's content hash);
- `shards`: which weight file holds each tensor, for sharded checkpoints;
- `signature`: each tensor's dtype and shape; `config`: the checkpoint's config.json (less the keys that
  name the writer rather than the model);
- `features`: per matrix, ‖W‖_F, ‖W − W_initial‖_F and ‖W − W_final‖_F against the schedule's first and
  last checkpoints (differences in float32 per block of `SAMPLE_BLOCK` entries, summed in float64;
  `FeatureReferences`). A matrix of more than `SAMPLE_ENTRIES` entries is measured on a fixed
  sample of about that many (blocks of `SAMPLE_BLOCK` consecutive entries of the flattened matrix, evenly
  spaced; the same entries at every step), the sums scaled up by numel / sampled: an estimate within a
  few percent, far below the factor-of-two changes the trajectory check looks for, at a cost that does
  not grow with the matrix (fp16 to fp64 conversion of whole checkpoints would cost as much as reading
  them). Only matrices are measured (`checkpoint_features`); `exact=True` uses every entry.

Tensors are generic state-dict entries: nothing here knows an architecture's names.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from pythia_dynamics.weights import float64_blocks

__all__ = ["SAMPLE_ENTRIES", "FeatureReferences", "Observation", "checkpoint_features", "observe", "sampled_blocks", "sampled_entries",
           "tensor_features"]

SAMPLE_ENTRIES = 1 << 12  # about this many entries of each matrix are measured (all of a smaller one)
SAMPLE_BLOCK = 256  # in blocks of this many consecutive entries, spread evenly over the matrix
# Keys of config.json that say who wrote the file, not what the model is.
VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version")


@dataclass
class Observation:
    step: int
    content_hash: str
    tensor_hashes: dict[str, str]
    signature: dict[str, str]  # name -> "float16[512, 2048]"
    config: dict | None = None
    shards: dict[str, str] | None = None
    # name -> (norm, distance from initial, distance to final); NaN where a reference is missing or differs in shape
    features: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)  # "initial"/"final" -> their content hashes

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> Observation:
        data = json.loads(text)
        data["features"] = {k: tuple(v) for k, v in data.get("features", {}).items()}
        return cls(**data)


def sampled_entries(tensor: Tensor, exact: bool = False) -> tuple[Tensor, float]:
    """A view of the entries the features are measured on, and numel / sampled (the scale-up factor).

    A view, not a copy: of a memory-mapped tensor only the sampled pages are ever touched."""
    flat = tensor.reshape(-1)
    n = flat.numel()
    if exact or n <= SAMPLE_ENTRIES:
        return flat, 1.0
    rows = n // SAMPLE_BLOCK
    sample = flat[: rows * SAMPLE_BLOCK].view(rows, SAMPLE_BLOCK)[:: max(1, rows // (SAMPLE_ENTRIES // SAMPLE_BLOCK))]
    return sample, n / sample.numel()


def sampled_blocks(tensor: Tensor) -> tuple[Float[Tensor, "block entry"], float]:
    """The sampled entries as rows of `SAMPLE_BLOCK` (a small matrix zero-padded to whole rows: zeros add
    nothing to a norm or a distance), and the scale-up."""
    sample, scale = sampled_entries(tensor)
    if sample.dim() == 1:
        sample = torch.nn.functional.pad(sample, (0, -sample.numel() % SAMPLE_BLOCK)).view(-1, SAMPLE_BLOCK)
    return sample, scale


@torch.no_grad()
def tensor_features(
    weight: Float[Tensor, "..."], initial: Float[Tensor, "..."] | None, final: Float[Tensor, "..."] | None,
    exact: bool = False,
) -> tuple[float, float, float]:  # fmt: skip
    """(‖W‖_F, ‖W − W_initial‖_F, ‖W − W_final‖_F); NaN for a reference that is None or of another shape.

    The plain definition (one matrix, nothing cached); `FeatureReferences` computes the same numbers for a
    whole checkpoint at once, with the references' samples converted once for a whole audit."""
    return FeatureReferences({"w": initial} if initial is not None else {}, {"w": final} if final is not None else {},
                             exact).features("w", weight)  # fmt: skip


class FeatureReferences:
    """The first and final checkpoints that the distance features are measured against.

    `features_of` measures every matrix of a checkpoint in a few whole-checkpoint operations: the sampled
    blocks of all matrices gathered into one float32 array (the float16 to float32 conversion happens in
    the gather), the per-block norm and the per-block distances to both references (`torch.cdist`, which
    subtracts entry by entry: identical blocks give exactly 0, with no cancellation), then the per-block
    squares summed per matrix in float64. The references' blocks are converted once per layout (the names
    and shapes of the matrices) and kept (about 128 KiB per matrix). With `exact=True` every entry is used,
    in float64 (`float64_blocks`), one matrix at a time, and nothing is kept."""

    def __init__(self, initial: dict, final: dict, exact: bool = False):
        self.initial, self.final, self.exact = initial, final, exact
        self._layouts: dict[tuple, _Layout] = {}

    def features(self, name: str, weight: Tensor) -> tuple[float, float, float]:
        return self.features_of({name: weight})[name]

    @torch.no_grad()
    def features_of(self, weights: dict[str, Tensor]) -> dict[str, tuple[float, float, float]]:
        found = {n: (math.nan,) * 3 for n, w in weights.items() if not w.dtype.is_floating_point}
        floating = {n: w for n, w in weights.items() if n not in found}
        if self.exact:
            return found | {n: self._exact(w, self._references(n, w)) for n, w in floating.items()}
        if floating:
            key = tuple((n, tuple(w.shape)) for n, w in floating.items())
            if key not in self._layouts:
                self._layouts[key] = _Layout(floating, {n: self._references(n, w) for n, w in floating.items()})
            found |= self._layouts[key].features(floating)
        return found

    def _references(self, name: str, weight: Tensor) -> list[Tensor | None]:
        """The initial and final tensors of `name`, None where missing or not comparable with `weight`."""
        return [r if r is not None and r.shape == weight.shape and r.dtype.is_floating_point else None
                for r in (self.initial.get(name), self.final.get(name))]  # fmt: skip

    @staticmethod
    def _exact(weight: Tensor, refs: list[Tensor | None]) -> tuple[float, float, float]:
        others = [r if r is not None else weight for r in refs]
        norm = from_initial = to_final = 0.0
        for block, first, last in float64_blocks(weight, *others):
            block, first, last = block.reshape(-1), first.reshape(-1), last.reshape(-1)
            norm += torch.dot(block, block).item()
            from_initial += torch.dot(first.sub_(block), first).item()
            to_final += torch.dot(last.sub_(block), last).item()
        found = [math.sqrt(norm), math.sqrt(from_initial), math.sqrt(to_final)]
        return found[0], found[1] if refs[0] is not None else math.nan, found[2] if refs[1] is not None else math.nan


class _Layout:
    """Where each matrix's sampled blocks sit in the gathered array, and the references' blocks there."""

    def __init__(self, weights: dict[str, Tensor], references: dict[str, list[Tensor | None]]):
        self.names = list(weights)
        blocks, scales = zip(*(sampled_blocks(w) for w in weights.values()), strict=True)
        self.scales = torch.tensor(scales, dtype=torch.float64)
        self.matrix_of_block = torch.cat([torch.full((len(b),), i) for i, b in enumerate(blocks)])
        # (block, reference, entry): zeros where a reference is missing (its distance is reported as NaN)
        self.reference_blocks = self._stack_references(blocks, [references[n] for n in self.names])
        self.usable = torch.tensor([[r is not None for r in references[n]] for n in self.names]).T

    @staticmethod
    def _stack_references(blocks, references) -> Float[Tensor, "block reference entry"]:
        per_reference = []
        for which in range(2):
            parts = [sampled_blocks(refs[which])[0] if refs[which] is not None else torch.zeros(b.shape)
                     for b, refs in zip(blocks, references, strict=True)]  # fmt: skip
            per_reference.append(torch.cat(parts).float())
        return einops.rearrange(torch.stack(per_reference), "reference block entry -> block reference entry").contiguous()

    def features(self, weights: dict[str, Tensor]) -> dict[str, tuple[float, float, float]]:
        gathered = torch.empty(len(self.matrix_of_block), SAMPLE_BLOCK)
        torch.cat([sampled_blocks(weights[n])[0] for n in self.names], out=gathered)
        distances = torch.cdist(gathered.unsqueeze(1), self.reference_blocks, compute_mode="donot_use_mm_for_euclid_dist")
        per_block = torch.cat([torch.linalg.vector_norm(gathered, dim=1)[:, None], distances.squeeze(1)], dim=1)
        squares = per_block.double().square_()
        per_matrix = torch.zeros(len(self.names), 3, dtype=torch.float64).index_add_(0, self.matrix_of_block, squares)
        values = (per_matrix * self.scales[:, None]).sqrt_()
        values[:, 1:][~self.usable.T] = math.nan
        return dict(zip(self.names, map(tuple, values.tolist()), strict=True))


@torch.no_grad()
def checkpoint_features(state_dict: dict, references: FeatureReferences, names: list[str]) -> dict:
    """The features of every matrix (tensor of two or more dimensions) in `names`.

    Vectors (biases, layer-norm weights) are left out: they hold a sliver of a checkpoint's entries
    but would cost as much per-tensor work as the matrices, and biases start at zero, where a
    distance from the initial checkpoint has no relative scale."""
    with _one_thread():
        return references.features_of({n: state_dict[n] for n in names if state_dict[n].dim() >= 2})


@contextmanager
def _one_thread():
    """Reductions over small vectors run faster on one thread: waking torch's intra-op pool costs more than it
    saves, and far more on a busy machine (measured: a float64 dot of 2^18 entries 0.03 ms on one thread,
    6 ms on two with the cores shared). The sweep's other work is not running meanwhile."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def observe(staged, references: FeatureReferences | None = None, config_path: Path | None = None,
            reference_hashes: dict[str, str] | None = None) -> Observation:  # fmt: skip
    """The observation of one read checkpoint (`loading.StagedCheckpoint`); `references` are the first and
    final checkpoints (None: no distance features), `reference_hashes` their content hashes."""
    from pythia_dynamics.loading import hash_checkpoint

    state_dict = staged.state_dict
    tensor_hashes = staged.tensor_hashes or hash_checkpoint(state_dict)[1]
    signature = {name: f"{str(state_dict[name].dtype).removeprefix('torch.')}{list(state_dict[name].shape)}" for name in tensor_hashes}
    features = checkpoint_features(state_dict, references, list(tensor_hashes)) if references is not None else {}
    return Observation(
        step=staged.step,
        content_hash=staged.content_hash,
        tensor_hashes=dict(tensor_hashes),
        signature=signature,
        config=read_config(config_path) if config_path is not None else None,
        shards=dict(staged.shards) if staged.shards else None,
        features=features,
        references=dict(reference_hashes or {}) if references is not None else {},
    )


def read_config(path: Path) -> dict | None:
    """config.json as a dict, less `VOLATILE_CONFIG_KEYS`; None where it is missing or not a JSON object."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(config, dict):
        return None
    return {k: v for k, v in config.items() if k not in VOLATILE_CONFIG_KEYS}
