"""What every checkpoint source provides, and reading Hugging Face weight files safely.

torch, safetensors and transformers are imported where weights or configs are read, not here, so
listing a source's steps (`pythia-dynamics steps`) imports none of them.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pythia_dynamics.schedule import select_steps

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

__all__ = [
    "CheckpointSource",
    "CheckpointUnavailableError",
    "UnsupportedCheckpointError",
    "WEIGHT_FILES",
    "check_supported_config",
    "load_weight_files",
    "shard_names",
]

# In order of preference. Pickled .bin files are read with weights_only=True, never unpickled freely.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

StateDict = dict[str, "torch.Tensor"]


class CheckpointUnavailableError(RuntimeError):
    """A checkpoint in the schedule whose weights cannot be read (missing, not cached, corrupt)."""


class UnsupportedCheckpointError(ValueError):
    """Checkpoints this package cannot read at all: another architecture, or no readable config.json."""


class CheckpointSource(ABC):
    """A model's checkpoints: a schedule of steps, a config, a tokenizer, and weights per step.

    Weights come back as a Hugging Face state dict (`gpt_neox.layers.0....`, `model.layers.0....` names),
    exactly as stored; turning them into a TransformerLens model is `pythia_dynamics.loading`'s job.
    """

    name: str  # the model name results are recorded under
    steps: list[int]  # the full schedule, in training order

    @abstractmethod
    def hf_config(self) -> PretrainedConfig: ...

    @abstractmethod
    def config_dir(self, step: int) -> Path:
        """A folder holding this checkpoint's config.json (TransformerLens builds its config from it)."""

    @abstractmethod
    def tokenizer(self) -> PreTrainedTokenizerBase | None: ...

    @abstractmethod
    def read_state_dict(self, step: int) -> StateDict: ...

    def preflight(self, steps: Sequence[int]) -> None:
        """Refuse, before any work, checkpoints that cannot possibly be read; reads no weights.

        Raises StepSelectionError for steps outside the schedule; sources add their own checks
        (UnsupportedCheckpointError, CheckpointUnavailableError and its subclasses).
        """
        self.select(list(steps))

    def metadata(self) -> dict:
        """What is known about how these checkpoints were trained (learning-rate schedule, corpus ...)."""
        return {}

    def release(self, step: int) -> None:
        """Called once a checkpoint's weights are in memory; sources with a disk cache may free it."""

    def shard_map(self, step: int) -> dict[str, str] | None:
        """{tensor name: weight file} for a checkpoint stored in shards (its `*.index.json`), else None.

        Read from the index only (no weights); the integrity audit uses it to say which shard of a
        checkpoint equals another step's. Sources that cannot tell cheaply return None."""
        return None

    def tokens_seen(self) -> dict[int, int]:
        """{step: tokens seen} for the checkpoints whose count is known (from branch names or the model
        card); empty when the source does not know. `tokens:` step-spec terms select by it."""
        return {}

    def select(self, spec: str | int | Sequence[int] | None) -> list[int]:
        """The steps a spec selects from this source's schedule (see `pythia_dynamics.schedule`)."""
        tokens = self.tokens_seen() if isinstance(spec, str) and "tokens:" in spec else None
        return select_steps(spec, self.steps, tokens)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self.steps)} checkpoints)"


def check_supported_config(path: Path, layout_help: str) -> None:
    """Refuse a config.json that is missing, does not parse, or describes an architecture no family reads.

    Read with `json`, not transformers: cheap, and it names what it found. `layout_help` describes
    the layout the source expects, for the error message.
    """
    if not path.is_file():
        found = sorted(p.name for p in path.parent.iterdir())[:8] if path.parent.is_dir() else []
        raise UnsupportedCheckpointError(
            f"{path} is missing (the folder holds {', '.join(found) or 'nothing'}), so there is no config to "
            f"build a model from. {layout_help}"
        )
    config = read_json_object(path, layout_help, UnsupportedCheckpointError)
    from pythia_dynamics.architectures import SUPPORTED_MODEL_TYPES, supported_families_text

    model_type, architectures = config.get("model_type"), config.get("architectures")
    expected = SUPPORTED_MODEL_TYPES.get(model_type)
    if expected is None or (architectures and expected not in architectures):
        raise UnsupportedCheckpointError(
            f"{path} describes model_type {model_type!r}, architectures {architectures}: pythia-dynamics reads "
            f"causal language models of these families only: {supported_families_text()}. {layout_help}"
        )


def read_json_object(path: Path, layout_help: str, error: type[Exception] = ValueError) -> dict:
    """A JSON file that must hold an object; `error` says which file is broken and how, with `layout_help`."""
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise error(f"{path} is not valid JSON ({problem}); fix or remove it. {layout_help}") from None
    if not isinstance(value, dict):
        raise error(f"{path} holds a JSON {type(value).__name__}, not an object. {layout_help}")
    return value


def load_weight_files(path: Path, fetch_shard=None) -> StateDict:
    """Read one weight file, or an index and its shards (`fetch_shard(name) -> Path` finds each)."""
    import torch
    from safetensors.torch import load_file

    fetch_shard = fetch_shard or (lambda name: path.parent / name)
    if path.name.endswith(".index.json"):
        state_dict: StateDict = {}
        for shard in shard_names(path):
            state_dict.update(load_weight_files(Path(fetch_shard(shard))))
        return state_dict
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated download or a disk that filled: say which file
        raise CheckpointUnavailableError(f"cannot read weights from {path}: {error}") from error


def read_shard_map(index: Path) -> dict[str, str]:
    """{tensor name: shard file} from a sharded checkpoint's `*.index.json`."""
    try:
        return {str(k): str(v) for k, v in json.loads(index.read_text())["weight_map"].items()}
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointUnavailableError(f"cannot read the shard index {index}: {type(error).__name__}: {error}") from None


def shard_names(index: Path) -> list[str]:
    """The weight files a sharded checkpoint's `*.index.json` names."""
    try:
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointUnavailableError(f"cannot read the shard index {index}: {type(error).__name__}: {error}") from None
