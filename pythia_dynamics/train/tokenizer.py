"""A byte-level BPE tokenizer whose ids are easy to reason about.

Ids 0..255 are the 256 bytes in byte order, then the learned merges in the order
they were learned, then `<|endoftext|>` last. So "token 65" is always the byte
b"A", and a lower id is an earlier (more frequent) merge, which makes token
statistics across checkpoints readable without a lookup table.
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache
from typing import Sequence

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (the ByteLevel alphabet, in byte order)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    mapping = {b: chr(c) for b, c in zip(printable, chars)}
    if set(mapping.values()) != set(pre_tokenizers.ByteLevel.alphabet()):
        raise RuntimeError("this tokenizers version's ByteLevel alphabet is not GPT-2's bytes_to_unicode")
    return mapping


def _merges_in_order(trained: Tokenizer) -> list[tuple[str, str]]:
    merges = json.loads(trained.to_str())["model"]["merges"]
    # tokenizers < 0.20 stores "a b" strings, later versions [a, b] pairs; byte-level tokens hold no spaces
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def train_tokenizer(docs: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on `docs` and re-number it: bytes, merges in order, then `<|endoftext|>`."""
    byte_chars = bytes_to_unicode()
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)

    scratch = Tokenizer(models.BPE())
    scratch.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # the last id is kept for <|endoftext|>
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    scratch.train_from_iterator(docs, trainer=trainer)

    vocab = {byte_chars[b]: b for b in range(256)}
    merges = _merges_in_order(scratch)
    for a, b in merges:
        # a token can be reached by two different merges; it keeps the id of the first
        vocab.setdefault(a + b, len(vocab))
    vocab[EOS_TOKEN] = len(vocab)

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=False)])
    if tok.token_to_id(EOS_TOKEN) != len(vocab) - 1:
        raise RuntimeError("<|endoftext|> did not land on the last id")

    if len(vocab) < vocab_size:
        logger.warning("the corpus supports only %d tokens, fewer than vocab_size=%d", len(vocab), vocab_size)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        # the default clean-up rewrites " ." to "." and would break exact round trips of code
        clean_up_tokenization_spaces=False,
    )


def encode_docs(tokenizer: PreTrainedTokenizerFast, docs: Sequence[str]) -> np.ndarray:
    """One token stream: each document followed by `<|endoftext|>`, as Pythia's packed training data."""
    encodings = tokenizer.backend_tokenizer.encode_batch(list(docs), add_special_tokens=False)
    eos = tokenizer.eos_token_id
    total = sum(len(e.ids) + 1 for e in encodings)
    out = np.empty(total, dtype=np.int64)
    i = 0
    for e in encodings:
        n = len(e.ids)
        out[i : i + n] = e.ids
        out[i + n] = eos
        i += n + 1
    return out


def encode_text(tokenizer: PreTrainedTokenizerFast, text: str) -> np.ndarray:
    """Token ids of `text`, reading `<|endoftext|>` as the special token (as heldout.txt needs)."""
    return np.asarray(tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)


def tokenizer_record(tokenizer: PreTrainedTokenizerFast) -> dict:
    serialized = tokenizer.backend_tokenizer.to_str()
    return {
        "kind": "byte-level-bpe",
        "vocab_size": len(tokenizer),
        "n_merges": len(json.loads(serialized)["model"]["merges"]),
        "byte_tokens": "ids 0-255 in byte order",
        "eos_token": EOS_TOKEN,
        "eos_token_id": tokenizer.eos_token_id,
        "sha256": hashlib.sha256(serialized.encode("utf-8")).hexdigest(),
    }
