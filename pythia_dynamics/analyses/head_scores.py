"""What each attention head does: induction, previous-token and duplicate-token scores, sink share, entropy.

Component `attn`, one row per (layer, head). With `pattern[b, h, q, k]` a head's attention from query
position q to key position k (`blocks.L.attn.hook_pattern`, rows sum to 1):

On the fixed batch of repeated random sequences `[BOS] r r` of `pythia_dynamics.repeated_tokens`
(8 sequences, T = 50 random ids, or (n_ctx - 1) // 2 in shorter contexts; BOS at 0, copies at 1..T
and T+1..2T), run in one small forward pass that `in_context_learning` shares
(`pythia_dynamics.passes.repeated_pass`):
- `induction_score`: mean over sequences and the second copy's queries q = T+1..2T of
  `pattern[q, q - T + 1]`, the attention to the token *after* the query token's earlier occurrence
  (an induction head attends there to copy what came next last time);
- `duplicate_token_score`: the same mean of `pattern[q, q - T]`, attention to the earlier occurrence itself;
- `prev_token_score`: mean over sequences and queries q = 1..2T of `pattern[q, q - 1]`.
Uniform causal attention gives an induction score of about 1 / (q + 1), about 0.013 here.

On the sweep's evaluation batch (shared forward pass), over every sequence and query q >= 1
(query 0 can only attend to itself, so it is left out of both):
- `sink_share`: mean `pattern[q, 0]`, the attention given to the first position (an attention sink;
  evaluation windows start mid-text, so this is the first position, not necessarily a BOS token);
- `attention_entropy`: mean of `-sum_k pattern[q, k] * ln pattern[q, k]` (nats; 0 ln 0 = 0). A head
  attending to one key has 0; uniform attention over q + 1 keys has ln(q + 1).

Arrays, for `views.attention_over_training`: `view_pattern` (component `attn`, per layer, shape
[head, V, V]): every head's attention on the first evaluation sequence's first V = 32 positions
(causal attention, so the full pass gives exactly the prefix's pattern), and `view_tokens` (layer
None): those V tokens as text (the tokenizer's decoding of each id, or the ids without a tokenizer).
"""

from __future__ import annotations

import torch
from einops import reduce
from jaxtyping import Float
from torch import Tensor

from pythia_dynamics.analyses.registry import register
from pythia_dynamics.passes import BatchTotals, ChunkPasses, attention_pattern_hooks, shared_repeated_pass
from pythia_dynamics.records import RecordBuilder, Records

__all__ = [
    "HeadScores", "VIEW_TOKENS", "attention_entropy", "duplicate_token_scores", "induction_scores",
    "pattern_hooks", "previous_token_scores", "sink_shares",
]  # fmt: skip

VIEW_TOKENS = 32


pattern_hooks = attention_pattern_hooks


def _stripe_mean(pattern: Float[Tensor, "batch head q k"], queries: range, offset: int) -> Float[Tensor, "head"]:
    """Mean over the batch and `queries` of pattern[q, q - offset]."""
    q = torch.tensor(list(queries), device=pattern.device)
    stripe = pattern[:, :, q, q - offset]  # [batch, head, query]
    return reduce(stripe.double(), "batch head query -> head", "mean")


def induction_scores(pattern: Float[Tensor, "batch head q k"], repeat_len: int) -> Float[Tensor, "head"]:
    return _stripe_mean(pattern, range(repeat_len + 1, 2 * repeat_len + 1), repeat_len - 1)


def duplicate_token_scores(pattern: Float[Tensor, "batch head q k"], repeat_len: int) -> Float[Tensor, "head"]:
    return _stripe_mean(pattern, range(repeat_len + 1, 2 * repeat_len + 1), repeat_len)


def previous_token_scores(pattern: Float[Tensor, "batch head q k"]) -> Float[Tensor, "head"]:
    return _stripe_mean(pattern, range(1, pattern.shape[-2]), 1)


def sink_shares(pattern: Float[Tensor, "batch head q k"]) -> Float[Tensor, "batch head q"]:
    """Attention to position 0 from every query >= 1."""
    return pattern[:, :, 1:, 0].double()


def attention_entropy(pattern: Float[Tensor, "batch head q k"]) -> Float[Tensor, "batch head q"]:
    """Entropy (nats) of each query >= 1's attention; masked keys hold 0 and add 0."""
    p = pattern[:, :, 1:].double()
    return -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(-1)


@register("head_scores", needs="forward")
class HeadScores:
    """Per head: induction, previous-token and duplicate-token scores on repeated random tokens; sink share, entropy."""

    def __init__(self, model):
        self.model = model
        self.hooks = pattern_hooks(model)
        n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
        self.sink_sum = torch.zeros(n_layers, n_heads, dtype=torch.float64)
        self.entropy_sum = torch.zeros(n_layers, n_heads, dtype=torch.float64)
        self.n_queries = 0
        self.view: dict[int, Tensor] = {}
        self.view_ids: list[int] = []

    def update(self, chunk: ChunkPasses) -> None:
        for layer, hook in enumerate(self.hooks):
            pattern = chunk.activations[hook]
            self.sink_sum[layer] += reduce(sink_shares(pattern), "batch head q -> head", "sum").cpu()
            self.entropy_sum[layer] += reduce(attention_entropy(pattern), "batch head q -> head", "sum").cpu()
            if not self.view_ids:  # the batch's first sequence arrives in the first chunk
                self.view[layer] = pattern[0, :, :VIEW_TOKENS, :VIEW_TOKENS].cpu()
        n_batch, n_pos = chunk.tokens.shape
        self.n_queries += n_batch * (n_pos - 1)
        if not self.view_ids:
            self.view_ids = chunk.tokens[0, :VIEW_TOKENS].tolist()

    def finish(self, totals: BatchTotals) -> Records:
        repeated = shared_repeated_pass(totals, self.model)
        patterns = repeated.patterns
        T = repeated.batch.repeat_len
        records = RecordBuilder()
        for layer, hook in enumerate(self.hooks):
            scores = {
                "induction_score": induction_scores(patterns[hook], T),
                "prev_token_score": previous_token_scores(patterns[hook]),
                "duplicate_token_score": duplicate_token_scores(patterns[hook], T),
                "sink_share": self.sink_sum[layer] / max(self.n_queries, 1),
                "attention_entropy": self.entropy_sum[layer] / max(self.n_queries, 1),
            }
            for stat, per_head in scores.items():
                for head, value in enumerate(per_head.tolist()):
                    records.scalar("attn", stat, value, layer=layer, head=head)
            if layer in self.view:
                records.array("attn", "view_pattern", self.view[layer], layer=layer)
        if self.view_ids:
            records.array("attn", "view_tokens", _token_strings(self.model, self.view_ids))
        return records.build()


def _token_strings(model, ids: list[int]) -> list[str]:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return [str(i) for i in ids]
    return [tokenizer.decode([i]) for i in ids]
