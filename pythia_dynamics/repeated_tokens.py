"""The fixed batch of repeated random token sequences that circuit analyses score heads on.

Each sequence is `[BOS] r r`: a beginning-of-sequence token, then `REPEAT_LEN` token ids drawn
uniformly at random, then the same ids again (the convention of the TransformerLens tutorials).
Positions: BOS at 0, the first copy at 1..T, the second at T+1..2T, so the token at T+i repeats the
one at i. A model can predict the second copy only by looking back into the first: what induction
heads do.

The draw is seeded (`numpy.random.default_rng(seed)`), so every checkpoint of a sweep sees the same
batch. Ids are drawn from the tokenizer's vocabulary (`len(model.tokenizer)`, Pythia's padded
embedding rows are never drawn) or, with no tokenizer, from `model.cfg.d_vocab`, leaving out the BOS
id. BOS is `model.tokenizer.bos_token_id`, or 0 (Pythia's `<|endoftext|>`) with no tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

__all__ = ["N_SEQUENCES", "REPEAT_LEN", "SEED", "RepeatedTokens", "repeated_tokens"]

N_SEQUENCES = 8
REPEAT_LEN = 50  # T; shortened to (n_ctx - 1) // 2 for models with a shorter context
SEED = 0
PYTHIA_BOS = 0


@dataclass(frozen=True)
class RepeatedTokens:
    tokens: Int[Tensor, "batch pos"]  # pos = 2 * repeat_len + 1
    repeat_len: int  # T

    @property
    def first_copy(self) -> slice:
        return slice(1, self.repeat_len + 1)

    @property
    def second_copy(self) -> slice:
        return slice(self.repeat_len + 1, 2 * self.repeat_len + 1)


def bos_token_id(model) -> int:
    tokenizer = getattr(model, "tokenizer", None)
    bos = getattr(tokenizer, "bos_token_id", None)
    return PYTHIA_BOS if bos is None else int(bos)


def vocabulary_size(model) -> int:
    tokenizer = getattr(model, "tokenizer", None)
    return model.cfg.d_vocab if tokenizer is None else min(model.cfg.d_vocab, len(tokenizer))


def repeated_tokens(
    model, *, n_sequences: int = N_SEQUENCES, repeat_len: int = REPEAT_LEN, seed: int = SEED
) -> RepeatedTokens:
    """`n_sequences` sequences `[BOS] r r` for `model` (see the module docstring), on the CPU."""
    repeat_len = min(repeat_len, (model.cfg.n_ctx - 1) // 2)
    if repeat_len < 2:
        raise ValueError(f"a context of {model.cfg.n_ctx} tokens is too short for repeated sequences")
    bos, n_vocab = bos_token_id(model), vocabulary_size(model)
    ids = np.random.default_rng(seed).integers(0, n_vocab - 1, size=(n_sequences, repeat_len))
    ids = ids + (ids >= bos)  # skip the BOS id, keeping the draw uniform over the others
    first = np.full((n_sequences, 1), bos)
    tokens = torch.from_numpy(np.concatenate([first, ids, ids], axis=1)).long()
    return RepeatedTokens(tokens, repeat_len)
