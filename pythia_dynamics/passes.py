"""The forward and backward passes on the evaluation batch that the analyses of a checkpoint share."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["Passes", "run_passes"]


@dataclass
class Passes:
    tokens: Int[Tensor, "batch pos"]
    logits: Float[Tensor, "batch pos d_vocab"]
    loss: float  # mean next-token cross-entropy on the batch, nats per token
    cache: dict[str, Tensor]  # activations at every hook point, detached
    grads: dict[str, Tensor] | None = None  # named_parameters() name -> gradient of `loss`


def next_token_loss(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]) -> Tensor:
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1)
    )


def run_passes(model, tokens: Int[Tensor, "batch pos"], *, backward: bool = False) -> Passes:
    """One forward pass with every hook cached; with `backward`, the loss's gradients too.

    Gradients are read from `named_parameters()`: on TransformerBridge `W_in` and friends are computed
    views whose `.grad` stays empty, so the trained parameters are the only reliable place.
    """
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    with torch.set_grad_enabled(backward):
        logits, cache = model.run_with_cache(tokens)
        loss = next_token_loss(logits, tokens)
        grads = None
        if backward:
            model.zero_grad(set_to_none=True)
            loss.backward()
            grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
            model.zero_grad(set_to_none=True)
    activations = {name: act.detach() for name, act in cache.items()}
    return Passes(tokens, logits.detach(), loss.detach().item(), activations, grads)
