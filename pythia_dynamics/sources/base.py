"""What every checkpoint source provides, and reading Hugging Face weight files safely."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import GPTNeoXConfig, PreTrainedTokenizerBase

from pythia_dynamics.schedule import select_steps

__all__ = ["CheckpointSource", "CheckpointUnavailableError", "WEIGHT_FILES", "load_weight_files"]

# In order of preference. Pickled .bin files are read with weights_only=True, never unpickled freely.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

StateDict = dict[str, torch.Tensor]


class CheckpointUnavailableError(RuntimeError):
    """A checkpoint in the schedule whose weights cannot be read (missing, not cached, corrupt)."""


class CheckpointSource(ABC):
    """A model's checkpoints: a schedule of steps, a config, a tokenizer, and weights per step.

    Weights come back as a Hugging Face GPT-NeoX state dict (`gpt_neox.layers.0....` names), exactly
    as stored; turning them into a TransformerLens model is `pythia_dynamics.loading`'s job.
    """

    name: str  # the model name results are recorded under
    steps: list[int]  # the full schedule, in training order

    @abstractmethod
    def hf_config(self) -> GPTNeoXConfig: ...

    @abstractmethod
    def config_dir(self, step: int) -> Path:
        """A folder holding this checkpoint's config.json (TransformerLens builds its config from it)."""

    @abstractmethod
    def tokenizer(self) -> PreTrainedTokenizerBase | None: ...

    @abstractmethod
    def read_state_dict(self, step: int) -> StateDict: ...

    def metadata(self) -> dict:
        """What is known about how these checkpoints were trained (learning-rate schedule, corpus ...)."""
        return {}

    def release(self, step: int) -> None:
        """Called once a checkpoint's weights are in memory; sources with a disk cache may free it."""

    def select(self, spec: str | int | Sequence[int] | None) -> list[int]:
        """The steps a spec selects from this source's schedule (see `pythia_dynamics.schedule`)."""
        return select_steps(spec, self.steps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self.steps)} checkpoints)"


def load_weight_files(path: Path, fetch_shard=None) -> StateDict:
    """Read one weight file, or an index and its shards (`fetch_shard(name) -> Path` finds each)."""
    fetch_shard = fetch_shard or (lambda name: path.parent / name)
    if path.name.endswith(".index.json"):
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        state_dict: StateDict = {}
        for shard in shards:
            state_dict.update(load_weight_files(Path(fetch_shard(shard))))
        return state_dict
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated download or a disk that filled: say which file
        raise CheckpointUnavailableError(f"cannot read weights from {path}: {error}") from error
