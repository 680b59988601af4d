"""Train a checkpoint suite: corpus -> tokenizer -> GPT-NeoX -> `out/step{N}/` folders -> `out/suite.json`.

Layout of a finished suite::

    out/tokenizer.json, tokenizer_config.json, ...   (AutoTokenizer.from_pretrained(out))
    out/heldout.txt                                  (held-out text for evaluation batches)
    out/step{N}/config.json, model.safetensors       (weights before update N+1; step0 is the init)
    out/suite.json                                   (written last: its presence marks a complete suite)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Int
from tqdm.auto import tqdm

from .corpus import load_corpus, heldout_text
from .recipe import SuiteConfig, build_model, build_optimizer, initialise_from_final, lr_at
from .tokenizer import encode_docs, encode_text, tokenizer_record, train_tokenizer

logger = logging.getLogger(__name__)

SUITE_FORMAT = "pythia-dynamics-suite/1"
SUITE_FILE = "suite.json"
HELDOUT_FILE = "heldout.txt"
BATCH_STREAM = 3  # numpy stream id for batch sampling, apart from the corpus's streams
REPEAT_STREAM = 4  # the repeated spans' own stream, so turning them on leaves the text rows unchanged
SYNTHETIC_STREAM = 6  # i.i.d. token streams (token_stream "zipf"/"uniform"); held-out draws use 7


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _config_json(config: SuiteConfig) -> dict:
    # compared against what suite.json holds, so both must have been through JSON
    return json.loads(json.dumps(config.to_dict()))


def read_suite(out: str | Path) -> dict | None:
    """The parsed suite.json of a complete suite, or None if there is none."""
    path = Path(out) / SUITE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _check_out(out: Path, config: SuiteConfig) -> bool:
    """True if `out` already holds this suite; False if it is free to write; raises otherwise."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder; pass a folder path for the suite")
    if not out.exists() or not any(out.iterdir()):
        return False
    suite = read_suite(out)
    if suite is None:
        raise FileExistsError(
            f"{out} is not empty and holds no complete suite (no {SUITE_FILE}), perhaps an interrupted run; "
            "delete it or pass another folder"
        )
    if suite.get("format") != SUITE_FORMAT:
        raise FileExistsError(
            f"{out} holds a suite of format {suite.get('format')!r}, not {SUITE_FORMAT!r}; "
            "delete it or pass another folder"
        )
    want = _config_json(config)
    have = suite.get("config", {})
    if have != want:
        diffs = sorted(k for k in set(want) | set(have) if want.get(k, "<missing>") != have.get(k, "<missing>"))
        shown = ", ".join(f"{k}: {have.get(k, '<missing>')!r} there vs {want.get(k, '<missing>')!r} asked" for k in diffs[:5])
        raise FileExistsError(
            f"{out} holds a suite trained with a different config ({shown}); "
            "delete it, pass another folder, or ask for the config it was trained with"
        )
    return True


