"""Random-weight suites with known contents, for tests, benchmarks and planted-truth checks.

Real Pythia shapes come from `PYTHIA_SHAPES`, so a benchmark can build a pythia-70m-shaped suite with
no network. Weights are drawn from a seeded generator: the same call writes the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, GPTNeoXConfig, PretrainedConfig

__all__ = [
    "PYTHIA_SHAPES",
    "FAMILY_BENCH_SHAPE",
    "TINY_FAMILY_CONFIGS",
    "pythia_shaped_config",
    "tiny_config",
    "tiny_family_config",
    "write_random_suite",
    "write_shaped_checkpoint",
]

# (layers, d_model, heads) from the Pythia paper, table 1; all use d_mlp = 4 d_model, vocab 50304.
PYTHIA_SHAPES = {
    "14m": (6, 128, 4), "31m": (6, 256, 8), "70m": (6, 512, 8), "160m": (12, 768, 12),
    "410m": (24, 1024, 16), "1b": (16, 2048, 8), "1.4b": (24, 2048, 16), "2.8b": (32, 2560, 32),
    "6.9b": (32, 4096, 32), "12b": (36, 5120, 40),
}  # fmt: skip
# The two largest pad their vocabularies further than the others' 50,304.
PYTHIA_VOCAB = {"6.9b": 50432, "12b": 50688}


def pythia_shaped_config(size: str, **overrides) -> GPTNeoXConfig:
    layers, d_model, heads = PYTHIA_SHAPES[size]
    fields = dict(
        vocab_size=PYTHIA_VOCAB.get(size, 50304), hidden_size=d_model, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * d_model, max_position_embeddings=2048, rotary_pct=0.25,
        use_parallel_residual=True, tie_word_embeddings=False, architectures=["GPTNeoXForCausalLM"],
    )  # fmt: skip
    return GPTNeoXConfig(**(fields | overrides))


def tiny_config(**overrides) -> GPTNeoXConfig:
    """Two layers, d_model 32: a model that builds and runs in milliseconds."""
    fields = dict(
        vocab_size=384, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
        architectures=["GPTNeoXForCausalLM"],
    )  # fmt: skip
    return GPTNeoXConfig(**(fields | overrides))


# One tiny config per architecture family the loader reads (Hugging Face model_type -> config fields), the
# shapes of its real suites scaled down: GPT-2 ties its unembedding to the embedding (the Stanford CRFM
# GPT-2s do), LLaMA uses grouped-query attention (SmolLM2 does; Amber does not), SmolLM3 stores LLaMA's
# tensors with tied embeddings, OLMo-1 has no layer-norm weights at all, OLMo-2 normalises after each sublayer and normalises queries and keys.
TINY_FAMILY_CONFIGS: dict[str, dict] = {
    "gpt_neox": dict(
        vocab_size=384, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
        architectures=["GPTNeoXForCausalLM"],
    ),
    "gpt2": dict(
        vocab_size=384, n_embd=32, n_layer=2, n_head=4, n_positions=64, n_ctx=64, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=0, architectures=["GPT2LMHeadModel"],
    ),
    "llama": dict(
        vocab_size=384, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=0,
        eos_token_id=0, architectures=["LlamaForCausalLM"],
    ),
    "smollm3": dict(
        vocab_size=384, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=True, bos_token_id=0,
        eos_token_id=0, pad_token_id=1, architectures=["SmolLM3ForCausalLM"],
    ),
    "olmo": dict(
        vocab_size=384, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=None, eos_token_id=0, pad_token_id=1,
        architectures=["OlmoForCausalLM"],
    ),
    "olmo2": dict(
        vocab_size=384, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=None, eos_token_id=0, pad_token_id=1,
        architectures=["Olmo2ForCausalLM"],
    ),
}  # fmt: skip


# About 100M parameters in each family (12 layers, d_model 768, GPT-2 small's shape), for the benchmark.
FAMILY_BENCH_SHAPE = {
    "gpt_neox": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     vocab_size=50304, max_position_embeddings=2048),
    "gpt2": dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024, n_ctx=1024),
    "llama": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                  intermediate_size=2048, vocab_size=49152, max_position_embeddings=2048),
    "smollm3": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                    intermediate_size=2048, vocab_size=49152, max_position_embeddings=2048),
    "olmo": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048,
                 vocab_size=50304, max_position_embeddings=2048),
    "olmo2": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048,
                  vocab_size=50304, max_position_embeddings=2048),
}  # fmt: skip


def tiny_family_config(model_type: str, **overrides) -> PretrainedConfig:
    """A two-layer, d_model 32 config of one architecture family (`TINY_FAMILY_CONFIGS`' keys)."""
    from transformers import AutoConfig

    if model_type not in TINY_FAMILY_CONFIGS:
        raise ValueError(f"no tiny config for model_type {model_type!r}; known: {', '.join(TINY_FAMILY_CONFIGS)}")
    return AutoConfig.for_model(model_type, **(TINY_FAMILY_CONFIGS[model_type] | overrides))


def write_random_suite(
    root: str | Path,
    config: PretrainedConfig,
    steps: Sequence[int],
    *,
    seed: int = 0,
    identical: Sequence[tuple[int, int]] = (),
    edit: Callable[[int, torch.nn.Module], None] | None = None,
    suite_meta: dict | None = None,
) -> Path:
    """Write a local suite whose step N holds freshly drawn weights (seed + N), of any causal-LM config.

    `identical` pairs (later, earlier) make step `later` a byte-identical copy of step `earlier`,
    as Pythia's step1 is of step0. `edit(step, model)` may plant known structure before saving.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    copies = dict(identical)
    for step in steps:
        torch.manual_seed(seed + copies.get(step, step))
        model = AutoModelForCausalLM.from_config(config)
        if edit is not None:
            edit(copies.get(step, step), model)
        model.save_pretrained(root / f"step{step}", safe_serialization=True)
    meta = {"name": root.name, "checkpoint_steps": list(steps), "synthetic": True} | (suite_meta or {})
    (root / "suite.json").write_text(json.dumps(meta, indent=1))
    return root


def write_shaped_checkpoint(
    folder: str | Path, config: PretrainedConfig, *, seed: int = 0, dtype: torch.dtype = torch.float16
) -> Path:
    """One checkpoint of `config`'s shapes (any supported family), N(0, 0.02) matrices, unit norm weights,
    zero biases, stored in `dtype` (Pythia's checkpoints are float16) straight to `model.safetensors`.

    For benchmarks of large shapes, where initialising a Hugging Face model per checkpoint would take
    far longer than what is being measured. The tensor names and shapes are the family's causal-LM
    class's (a tied unembedding is not stored, as `save_pretrained` leaves it out).
    """
    from pythia_dynamics.architectures import is_non_weight

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in AutoModelForCausalLM.from_config(config).state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        shapes = {name: shape for name, shape in shapes.items() if not name.startswith(("lm_head.", "embed_out."))}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        if is_non_weight(name):
            continue
        if len(shape) == 1 and ("norm" in name or "ln_" in name):
            tensors[name] = torch.ones(shape, dtype=dtype)
        elif name.endswith(".bias"):
            tensors[name] = torch.zeros(shape, dtype=dtype)
        else:
            tensors[name] = (torch.randn(shape, generator=generator) * 0.02).to(dtype)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(folder)
    return folder
