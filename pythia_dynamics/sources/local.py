"""Local suites: the on-disk layout that is the public contract for user-trained checkpoint suites.

    <root>/suite.json          optional metadata (training hyper-parameters, LR schedule, corpus)
    <root>/tokenizer.json ...  tokenizer files (or inside each step folder)
    <root>/heldout.txt         optional held-out text for evaluation batches
    <root>/step<N>/            a causal LM's save_pretrained output: config.json + model.safetensors

A checkpoint folder may also be named the way a public suite names its branches: checkpoint-<N>
(Hugging Face Trainer, Stanford CRFM), step<N>-tokens<M>B (OLMo), step-<N> (SmolLM2), ckpt_<N> (Amber).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from pythia_dynamics.suites import Revision, RevisionPattern, parse_branch
from pythia_dynamics.sources.base import (
    WEIGHT_FILES,
    CheckpointSource,
    CheckpointUnavailableError,
    StateDict,
    UnsupportedCheckpointError,
    check_supported_config,
    read_json_object,
    read_shard_map,
    load_weight_files,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

__all__ = ["LAYOUT_HELP", "LocalSuite"]

LAYOUT_HELP = (
    "A local suite is a folder with one sub-folder per checkpoint, named step<N> (step0, step1000, ...) or "
    "checkpoint-<N>, step<N>-tokens<M>B, step-<N>, ckpt_<N>, each holding the save_pretrained output of a "
    "supported causal LM (GPT-NeoX, GPT-2, LLaMA, OLMo, OLMo 2: config.json and model.safetensors); "
    "tokenizer files at the root or in each step folder; optionally suite.json."
)
# The folder names a local suite may use, tried in this order; one suite may mix them.
LOCAL_PATTERNS = (
    RevisionPattern("step{step}"),
    RevisionPattern("step{step}-tokens{tokens}B"),
    RevisionPattern("checkpoint-{step}"),
    RevisionPattern("step-{step}"),
    RevisionPattern("ckpt_{step}"),
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def checkpoint_folders(root: Path) -> dict[int, Revision]:
    """{step: the sub-folder's parsed name} for every sub-folder named like a checkpoint."""
    found: dict[int, Revision] = {}
    for path in sorted(root.iterdir()):
        revision = parse_branch(path.name, LOCAL_PATTERNS) if path.is_dir() else None
        if revision is None:
            continue
        if revision.step in found:
            raise ValueError(
                f"{root}: folders {found[revision.step].name} and {path.name} both hold step {revision.step}; "
                f"keep one. {LAYOUT_HELP}"
            )
        found[revision.step] = revision
    return found


class LocalSuite(CheckpointSource):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"no local suite at {self.root}: the folder does not exist. {LAYOUT_HELP}")
        self.suite_meta = _suite_meta(self.root / "suite.json")
        self.folders = checkpoint_folders(self.root)
        on_disk = self.folders
        # suite.json's list wins, so a step whose folder went missing is reported, not silently skipped.
        self.steps = sorted(set(self.suite_meta.get("checkpoint_steps", [])) | set(on_disk))
        if not self.steps:
            single = " It holds a config.json: a single checkpoint, not a suite." if (self.root / "config.json").exists() else ""
            raise ValueError(f"{self.root} holds no step<N> (or other checkpoint) folders.{single} {LAYOUT_HELP}")
        self.name = self.suite_meta.get("name") or self.root.name

    def step_dir(self, step: int) -> Path:
        """The checkpoint's folder as found on disk; step<N> for a step suite.json lists but no folder has."""
        revision = self.folders.get(step)
        return self.root / (revision.name if revision is not None else f"step{step}")

    def tokens_seen(self) -> dict[int, int]:
        """Tokens seen, from folder names that state them (step<N>-tokens<M>B)."""
        return {step: r.tokens for step, r in self.folders.items() if r.tokens is not None}

    def config_dir(self, step: int) -> Path:
        folder = self.step_dir(step)
        if not folder.is_dir():
            raise CheckpointUnavailableError(f"checkpoint step {step} of {self.name}: {folder} is missing")
        check_supported_config(folder / "config.json", LAYOUT_HELP)
        return folder

    def preflight(self, steps: Sequence[int]) -> None:
        """Refuse a folder of an unsupported architecture, reading only the selected steps' config.json.

        A selected step whose folder is missing is left to fail on its own (a sweep records it and goes
        on), unless every selected step is missing: then there is nothing to read at all.
        """
        super().preflight(steps)
        present = [step for step in steps if self.step_dir(step).is_dir()]
        if steps and not present:
            raise CheckpointUnavailableError(
                f"none of the {len(steps)} selected checkpoints of {self.name} is on disk: no folder "
                f"{', '.join(self.step_dir(s).name for s in list(steps)[:5])}{' ...' if len(steps) > 5 else ''} "
                f"under {self.root}. {LAYOUT_HELP}"
            )
        for step in present:
            check_supported_config(self.step_dir(step) / "config.json", LAYOUT_HELP)

    @cache
    def hf_config(self) -> PretrainedConfig:
        from transformers import AutoConfig

        for step in self.steps:
            if (self.step_dir(step) / "config.json").exists():
                check_supported_config(self.step_dir(step) / "config.json", LAYOUT_HELP)
                return AutoConfig.from_pretrained(self.step_dir(step))
        raise UnsupportedCheckpointError(f"no step folder of {self.root} has a config.json. {LAYOUT_HELP}")

    @cache
    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        from transformers import AutoTokenizer

        candidates = [self.root] + [self.step_dir(s) for s in self.steps]
        for folder in candidates:
            if any((folder / f).exists() for f in TOKENIZER_FILES):
                return AutoTokenizer.from_pretrained(folder)
        return None

    def read_state_dict(self, step: int) -> StateDict:
        folder = self.step_dir(step)
        for name in WEIGHT_FILES:
            if (folder / name).exists():
                return load_weight_files(folder / name)
        raise CheckpointUnavailableError(
            f"checkpoint step {step} of {self.name}: no weights in {folder} (looked for {', '.join(WEIGHT_FILES)})"
        )

    def shard_map(self, step: int) -> dict[str, str] | None:
        for name in WEIGHT_FILES:
            if (self.step_dir(step) / name).exists():
                return read_shard_map(self.step_dir(step) / name) if name.endswith(".index.json") else None
        return None

    def metadata(self) -> dict:
        return self.suite_meta

    def heldout_text_path(self) -> Path | None:
        path = self.root / "heldout.txt"
        return path if path.exists() else None


def _suite_meta(path: Path) -> dict:
    return read_json_object(path, LAYOUT_HELP) if path.exists() else {}