@contextlib.contextmanager
def _quiet_hf_progress() -> Iterator[None]:
    # save_pretrained draws its own progress bar per checkpoint, which would shred ours
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _save_checkpoint(model: torch.nn.Module, folder: Path) -> None:
    tmp = folder.with_name(f".{folder.name}.tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    os.replace(tmp, folder)


def _sample_batch(tokens: torch.Tensor, rng: np.random.Generator, batch_size: int, seq_len: int) -> torch.Tensor:
    starts = rng.integers(0, len(tokens) - seq_len - 1, size=batch_size, endpoint=True)
    index = torch.from_numpy(starts)[:, None] + torch.arange(seq_len + 1)
    return tokens[index]


def repeat_pool(train_tokens: np.ndarray, repeat_vocab: int, vocab_size: int, eos_id: int) -> np.ndarray:
    """The ids repeated spans draw from: the `repeat_vocab` most frequent training tokens, EOS excluded.

    Sorted by falling count, ties by the lower id; `repeat_vocab=0` gives every id but EOS, in id order.
    """
    ids = np.array([i for i in range(vocab_size) if i != eos_id])
    if repeat_vocab == 0:
        return ids
    counts = np.bincount(train_tokens, minlength=vocab_size)[ids]
    return ids[np.argsort(-counts, kind="stable")[:repeat_vocab]]


def repeated_spans(
    pool: np.ndarray, rng: np.random.Generator, n_rows: int, len_range: tuple[int, int], seq_len: int
) -> Int[torch.Tensor, "row pos"]:
    """`n_rows` rows `r r r ...` of `seq_len + 1` tokens; each r has a length drawn uniformly from `len_range`
    (both ends included) and distinct ids drawn uniformly from `pool` (without replacement, so the token
    after a token's earlier occurrence is unambiguous)."""
    if len(pool) < len_range[1]:
        raise ValueError(f"a pool of {len(pool)} ids cannot fill a span of {len_range[1]} distinct ids")
    lengths = torch.from_numpy(rng.integers(len_range[0], len_range[1], size=n_rows, endpoint=True))
    # a random permutation of the pool per row, of which the first len_range[1] entries are kept
    picks = np.argsort(rng.random((n_rows, len(pool))), axis=1)[:, : len_range[1]]
    spans = torch.from_numpy(pool[picks])
    # position p of row i repeats the span's entry p mod len_i; entries past len_i are never read
    index = torch.arange(seq_len + 1)[None, :] % lengths[:, None]
    return spans.gather(1, index)


def stream_probabilities(config: SuiteConfig, corpus_tokens: np.ndarray, vocab_size: int, eos_id: int) -> np.ndarray:
    """The i.i.d. law of `config.token_stream` ("zipf" or "uniform") over the ids of the vocabulary.

    <|endoftext|> gets probability 0; "zipf" gives the id of corpus frequency rank k (1 = most frequent,
    ties by the lower id) probability proportional to k ** -zipf_exponent.
    """
    if config.token_stream not in ("zipf", "uniform"):
        raise ValueError(f"token_stream {config.token_stream!r} is not an i.i.d. law")
    ids = repeat_pool(corpus_tokens, 0, vocab_size, eos_id)  # every id but EOS, in id order
    p = np.zeros(vocab_size)
    if config.token_stream == "uniform":
        p[ids] = 1.0
    else:
        counts = np.bincount(corpus_tokens, minlength=vocab_size)[ids]
        ranked = ids[np.argsort(-counts, kind="stable")]
        p[ranked] = np.arange(1, len(ranked) + 1, dtype=np.float64) ** -config.zipf_exponent
    return p / p.sum()


def synthetic_tokens(config: SuiteConfig, corpus_tokens: np.ndarray, vocab_size: int, eos_id: int,
                     n: int, stream: int = SYNTHETIC_STREAM) -> np.ndarray:  # fmt: skip
    """`n` i.i.d. tokens of `config.token_stream`'s law, from numpy stream (seed, `stream`)."""
    p = stream_probabilities(config, corpus_tokens, vocab_size, eos_id)
    rng = np.random.default_rng([config.seed, stream])
    return rng.choice(vocab_size, size=n, p=p).astype(corpus_tokens.dtype)


def final_state_dict(suite: str | Path) -> dict[str, torch.Tensor]:
    """The parameters (named as `build_model`'s model names them) of the last `step{N}/` checkpoint of a
    trained suite folder. Loaded through transformers, which maps saved names onto its current ones."""
    from transformers import GPTNeoXForCausalLM

    root = Path(suite)
    record = read_suite(root)
    if record is None:
        raise FileNotFoundError(f"{root} holds no complete suite ({SUITE_FILE} missing); train it first")
    step = max(record["checkpoint_steps"])
    model = GPTNeoXForCausalLM.from_pretrained(root / f"step{step}")
    return {name: param.detach() for name, param in model.named_parameters()}


def training_batches(config: SuiteConfig, train_tokens: np.ndarray, eos_id: int) -> Iterator[Int[torch.Tensor, "batch pos"]]:
    """The training batches, one per step: `batch_size` rows of `seq_len + 1` tokens.

    Text windows at uniformly random offsets of the token stream; with `config.repeat_fraction > 0` the first
    `config.repeat_rows` rows are then overwritten by repeated random spans (see `SuiteConfig`). The two draw
    from separate seeded streams, so the text rows do not depend on the span fields.
    """
    tokens = torch.from_numpy(train_tokens)
    rng = np.random.default_rng([config.seed, BATCH_STREAM])
    repeat_rng = np.random.default_rng([config.seed, REPEAT_STREAM])
    pool = repeat_pool(train_tokens, config.repeat_vocab, config.vocab_size, eos_id) if config.repeat_rows else None
    while True:
        batch = _sample_batch(tokens, rng, config.batch_size, config.seq_len)
        if pool is not None:
            batch[: config.repeat_rows] = repeated_spans(
                pool, repeat_rng, config.repeat_rows, (config.repeat_min_len, config.repeat_len), config.seq_len
            )
        yield batch


def heldout_windows(tokens: np.ndarray | torch.Tensor, seq_len: int, max_tokens: int) -> torch.Tensor:
    """Non-overlapping windows of `seq_len + 1` tokens (consecutive windows share one token), at most `max_tokens` targets."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    n = min((len(tokens) - 1) // seq_len, max(1, max_tokens // seq_len))
    if n < 1:
        raise ValueError(f"held-out text has {len(tokens)} tokens, fewer than one window of {seq_len + 1}")
    index = torch.arange(n)[:, None] * seq_len + torch.arange(seq_len + 1)
    return tokens[index]


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy (nats) over all targets of `windows` (shape [n, seq_len + 1])."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        w = windows[i : i + batch_size]
        logits = model(input_ids=w[:, :-1], use_cache=False).logits
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), w[:, 1:].reshape(-1), reduction="sum").item()
        count += w[:, 1:].numel()
    model.train(was_training)
    return total / count


def unigram_entropy(train_tokens: np.ndarray, targets: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of `targets` under the add-one-smoothed unigram distribution of `train_tokens`.

    The loss a model would reach by learning token frequencies and nothing else.
    """
    counts = np.bincount(train_tokens, minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts) - math.log(counts.sum())
    return float(-log_p[targets].mean())


def train_suite(config: SuiteConfig, out: str | Path, *, progress: bool = True) -> Path:
    """Train the suite described by `config` into `out` and return `out`.

    Returns at once if `out` already holds a complete suite with this config; refuses
    (FileExistsError) to write into any other non-empty folder.
    """
    out = Path(out)
    if _check_out(out, config):
        logger.info("reusing the complete suite in %s", out)
        return out
    started = time.perf_counter()

    corpus = load_corpus(config)
    tokenizer = train_tokenizer(corpus.train_docs, config.vocab_size)
    vocab_size = len(tokenizer)
    train_tokens = encode_docs(tokenizer, corpus.train_docs)
    held_text = heldout_text(corpus.heldout_docs, config.heldout_max_bytes)
    held_tokens = encode_text(tokenizer, held_text)
    if config.token_stream != "corpus":  # the same number of i.i.d. tokens; held-out windows from the same law
        n_held = len(held_tokens)
        args = (config, train_tokens, vocab_size, tokenizer.eos_token_id)
        train_tokens, held_tokens = synthetic_tokens(*args, len(train_tokens)), synthetic_tokens(*args, n_held, SYNTHETIC_STREAM + 1)
        logger.info("token stream: %s (i.i.d., %d tokens)", config.token_stream, len(train_tokens))
    held_windows = heldout_windows(held_tokens, config.seq_len, config.eval_tokens)
    if len(train_tokens) < config.seq_len + 2:
        raise ValueError(f"the training text has only {len(train_tokens)} tokens; raise corpus_bytes")
    logger.info("tokenizer: %d tokens; %d training tokens", vocab_size, len(train_tokens))

    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    _write_atomic(out / HELDOUT_FILE, held_text)

    steps = config.checkpoint_steps
    to_save = set(steps)
    batches = training_batches(config, train_tokens, tokenizer.eos_token_id)
    loss_curve: list[list[float]] = []

    # fork_rng: seed for a reproducible init without clobbering the caller's global torch RNG
    with torch.random.fork_rng(devices=[]), _quiet_hf_progress():
        torch.manual_seed(config.seed)
        model = build_model(config, vocab_size=vocab_size, eos_token_id=tokenizer.eos_token_id)
        if config.init != "standard":
            initialise_from_final(model, config)
        model.train()
        optimizer = build_optimizer(model, config)
        n_params = sum(p.numel() for p in model.parameters())
        logger.info("model: %.2f M parameters; %d checkpoints", n_params / 1e6, len(steps))

        bar = tqdm(total=config.total_steps, desc=f"training {config.name}", unit="step", disable=not progress)
        for step in range(config.total_steps + 1):
            if step in to_save:
                _save_checkpoint(model, out / f"step{step}")
            if step == config.total_steps:
                break
            lr = lr_at(step + 1, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = next(batches)
            logits = model(input_ids=batch[:, :-1], use_cache=False).logits
            loss = F.cross_entropy(logits.reshape(-1, vocab_size), batch[:, 1:].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            # the loss is that of the weights at `step`, measured on the batch that then updated them
            if step % config.loss_every == 0 or step == config.total_steps - 1:
                loss_curve.append([step, loss.item()])
                bar.set_postfix(loss=f"{loss_curve[-1][1]:.3f}", lr=f"{lr:.2e}")
            bar.update(1)
        bar.close()

        final_loss = evaluate_loss(model, held_windows, config.batch_size)

    entropy = unigram_entropy(train_tokens, held_windows[:, 1:].reshape(-1).numpy(), vocab_size)
    suite = _suite_record(config, corpus.record, tokenizer_record(tokenizer), n_params, loss_curve,
                          final_loss, entropy, int(held_windows[:, 1:].numel()))
    _write_atomic(out / SUITE_FILE, json.dumps(suite, indent=1) + "\n")
    logger.info(
        "suite %s done in %.0f s: held-out loss %.3f vs unigram entropy %.3f nats/token",
        out, time.perf_counter() - started, final_loss, entropy,
    )
    return out


def _suite_record(config: SuiteConfig, corpus: dict, tokenizer: dict, n_params: int, loss_curve: list,
                  final_loss: float, entropy: float, n_eval_tokens: int) -> dict:
    import transformers

    from .. import __version__

    wd = config.effective_weight_decay
    steps = config.checkpoint_steps
    # no wall-clock time in here: two runs of one config must give identical files
    return {
        "format": SUITE_FORMAT,
        "name": config.name,
        "config": _config_json(config),
        "weight_decay": wd,
        "lr_wd_steps": config.effective_peak_lr * wd * config.total_steps,
        "checkpoint_steps": steps,
        "lr_schedule": {
            "kind": "linear-warmup-cosine",
            "warmup_steps": config.warmup_steps,
            "peak_lr": config.effective_peak_lr,
            "min_lr": config.min_lr,
            "total_steps": config.total_steps,
            "meaning": "lr_at_checkpoint[N] is the learning rate of the update that produced step N",
            "lr_at_checkpoint": {str(s): lr_at(s, config) for s in steps},
        },
        "corpus": corpus,
        "tokenizer": tokenizer,
        "model": {"architecture": "GPTNeoXForCausalLM", "n_params": n_params},
        "loss_curve": {"columns": ["step", "train_loss"], "rows": loss_curve},
        "units": "losses and entropies in nats per token",
        "final_heldout_loss": final_loss,
        "heldout_eval_tokens": n_eval_tokens,
        "unigram_entropy": entropy,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "package_version": __version__,
    }
