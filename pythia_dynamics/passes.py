"""The forward and backward passes on the evaluation batch, shared by all analyses of a checkpoint.

The batch is run in chunks of sequences so that large models and long batches fit in memory:
each chunk's activations (and, with a backward pass, their gradients) are handed to the streaming
analyses, which accumulate statistics, and then dropped. Gradients are of the whole batch's mean
next-token loss, so chunked and unchunked runs give the same numbers: each chunk's summed loss is
divided by the batch's total number of predictions before its backward pass, and parameter
gradients accumulate across chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from pythia_dynamics.repeated_tokens import RepeatedTokens, repeated_tokens

__all__ = ["BatchTotals", "ChunkPasses", "RepeatedPass", "attention_pattern_hooks", "per_token_loss", "repeated_pass",
           "run_chunked_passes", "shared_repeated_pass"]  # fmt: skip


T = TypeVar("T")


@dataclass
class ChunkPasses:
    tokens: Int[Tensor, "chunk pos"]
    logits: Float[Tensor, "chunk pos d_vocab"]
    token_loss: Float[Tensor, "chunk pred"]  # column t - 1: cross-entropy of predicting position t (nats)
    loss_sum: float  # summed next-token cross-entropy over this chunk's predictions (nats)
    n_predictions: int
    activations: dict[str, Tensor]  # hook name -> activation, detached, for the hooks asked for
    activation_grads: dict[str, Tensor] | None  # hook name -> d(batch mean loss)/d(activation)


@dataclass
class BatchTotals:
    loss: float  # mean next-token cross-entropy over the whole batch, nats per token
    n_predictions: int
    grads: dict[str, Tensor] | None  # named_parameters() name -> gradient of `loss` (backward only)
    _shared: dict[str, object] = field(default_factory=dict, repr=False)

    def shared(self, key: str, compute: Callable[[], T]) -> T:
        """`compute()` once for this checkpoint's analyses: every `finish` receives the same totals, so a
        second pass they all need (the repeated-token batch's) runs once, whichever of them asks first."""
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]  # type: ignore[return-value]


def per_token_loss(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pred"]:
    """Cross-entropy of predicting tokens[:, t] from logits[:, t - 1], t = 1..pos-1 (column t - 1).

    In float32: float64 logits of a 50k vocabulary would cost more than the pass."""
    batch = tokens.shape[0]
    flat = F.cross_entropy(
        rearrange(logits[:, :-1].float(), "batch pred vocab -> (batch pred) vocab"),
        rearrange(tokens[:, 1:], "batch pred -> (batch pred)"),
        reduction="none",
    )
    return rearrange(flat, "(batch pred) -> batch pred", batch=batch)


def next_token_loss_sum(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]) -> Tensor:
    return per_token_loss(logits, tokens).sum()


def run_chunked_passes(
    model,
    tokens: Int[Tensor, "batch pos"],
    *,
    hooks: Iterable[str] = (),
    backward: bool = False,
    chunk_size: int | None = None,
    on_chunk: Callable[[ChunkPasses], None] = lambda chunk: None,
) -> BatchTotals:
    """Run `tokens` through `model` `chunk_size` sequences at a time (default: all at once).

    Gradients are read from `named_parameters()`: on TransformerBridge `W_in` and friends are
    computed views whose `.grad` stays empty, so the trained parameters are the reliable place.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of sequences, got {chunk_size}")
    hooks = list(dict.fromkeys(hooks))
    missing = [h for h in hooks if h not in model.hook_dict]
    if missing:
        raise ValueError(f"hook point(s) {missing} do not exist on this model; e.g. {list(model.hook_dict)[:5]}")
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    chunk_size = chunk_size or len(tokens)
    total_predictions = tokens.shape[0] * (tokens.shape[1] - 1)
    loss_sum = 0.0
    if backward:
        model.zero_grad(set_to_none=True)
    for start in range(0, len(tokens), chunk_size):
        chunk = tokens[start : start + chunk_size]
        activations: dict[str, Tensor] = {}
        activation_grads: dict[str, Tensor] = {}
        # Keyed by the name asked for: the bridge reports some backward hooks under canonical names.
        fwd = [(name, _saver(activations, name)) for name in hooks]
        bwd = [(name, _saver(activation_grads, name)) for name in hooks] if backward else []
        with torch.set_grad_enabled(backward), model.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
            logits = model(chunk)
            token_loss = per_token_loss(logits, chunk)  # kept per token: in_context_learning reads it
            chunk_loss = token_loss.sum()
            if backward:
                (chunk_loss / total_predictions).backward()
        loss_sum += chunk_loss.item()
        on_chunk(
            ChunkPasses(
                chunk, logits.detach(), token_loss.detach(), chunk_loss.item(), chunk.shape[0] * (chunk.shape[1] - 1),
                activations, activation_grads if backward else None,
            )
        )  # fmt: skip
        del logits, token_loss, chunk_loss, activations, activation_grads
    grads = None
    if backward:
        grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
    return BatchTotals(loss_sum / total_predictions, total_predictions, grads)


def _saver(store: dict[str, Tensor], name: str):
    def save(tensor: Tensor, hook) -> None:
        store[name] = tensor.detach()

    return save


def attention_pattern_hooks(model) -> list[str]:
    """Every layer's `blocks.L.attn.hook_pattern`, in layer order."""
    return [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]


@dataclass(frozen=True)
class RepeatedPass:
    """One forward pass of the repeated random-token batch (`pythia_dynamics.repeated_tokens`)."""

    batch: RepeatedTokens
    patterns: dict[str, Float[Tensor, "batch head q k"]]  # attention_pattern_hooks(model) -> pattern
    token_loss: Float[Tensor, "batch pred"]  # column t - 1: cross-entropy of predicting position t (nats)


@torch.no_grad()
def repeated_pass(model) -> RepeatedPass:
    """The repeated batch through `model` once, keeping what `head_scores` (every attention pattern) and
    `in_context_learning` (the per-token loss) read; they call `shared_repeated_pass`."""
    batch = repeated_tokens(model)
    chunks: list[ChunkPasses] = []
    run_chunked_passes(model, batch.tokens, hooks=attention_pattern_hooks(model), on_chunk=chunks.append)
    (chunk,) = chunks
    return RepeatedPass(batch, chunk.activations, chunk.token_loss)


def shared_repeated_pass(totals: BatchTotals, model) -> RepeatedPass:
    """`repeated_pass(model)`, run once per checkpoint whichever analysis asks first (see `BatchTotals.shared`)."""
    return totals.shared("repeated_pass", lambda: repeated_pass(model))
