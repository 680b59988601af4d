"""What defines a mini checkpoint suite: `SuiteConfig`, without torch.

Kept apart from `recipe.py` so that reading a config (the command line builds its options from the
fields) does not import torch; `recipe.py` turns a config into a model and an optimiser.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pythia_dynamics.schedule import pythia_like_schedule

__all__ = ["CorpusKind", "HiddenAct", "InitKind", "OptimizerKind", "SuiteConfig", "TokenStream"]

CorpusKind = Literal["stdlib", "files", "hf-dataset"]
HiddenAct = Literal["gelu", "gelu_new", "relu", "silu"]
TokenStream = Literal["corpus", "zipf", "uniform"]
OptimizerKind = Literal["adamw", "sgd"]
InitKind = Literal["standard", "final-fitted", "final-permuted"]


@dataclass(frozen=True)
class SuiteConfig:
    """All the choices that define a mini checkpoint suite.

    Two suites trained from equal configs on the same machine are bitwise
    identical, and a suite folder is reused only when its config is equal.
    """

    name: str = "mini-pythia"  # names the cache folder; change it to keep several suites apart
    seed: int = 0  # one seed drives corpus selection, the held-out split, init and batch order

    # --- corpus ---
    corpus: CorpusKind = "stdlib"  # the stdlib's own source ships with Python, so suites build offline
    corpus_paths: tuple[str, ...] = ()  # files or folders (*.txt, *.py, *.md); read only when corpus="files"
    corpus_dataset: str | None = None  # a Hugging Face dataset name or local dataset folder, for corpus="hf-dataset"
    corpus_text_field: str = "text"  # the dataset column holding the documents
    corpus_bytes: int = 6_000_000  # ~1.6 M training tokens: the default run sees each about once (Pythia: once)
    heldout_fraction: float = 0.03  # whole files held out, so held-out loss measures generalisation across files
    heldout_max_bytes: int = 300_000  # keeps heldout.txt small; at most ~80 k tokens, plenty for evaluation batches

    # --- tokenizer ---
    vocab_size: int = 4096  # 256 bytes + 3,839 merges + <|endoftext|>; small enough for a small embedding

    # --- model (GPT-NeoX, as Pythia) ---
    n_layers: int = 4  # deep enough for multi-layer circuits such as induction heads
    d_model: int = 128  # Pythia-70m is 512; 128 keeps a step under 0.2 s on two CPU cores
    n_heads: int = 4  # head dimension 32, Pythia-70m's is 64
    d_mlp: int = 512  # 4 * d_model, as every Pythia model
    seq_len: int = 128  # long enough for in-context copying of identifiers in code
    rotary_pct: float = 0.25  # Pythia rotates a quarter of each head's dimensions
    rotary_base: int = 10_000  # Pythia's rotary base
    use_parallel_residual: bool = True  # Pythia computes attention and MLP from the same residual
    hidden_act: HiddenAct = "gelu"  # Pythia uses exact gelu
    layer_norm_eps: float = 1e-5  # Pythia's value
    initializer_range: float = 0.02  # HF's GPT-NeoX default init (normal, std 0.02)

    # --- optimisation ---
    batch_size: int = 12  # 1,536 tokens a step: many cheap steps fit the ~3 minute budget
    total_steps: int = 1_200  # sized so the default suite trains in about three minutes on two CPU cores
    n_evenly_spaced: int = 30  # checkpoints every 40 steps, plus 0,1,2,4,...,32 early (37 in all)
    peak_lr: float = 1e-3  # Pythia-70m's peak learning rate
    warmup_fraction: float = 0.01  # Pythia warms up over 1% of training
    min_lr_ratio: float = 0.1  # Pythia's cosine decays to 10% of peak
    beta1: float = 0.9  # Pythia's Adam betas are (0.9, 0.95)
    beta2: float = 0.95  # a short memory for the second moment, as Pythia
    adam_eps: float = 1e-8  # Pythia's value
    weight_decay_timescale: float = 1.4  # peak_lr * weight_decay * total_steps; Pythia-70m's is 1.43
    weight_decay: float | None = None  # None derives it from the timescale, which is what keeps short runs Pythia-like
    grad_clip: float = 1.0  # Pythia clips the global gradient norm at 1.0

    # --- repeated spans (off by default; a training-data change, not Pythia's recipe) ---
    # With repeat_fraction > 0, round(repeat_fraction * batch_size) rows of every training batch (the
    # first rows) are replaced by a repeated random span `r r r ...` cut to seq_len + 1 tokens. Each row
    # draws its own span length uniformly from [repeat_min_len, repeat_len] (a varying length, so that
    # "attend a fixed distance back" cannot solve the rows and only matching content, an induction head,
    # can) and its ids uniformly, without replacement (each id at most once, so the token after a token's
    # earlier occurrence is unambiguous), from the repeat_vocab most frequent training tokens
    # (<|endoftext|> excluded, ties broken by the lower id; 0 means every id but <|endoftext|>: rarely
    # seen ids train too slowly for a short run). Every token after a row's first copy is predictable
    # only by copying. The spans come from their own seeded random stream, so the text rows of a batch
    # are the same with and without them, and two suites from equal configs stay bitwise identical.
    repeat_fraction: float = 0.0  # share of each batch's rows that are repeated random spans, in [0, 1]
    repeat_vocab: int = 256  # spans draw from this many most frequent training tokens; 0 = all but <|endoftext|>
    repeat_min_len: int = 8  # shortest span r
    repeat_len: int = 48  # longest span r; a row holds ceil((seq_len + 1) / len(r)) copies, the last cut short

    # --- controlled factors (the hypothesis lab, docs/hypotheses.md); the defaults are Pythia's recipe ---
    # token_stream: "corpus" trains on the corpus's tokens; "zipf" and "uniform" replace them by as many
    # i.i.d. tokens over the same vocabulary (<|endoftext|> excluded): "zipf" gives the token of frequency
    # rank k in the corpus (ties by lower id) probability proportional to k ** -zipf_exponent, "uniform"
    # gives every id the same. The tokenizer and heldout.txt still come from the corpus; the final held-out
    # loss is then measured on windows drawn from the same law (their own stream).
    token_stream: TokenStream = "corpus"
    zipf_exponent: float = 1.0  # Zipf's law for words has exponent ~1
    # optimizer: "adamw" (Pythia's) or "sgd" (heavy-ball momentum `sgd_momentum`, peak lr `sgd_peak_lr`, the
    # same warm-up + cosine schedule, and decoupled weight decay exactly as AdamW applies it: w -= lr * wd * w)
    optimizer: OptimizerKind = "adamw"
    sgd_peak_lr: float = 0.1  # plain SGD needs a far larger step than Adam's normalised one
    sgd_momentum: float = 0.9
    # GPT-NeoX decays matrices only; True also decays every vector (layer-norm gains and biases, linear biases)
    decay_vectors: bool = False
    # False freezes every layer-norm gain at its initial 1 (not trained; biases still train)
    train_norm_gains: bool = True
    # init: "standard" (HF GPT-NeoX, normal(0, initializer_range)); "final-fitted" draws each weight matrix
    # i.i.d. from a Student-t fitted (scipy.stats.t.fit) to the same matrix of the final checkpoint of the suite
    # in init_from; "final-permuted" takes that matrix with its entries randomly permuted. Vectors (layer
    # norms, biases) keep the standard init. The suite in init_from must have the same shapes.
    init: InitKind = "standard"
    init_from: str = ""  # a suite folder (its last step{N}/ checkpoint) for the final-* inits

    # --- bookkeeping ---
    loss_every: int = 10  # training-loss samples in suite.json; every step would bloat it
    eval_tokens: int = 65_536  # held-out target tokens for the final loss; a few seconds of CPU

    def __post_init__(self) -> None:
        for name in ("corpus", "hidden_act", "token_stream", "optimizer", "init"):
            allowed = typing.get_args(_FIELD_LITERALS[name])
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        # from_dict and callers may hand in lists; a tuple keeps the config hashable
        object.__setattr__(self, "corpus_paths", tuple(str(p) for p in self.corpus_paths))
        if self.corpus == "files" and not self.corpus_paths:
            raise ValueError("corpus='files' needs corpus_paths (text files or folders of them)")
        if self.corpus == "hf-dataset" and not self.corpus_dataset:
            raise ValueError("corpus='hf-dataset' needs corpus_dataset (e.g. 'NeelNanda/pile-10k' or a local folder)")
        for name in ("corpus_bytes", "heldout_max_bytes", "n_layers", "d_model", "n_heads", "d_mlp",
                     "seq_len", "batch_size", "total_steps", "n_evenly_spaced", "loss_every", "eval_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.vocab_size < 257:
            raise ValueError(f"vocab_size must be at least 257 (256 bytes + <|endoftext|>), got {self.vocab_size}")
        if not 0.0 < self.heldout_fraction < 0.5:
            raise ValueError(f"heldout_fraction must be in (0, 0.5), got {self.heldout_fraction}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.peak_lr <= 0:
            raise ValueError(f"peak_lr must be positive, got {self.peak_lr}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0 or None, got {self.weight_decay}")
        if self.weight_decay_timescale < 0:
            raise ValueError(f"weight_decay_timescale must be >= 0, got {self.weight_decay_timescale}")
        if not 0.0 <= self.repeat_fraction <= 1.0:
            raise ValueError(f"repeat_fraction must be in [0, 1], got {self.repeat_fraction}")
        if self.repeat_fraction > 0:  # the span fields only matter, and are only checked, when spans are on
            if not (self.repeat_vocab == 0 or self.repeat_len <= self.repeat_vocab < self.vocab_size):
                raise ValueError(
                    f"repeat_vocab must be 0 (every id but <|endoftext|>) or in [repeat_len, vocab_size) = "
                    f"[{self.repeat_len}, {self.vocab_size}) (a span holds distinct ids), got {self.repeat_vocab}"
                )
            if not 1 <= self.repeat_min_len <= self.repeat_len <= self.seq_len // 2:
                raise ValueError(
                    f"need 1 <= repeat_min_len <= repeat_len <= seq_len // 2 = {self.seq_len // 2} (every row holds "
                    f"two copies), got repeat_min_len={self.repeat_min_len}, repeat_len={self.repeat_len}"
                )
        if self.zipf_exponent <= 0:
            raise ValueError(f"zipf_exponent must be positive, got {self.zipf_exponent}")
        if self.sgd_peak_lr <= 0 or not 0.0 <= self.sgd_momentum < 1.0:
            raise ValueError(f"need sgd_peak_lr > 0 and sgd_momentum in [0, 1), got {self.sgd_peak_lr}, {self.sgd_momentum}")
        if self.init != "standard" and not self.init_from:
            raise ValueError(f"init={self.init!r} needs init_from (a trained suite folder whose final checkpoint it uses)")
        # raises the schedule's own ValueError early, before any work is done
        pythia_like_schedule(self.total_steps, self.n_evenly_spaced)

    # ---- derived quantities ----
    @property
    def effective_peak_lr(self) -> float:
        """The peak of the schedule: `peak_lr` for AdamW, `sgd_peak_lr` for SGD."""
        return self.sgd_peak_lr if self.optimizer == "sgd" else self.peak_lr

    @property
    def effective_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return self.weight_decay_timescale / (self.effective_peak_lr * self.total_steps)

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_fraction * self.total_steps))

    @property
    def min_lr(self) -> float:
        return self.effective_peak_lr * self.min_lr_ratio

    @property
    def repeat_rows(self) -> int:
        """How many rows of each training batch are repeated random spans."""
        return int(round(self.repeat_fraction * self.batch_size))

    @property
    def checkpoint_steps(self) -> list[int]:
        return pythia_like_schedule(self.total_steps, self.n_evenly_spaced)

    # ---- serialisation ----
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists) that `from_dict` turns back into an equal config.

        Fields added after the first suites (`LATER_FIELDS`) are left out while they hold their
        defaults, so the suites and cache folders of earlier configs stay valid.
        """
        d = dataclasses.asdict(self)
        d["corpus_paths"] = list(self.corpus_paths)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for group in (LATER_FIELDS, LAB_FIELDS):
            if all(d[name] == defaults[name] for name in group):
                for name in group:
                    del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SuiteConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SuiteConfig fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "SuiteConfig":
        return dataclasses.replace(self, **changes)


_FIELD_LITERALS = {"corpus": CorpusKind, "hidden_act": HiddenAct, "token_stream": TokenStream,
                   "optimizer": OptimizerKind, "init": InitKind}
# added after suites were first written; to_dict leaves them out while all hold their defaults
LATER_FIELDS = ("repeat_fraction", "repeat_vocab", "repeat_min_len", "repeat_len")
# the hypothesis lab's factors, likewise left out while all hold their defaults
LAB_FIELDS = ("token_stream", "zipf_exponent", "optimizer", "sgd_peak_lr", "sgd_momentum", "decay_vectors",
              "train_norm_gains", "init", "init_from")
