"""Structure of the token embeddings: correlations between the first 256 tokens, and per-token norms.

The embedding vector of token t is the row `W_E[t]` ([d_model]); its unembedding vector is the column
`W_U[:, t]`. `n` = min(256, d_vocab) tokens are correlated: ids 0..255, which in the mini suite are the
256 bytes in byte order. In Pythia's tokenizer they are not in byte order (special tokens first, then
byte symbols in GPT-2's stand-in order, printable ASCII first), so label them from `token_strings`.

Definitions (raw weights unless the model was loaded processed):

- array `token_correlation` ([n, n], components `W_E` and `W_U`): Pearson correlation between the
  token vectors of ids 0..n−1, each vector centred over its own d_model entries (its mean over the
  residual dimensions subtracted) and scaled to unit norm; entry (i, j) = cos(centred v_i, centred v_j),
  which is `numpy.corrcoef` of the n vectors. Stored rounded to float32 precision. A vector with zero
  variance (all entries equal) has NaN correlations. The W_U version, the output-side analogue, costs
  the same to compute (n × d_model) and doubles the storage (~0.34 MB per matrix per checkpoint in
  Parquet); `CORRELATION_COMPONENTS` says which are kept.
- array `token_norms` ([n], `W_E` and `W_U`): ‖v_t‖₂ for t < n.
- array `token_strings` ([n] text, `W_E` only): the tokenizer's own name for each of ids 0..n−1
  (`convert_ids_to_tokens`, so GPT-2's byte stand-ins: `Ġ` is a space, `Ċ` a newline), recorded only
  when the model holds a tokenizer that covers those ids.
- scalars `token_norm_mean`, `token_norm_median`, `token_norm_max` (`W_E`, `W_U`): over all d_vocab
  tokens of ‖v_t‖₂ (the median of an even count is the mean of the two middle values; Pythia pads its
  vocabulary to a multiple of 128, and the padding tokens, never seen in training, are included).
- scalar `n_tokens_correlated` (`W_E`): n, which is below 256 only when d_vocab < 256.

The Frobenius norms of W_E and W_U are in `weight_norms`.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from pythia_dynamics.analyses.registry import register
from pythia_dynamics.records import RecordBuilder, Records

__all__ = [
    "CORRELATION_COMPONENTS",
    "N_CORRELATED_TOKENS",
    "embeddings",
    "token_correlation",
    "token_norms",
    "token_strings",
]

N_CORRELATED_TOKENS = 256
# Each correlation matrix is ~0.34 MB per checkpoint in the store; drop "W_U" here to halve that.
CORRELATION_COMPONENTS = ("W_E", "W_U")
# Token norms convert 2 MiB of float64 at a time: a whole 50304 x 512 copy costs more than the norms.
_BLOCK_ELEMENTS = 1 << 18


def token_correlation(vectors: Float[Tensor, "token d_model"]) -> Float[Tensor, "token token"]:
    """Pearson correlation between token vectors, each centred over d_model (float64)."""
    v = vectors.detach().to(torch.float64)
    centred = v - v.mean(dim=-1, keepdim=True)
    unit = centred / torch.linalg.vector_norm(centred, dim=-1, keepdim=True)  # zero variance -> NaN row
    return (unit @ unit.T).clamp(-1.0, 1.0)


def token_norms(vectors: Float[Tensor, "token d_model"]) -> Float[Tensor, "token"]:
    """‖v_t‖₂ of every token vector, in float64, converted a block of rows at a time in memory order."""
    if vectors.stride(-1) == 1:  # token vectors contiguous (W_E): a norm per row of each block of tokens
        step = max(1, _BLOCK_ELEMENTS // vectors.shape[-1])
        blocks = (vectors[start : start + step].double() for start in range(0, len(vectors), step))
        return torch.cat([torch.linalg.vector_norm(block, dim=-1) for block in blocks])
    # Token vectors strided (W_U's columns): sum the squares over blocks of d_model, each a run of rows.
    by_dim = vectors.T
    step = max(1, _BLOCK_ELEMENTS // by_dim.shape[-1])
    squares = torch.zeros(len(vectors), dtype=torch.float64, device=vectors.device)
    for start in range(0, len(by_dim), step):
        squares += by_dim[start : start + step].double().square_().sum(dim=0)
    return squares.sqrt()


def token_strings(model, n: int) -> list[str] | None:
    """The tokenizer's names for ids 0..n−1, or None when the model holds no tokenizer covering them."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or len(tokenizer) < n:
        return None
    names = tokenizer.convert_ids_to_tokens(list(range(n)))
    return names if all(isinstance(name, str) for name in names) else None


@register("embeddings", needs="weights")
@torch.no_grad()
def embeddings(model) -> Records:
    """Correlations between the first 256 token embeddings (and unembeddings), per-token norm statistics."""
    records = RecordBuilder()
    vectors = {"W_E": model.W_E.detach(), "W_U": model.W_U.detach().T}  # both [d_vocab, d_model]
    n = min(N_CORRELATED_TOKENS, vectors["W_E"].shape[0])
    for component, v in vectors.items():
        if component in CORRELATION_COMPONENTS:
            correlation = token_correlation(v[:n]).to(torch.float32)
            records.array(component, "token_correlation", correlation)
        norms = token_norms(v).cpu().numpy()
        records.array(component, "token_norms", norms[:n])
        records.scalar(component, "token_norm_mean", norms.mean())
        records.scalar(component, "token_norm_median", np.median(norms))
        records.scalar(component, "token_norm_max", norms.max())
    records.scalar("W_E", "n_tokens_correlated", n)
    names = token_strings(model, n)
    if names is not None:
        records.array("W_E", "token_strings", names)
    return records.build()
