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

    Linear warm-up to `effective_peak_lr` (`peak_lr`, or `sgd_peak_lr` for SGD) at `warmup_steps`, then
    cosine decay to `min_lr` at `total_steps`.
    """
    if not 0 <= step <= config.total_steps:
        raise ValueError(f"step must be in [0, {config.total_steps}], got {step}")
    warmup = config.warmup_steps
    if step < warmup:
        return config.effective_peak_lr * step / warmup
    progress = (step - warmup) / (config.total_steps - warmup)
    return config.min_lr + (config.effective_peak_lr - config.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


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


def layer_norm_gains(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weight (gain) of every LayerNorm module of `model`."""
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.LayerNorm) and m.weight is not None]


def build_optimizer(model: torch.nn.Module, config: SuiteConfig) -> torch.optim.Optimizer:
    """AdamW (or SGD, `config.optimizer`) with weight decay on matrices (embeddings included) only, as
    GPT-NeoX does; `config.decay_vectors` decays every parameter. `config.train_norm_gains=False` freezes the
    layer-norm gains here (requires_grad off), so they stay at their initial 1.

    Group 0 decays, group 1 does not; the learning rate is set per step by the loop.
    """
    if not config.train_norm_gains:
        for gain in layer_norm_gains(model):
            gain.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2 or config.decay_vectors]
    no_decay = [p for p in params if not (p.ndim >= 2 or config.decay_vectors)]
    groups = [
        {"params": decay, "weight_decay": config.effective_weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return DecoupledSGD(groups, lr=lr_at(0, config), momentum=config.sgd_momentum)
    return torch.optim.AdamW(
        groups,
        lr=lr_at(0, config),
        betas=(config.beta1, config.beta2),
        eps=config.adam_eps,
        # foreach is torch's CPU default too; pinned so a torch upgrade cannot silently change the bits
        foreach=True,
    )


class DecoupledSGD(torch.optim.SGD):
    """SGD with heavy-ball momentum and weight decay applied as AdamW applies it (w <- w * (1 - lr * wd),
    before the gradient step), so that lr * wd * steps means the same decay timescale for both optimisers.
    torch's own SGD weight decay is added to the gradient, where momentum would amplify it ~1/(1 - momentum)."""

    def __init__(self, groups: list[dict], lr: float, momentum: float):
        for group in groups:
            group["decoupled_weight_decay"] = group.pop("weight_decay")
        super().__init__(groups, lr=lr, momentum=momentum, weight_decay=0.0, foreach=True)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group["decoupled_weight_decay"]:
                for p in group["params"]:
                    if p.grad is not None:
                        p.mul_(1.0 - group["lr"] * group["decoupled_weight_decay"])
        return super().step(closure)


def initialise_from_final(model: torch.nn.Module, config: SuiteConfig) -> None:
    """Overwrite every weight matrix of a freshly built `model` from the final checkpoint of `config.init_from`
    (`config.init`: "final-fitted" draws i.i.d. from a Student-t fitted to that matrix, "final-permuted"
    permutes its entries). Draws come from numpy streams seeded by `config.seed`. Vectors are left alone."""
    import numpy as np
    from scipy import stats

    from pythia_dynamics.train.loop import final_state_dict

    final = final_state_dict(config.init_from)
    own = dict(model.named_parameters())
    for index, (name, param) in enumerate(sorted(own.items())):
        if param.ndim < 2:
            continue
        if name not in final or tuple(final[name].shape) != tuple(param.shape):
            raise ValueError(
                f"init_from {config.init_from}: its final checkpoint has no {name} of shape {tuple(param.shape)} "
                f"(found {tuple(final[name].shape) if name in final else 'none'}); train it with the same model shape"
            )
        values = final[name].detach().double().numpy().ravel()
        rng = np.random.default_rng([config.seed, INIT_STREAM, index])
        if config.init == "final-permuted":
            drawn = rng.permutation(values)
        else:  # a fit on at most 20,000 entries: enough for three parameters, ~0.1 s a matrix
            sample = values if len(values) <= 20_000 else rng.choice(values, 20_000, replace=False)
            nu, loc, scale = stats.t.fit(sample)
            drawn = stats.t.rvs(nu, loc, scale, size=len(values), random_state=rng)
        with torch.no_grad():
            param.copy_(torch.from_numpy(drawn).reshape(param.shape).to(param.dtype))


INIT_STREAM = 5  # numpy stream id of the final-* inits, apart from the corpus's, batches' and spans'


__all__ = [
    "SuiteConfig",
    "pythia_like_schedule",
    "lr_at",
    "build_model",
    "build_optimizer",
    "initialise_from_final",
    "layer_norm_gains",
    "DecoupledSGD",
]
