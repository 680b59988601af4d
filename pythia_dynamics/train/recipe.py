"""The Pythia training recipe, shrunk to fit a laptop CPU.

Everything that decides what a suite *is* lives in `SuiteConfig` (in `config.py`, free of torch);
the helpers here turn it into a model, an optimiser, a learning-rate schedule and a list of
checkpoint steps, so that `loop.py` only has to run them.
"""

from __future__ import annotations

import math

import torch

from pythia_dynamics.schedule import pythia_like_schedule
from pythia_dynamics.train.config import SuiteConfig


def lr_at(step: int, config: SuiteConfig) -> float:
    """Learning rate of the update that produces checkpoint `step` (so `lr_at(0, c) == 0`: step 0 is the init).

    Linear warm-up to `peak_lr` at `warmup_steps`, then cosine decay to `min_lr` at `total_steps`.
    """
    if not 0 <= step <= config.total_steps:
        raise ValueError(f"step must be in [0, {config.total_steps}], got {step}")
    warmup = config.warmup_steps
    if step < warmup:
        return config.peak_lr * step / warmup
    progress = (step - warmup) / (config.total_steps - warmup)
    return config.min_lr + (config.peak_lr - config.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_model(config: SuiteConfig, vocab_size: int, eos_token_id: int):
    """A freshly initialised GPT-NeoX with the Pythia architecture (init from the global torch RNG)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    hf_config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        intermediate_size=config.d_mlp,
        hidden_act=config.hidden_act,
        # rotary_pct/rotary_emb_base are understood by transformers 4.x and mapped to rope_parameters by 5.x
        rotary_pct=config.rotary_pct,
        rotary_emb_base=config.rotary_base,
        max_position_embeddings=config.seq_len,
        initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps,
        use_parallel_residual=config.use_parallel_residual,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
    )
    return GPTNeoXForCausalLM(hf_config)


def build_optimizer(model: torch.nn.Module, config: SuiteConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (embeddings included) only, as GPT-NeoX does.

    Group 0 decays, group 1 does not; the learning rate is set per step by the loop.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.effective_weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr_at(0, config),
        betas=(config.beta1, config.beta2),
        eps=config.adam_eps,
        # foreach is torch's CPU default too; pinned so a torch upgrade cannot silently change the bits
        foreach=True,
    )


__all__ = [
    "SuiteConfig",
    "pythia_like_schedule",
    "lr_at",
    "build_model",
    "build_optimizer",
]
