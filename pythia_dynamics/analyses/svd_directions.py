"""SVD directions of every OV circuit and MLP, read off as the vocabulary tokens they write or read.

The convention of Millidge & Black's SVD-interpretability work and of TransformerLens's
`SVDInterpreter` (whose `get_singular_vectors` this matches up to sign; see docs/svd-directions.md):

- `OV` (one per head): the OV circuit `W_V[h] @ W_O[h]` (d_model x d_model, rank <= d_head), whose
  output-side (right) singular vectors are what the head writes into the residual stream. It is
  decomposed through its factors (QR of each, then an SVD of the d_head x d_head core), never formed.
- `W_in`: `diag(ln2.w) @ W_in` (the MLP's own layer-norm weight folded in where the model has one,
  i.e. raw weights; a processed model has it folded already), input-side (left) singular vectors:
  what the MLP reads from the residual stream.
- `W_out`: `W_out`, output-side (right) singular vectors: what the MLP writes.
- `W_gate` (gated MLPs: LLaMA, OLMo, SmolLM3): `diag(ln2.w) @ W_gate`, input-side, as `W_in` (the gate
  reads the same normalised residual stream).

Each unit singular vector `v` (in d_model) is projected through the unembedding as TransformerLens
does: logits `v @ W_U` over the whole vocabulary (W_U as the model holds it: raw unless the model
was loaded processed, so `ln_final.w` is not folded in; `ln1.w` is not folded into the OV circuit,
as SVDInterpreter does not). A singular vector's sign is arbitrary, so it is fixed here: each
direction is flipped so that its largest-magnitude logit is positive. `top` tokens are the k largest
logits, largest first; `bottom` the k most negative, most negative first (the other sign's top).

Arrays stored per (component, layer, head) — head set for `OV` only — with n = min(n_directions,
rank) rows, one per singular direction in decreasing singular value:

- `singular_values` [n]
- `top_token_ids`, `top_logits` [n, k]; `bottom_token_ids`, `bottom_logits` [n, k] (negative side)
- `top_tokens`, `bottom_tokens` [n, k] (text) and `top_escaped`, `bottom_escaped` [n, k] (1.0 where
  the token is not printable text as it stands), only when the model has a tokenizer (one that knows
  at least half of the model's d_vocab ids; see `model_tokenizer`).

Token text: each token's bytes (byte-level BPE tokenizers, as Pythia's) or its decoded text (any other
tokenizer), with every character that is not printable (newline, tab, control characters, partial
UTF-8 sequences, non-ASCII spaces) written as `<0xNN>` byte escapes, e.g. `"\\n"` -> `<0x0A>`. Ids the
tokenizer does not know (Pythia's padded unembedding rows) and tokens that decode to nothing are
written `<id:N>`. Such tokens are marked in `*_escaped`, never dropped.

Scalars per (component, layer, head): `n_directions` (n above) and `energy_fraction`
= sum of the top n squared singular values / squared Frobenius norm of the matrix.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import einops
import numpy as np
import pandas as pd
import scipy.linalg
import torch
from jaxtyping import Float, Int
from torch import Tensor

from pythia_dynamics.analyses.registry import register
from pythia_dynamics.analyses.spectra import gram
from pythia_dynamics.installers import family_of_model
from pythia_dynamics.records import RecordBuilder, Records
from pythia_dynamics.train.tokenizer import bytes_to_unicode

__all__ = [
    "KIND_COMPONENT",
    "Directions",
    "Kind",
    "SVDDirectionsConfig",
    "TokenSides",
    "directions_table",
    "mlp_directions",
    "model_tokenizer",
    "ov_directions",
    "project_directions",
    "singular_directions",
    "svd_directions",
    "svd_strings",
    "token_display",
]

log = logging.getLogger(__name__)

Kind = Literal["ov", "mlp_in", "mlp_out", "mlp_gate"]
KIND_COMPONENT: dict[str, str] = {"ov": "OV", "mlp_in": "W_in", "mlp_out": "W_out", "mlp_gate": "W_gate"}


@dataclass(frozen=True)
class SVDDirectionsConfig:
    n_directions: int = 30  # the study's "top-30 singular vectors"
    k_tokens: int = 20  # the study's "top-20 tokens"
    negative: bool = True  # the bottom side too: the sign-robust agreement match needs it

    def __post_init__(self):
        for name in ("n_directions", "k_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class Directions:
    """One matrix's top singular directions: the d_model side that is projected to the vocabulary."""

    component: str  # "OV", "W_in" or "W_out"
    layer: int
    head: int | None
    singular_values: Float[Tensor, "direction"]
    vectors: Float[Tensor, "direction d_model"]  # unit norm, sign as the SVD returned it
    energy_fraction: float  # sum of the kept sigma^2 / ||M||_F^2


@dataclass
class TokenSides:
    """Top and bottom tokens of each direction's projection, after the sign is fixed."""

    top_ids: Int[Tensor, "direction k"]
    top_logits: Float[Tensor, "direction k"]  # largest first
    bottom_ids: Int[Tensor, "direction k"] | None
    bottom_logits: Float[Tensor, "direction k"] | None  # most negative first
    flipped: Tensor  # bool [direction]: the SVD's sign was reversed to make the top side the extreme one


# ---------------------------------------------------------------------------------------------
# The decompositions


_OV_MAX_CONDITION = 1e4  # sigma_1 / sigma_n past which a head's directions come from an SVD of its core


@torch.no_grad()
def ov_directions(
    W_V: Float[Tensor, "head d_model d_head"], W_O: Float[Tensor, "head d_head d_model"], n: int
) -> tuple[Float[Tensor, "head direction"], Float[Tensor, "head direction d_model"], Float[Tensor, "head"]]:
    """Top-n singular values and output-side (right) singular vectors of each head's W_V @ W_O.

    Never formed: with W_V = Q_v R_v (QR), W_V W_O = Q_v (R_v W_O) and Q_v has orthonormal columns, so
    W_V W_O has the singular values and right singular vectors of the d_head x d_model core R_v W_O:
    the eigenpairs of its d_head x d_head Gram matrix C C^T (eigenvalues sigma^2, eigenvectors u, right
    vectors u^T C / sigma), in float64, several times faster than QR-ing both factors and an SVD. The
    Gram route's relative error in sigma_i is about 1e-16 (sigma_1/sigma_i)^2, so a head whose kept
    directions reach below sigma_1 / 10^4 (rank-deficient heads, the zero matrix) gets an SVD of its
    core instead. Also returns ||W_V W_O||_F^2.
    """
    W_V, W_O = W_V.double(), W_O.double()
    core = torch.linalg.qr(W_V, mode="r").R @ W_O  # [head, d_head, d_model]
    grams = core @ core.mT
    eigenvalues, eigenvectors = torch.linalg.eigh(grams)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(-1)[:, :n], eigenvectors.flip(-1)[..., :n]
    s = eigenvalues.clamp_min(0).sqrt()
    vectors = (eigenvectors.mT @ core) / s[..., None]  # [head, direction, d_model]
    ill = ~(s[:, -1] > s[:, 0] / _OV_MAX_CONDITION)  # NaN and the zero matrix too
    if ill.any():
        _, s_ill, vh_ill = torch.linalg.svd(core[ill], full_matrices=False)
        s[ill], vectors[ill] = s_ill[:, :n], vh_ill[:, :n]
    return s, vectors, grams.diagonal(dim1=-2, dim2=-1).sum(-1)


@torch.no_grad()
def mlp_directions(
    W: Float[Tensor, "layer rows cols"] | Iterable[Float[Tensor, "rows cols"]], side: Literal["input", "output"], n: int
) -> tuple[Float[Tensor, "layer direction"], Float[Tensor, "layer direction d_model"], Float[Tensor, "layer"]]:
    """Top-n singular values and input-side (left) or output-side (right) singular vectors, and ||W||_F^2.

    Via the d_model x d_model Gram matrix in float64 (W W^T for the input side of a d_model x d_mlp
    matrix, W^T W for the output side of a d_mlp x d_model one): its eigenvectors are those singular
    vectors and its eigenvalues their squared singular values. Several times faster than a full SVD
    of the d_model x 4 d_model matrix, and exact to float64 rounding for the top directions. On the CPU
    only the top n eigenpairs are computed (LAPACK's MRRR, `scipy.linalg.eigh(subset_by_index=...)`).
    """
    tall = (w.mT if side == "input" else w for w in W)  # [n, d_model] each: the Gram matrix is tall^T tall
    first = next(tall)
    if first.device.type == "cpu":  # one matrix at a time (W may be a generator: folded copies made as needed)
        return _top_eigenpairs_scipy(itertools.chain([first], tall), n)
    return _top_eigenpairs_torch(torch.stack([first, *tall]), n)


def _top_eigenpairs_torch(
    tall: Float[Tensor, "layer n d_model"], n: int
) -> tuple[Float[Tensor, "layer direction"], Float[Tensor, "layer direction d_model"], Float[Tensor, "layer"]]:
    w = tall.double()
    grams = w.mT @ w
    eigenvalues, eigenvectors = torch.linalg.eigh(grams)  # ascending
    s = eigenvalues.flip(-1).clamp_min(0).sqrt()
    vectors = einops.rearrange(eigenvectors.flip(-1), "layer d_model direction -> layer direction d_model")
    return s[:, :n], vectors[:, :n], grams.diagonal(dim1=-2, dim2=-1).sum(-1)


def _top_eigenpairs_scipy(
    tall: Iterable[Float[Tensor, "n d_model"]], n: int
) -> tuple[Float[Tensor, "layer direction"], Float[Tensor, "layer direction d_model"], Float[Tensor, "layer"]]:
    # Only the top n eigenpairs (MRRR): a third of a full eigendecomposition's time at d_model 512.
    values, vectors, totals = [], [], []
    for matrix in tall:
        d_model = matrix.shape[-1]
        top = [d_model - min(n, d_model), d_model - 1]
        grams = gram(matrix).numpy()  # lower triangle
        eigenvalues, eigenvectors = scipy.linalg.eigh(
            grams, lower=True, subset_by_index=top, driver="evr", check_finite=False
        )  # ascending
        values.append(np.sqrt(np.clip(eigenvalues[::-1], 0, None)))
        vectors.append(eigenvectors[:, ::-1].T)
        totals.append(np.trace(grams))
    return tuple(torch.from_numpy(np.stack(x)) for x in (values, vectors, totals))


@dataclass
class _Weights:
    """The stacked views read once per call (on a TransformerBridge each access rebuilds them).

    The MLP matrices are each block's own (the stacked `model.W_in` is a copy of them, ~2 x 25 MB for
    pythia-70m, and they are decomposed one layer at a time anyway)."""

    W_V: Tensor
    W_O: Tensor
    W_in: list[Tensor]
    W_out: list[Tensor]
    W_U: Tensor
    ln2_w: list[Tensor | None]
    W_gate: list[Tensor] | None = None  # gated MLPs only

    @classmethod
    def of(cls, model) -> _Weights:
        # Processed models have parameter-free LNPre layer norms: ln2.w is already folded into W_in. Families
        # that normalise after the MLP (OLMo-2) or without weights (OLMo-1) have no norm on W_in's input to fold.
        pre_norm = not family_of_model(model).post_norm
        ln2 = [getattr(getattr(block, "ln2", None), "w", None) if pre_norm else None for block in model.blocks]
        W_V, W_O = (torch.stack([getattr(block.attn, name).detach() for block in model.blocks]) for name in ("W_V", "W_O"))
        if W_V.shape[1] != W_O.shape[1]:  # grouped-query attention: each query head reads its group's V
            W_V = W_V.repeat_interleave(W_O.shape[1] // W_V.shape[1], dim=1)
        return cls(
            W_V, W_O,
            W_in=[block.mlp.W_in.detach() for block in model.blocks],
            W_out=[block.mlp.W_out.detach() for block in model.blocks],
            W_U=model.W_U.detach(),
            ln2_w=[None if w is None else w.detach() for w in ln2],
            W_gate=_gates(model),
        )

    def folded_W_in(self, layer: int, gate: bool = False) -> Float[Tensor, "d_model d_mlp"]:
        w = self.ln2_w[layer]
        W_in = (self.W_gate if gate else self.W_in)[layer]
        return W_in if w is None else w[:, None] * W_in


def _gates(model) -> list[Tensor] | None:
    # A bridge answers None for an MLP without a gate; a HookedTransformer has no such attribute.
    gates = [getattr(block.mlp, "W_gate", None) for block in model.blocks]
    return None if any(g is None for g in gates) else [g.detach() for g in gates]


def _layer_directions(weights: _Weights, layer: int, kinds: Sequence[str], n: int) -> Iterator[Directions]:
    for kind in kinds:
        if kind == "ov":
            s, vecs, total = ov_directions(weights.W_V[layer], weights.W_O[layer], n)
            for head in range(s.shape[0]):
                yield Directions("OV", layer, head, s[head], vecs[head], _fraction(s[head], total[head]))
        else:
            if kind == "mlp_gate" and weights.W_gate is None:
                raise ValueError("kind 'mlp_gate' needs a gated MLP (LLaMA, OLMo, SmolLM3); this model has none")
            W = weights.W_out[layer] if kind == "mlp_out" else weights.folded_W_in(layer, gate=kind == "mlp_gate")
            s, vecs, total = mlp_directions([W], "output" if kind == "mlp_out" else "input", n)
            yield Directions(KIND_COMPONENT[kind], layer, None, s[0], vecs[0], _fraction(s[0], total[0]))


def _fraction(s: Tensor, total: Tensor) -> float:
    return float((s**2).sum() / total) if total > 0 else float("nan")


def singular_directions(model, layer: int, kind: Kind, head: int | None = None, n: int = 30) -> Directions:
    """One matrix's top-n singular directions (the side that is projected), as the analysis computes them."""
    _check_matrix(model, layer, kind, head)
    weights = _Weights.of(model)
    for directions in _layer_directions(weights, layer, [kind], n):
        if directions.head == head:
            return directions
    raise AssertionError("unreachable: _check_matrix accepted the head")


# ---------------------------------------------------------------------------------------------
# Projection onto the vocabulary


@torch.no_grad()
def project_directions(
    vectors: Float[Tensor, "direction d_model"], W_U: Float[Tensor, "d_model d_vocab"], k: int, negative: bool = True
) -> TokenSides:
    """Top (and bottom) k tokens of `vectors @ W_U`, each direction's sign fixed so its extreme logit is positive."""
    # [direction, d_vocab]: float32 as SVDInterpreter (float64 if the unembedding is), never fp16/bf16 ranks.
    dtype = torch.promote_types(W_U.dtype, torch.float32)
    logits = _matmul(vectors.to(dtype), W_U.to(dtype))  # [direction, d_vocab]
    k = min(k, logits.shape[-1])
    high, low = _extremes(logits, k, largest=True), _extremes(logits, k, largest=False)
    # Flipping the sign swaps the sides (and negates them): cheaper than negating the whole logit matrix.
    flipped = high.values[:, 0] < -low.values[:, 0]
    f = flipped[:, None]
    top_ids, top_logits = torch.where(f, low.indices, high.indices), torch.where(f, -low.values, high.values)
    bottom_ids, bottom_logits = torch.where(f, high.indices, low.indices), torch.where(f, -high.values, low.values)
    if not negative:
        bottom_ids = bottom_logits = None
    return TokenSides(top_ids, top_logits, bottom_ids, bottom_logits, flipped)


_SCREEN_BLOCK = 64  # vocabulary columns per block when screening for the extreme logits


def _extremes(logits: Float[Tensor, "direction d_vocab"], k: int, largest: bool) -> torch.return_types.topk:
    """`logits.topk(k, dim=-1, largest=largest)`, several times faster on a wide vocabulary: the k extreme
    values of a row lie in the k blocks of columns whose own extreme is most extreme, so only those
    blocks (and the columns past the last whole block) are ranked. The same values; among exactly
    equal logits the indices may differ, as they may between topk implementations."""
    n_directions, d_vocab = logits.shape
    n_blocks = d_vocab // _SCREEN_BLOCK
    if n_blocks <= 4 * k or not logits.is_contiguous():
        return logits.topk(k, dim=-1, largest=largest)
    whole = n_blocks * _SCREEN_BLOCK
    blocks = logits[:, :whole].view(n_directions, n_blocks, _SCREEN_BLOCK)
    block_extremes = blocks.amax(-1) if largest else blocks.amin(-1)
    chosen = block_extremes.topk(k, dim=-1, largest=largest).indices  # [direction, k]
    offsets = torch.arange(_SCREEN_BLOCK, device=logits.device)
    columns = einops.rearrange(chosen[..., None] * _SCREEN_BLOCK + offsets, "direction k block -> direction (k block)")
    tail = torch.arange(whole, d_vocab, device=logits.device).expand(n_directions, -1)
    columns = torch.cat([columns, tail], dim=-1)
    best = logits.gather(-1, columns).topk(k, dim=-1, largest=largest)
    return torch.return_types.topk((best.values, columns.gather(-1, best.indices)))


def _matmul(a: Float[Tensor, "m k"], b: Float[Tensor, "k n"]) -> Float[Tensor, "m n"]:
    # The projection is most of this analysis's work. On the CPU numpy's OpenBLAS does it in the same
    # precision ~1.5x faster than torch's MKL on AMD Zen 4 (AVX-512 kernels; the 2-core machine tuned on).
    if a.device.type == "cpu":
        return torch.from_numpy(a.numpy() @ b.numpy())
    return a @ b


# ---------------------------------------------------------------------------------------------
# Token text


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet inverted: stand-in character -> byte."""
    return {char: byte for byte, char in bytes_to_unicode().items()}


def _is_byte_level(tokenizer) -> bool:
    try:
        from tokenizers import decoders

        return isinstance(tokenizer.backend_tokenizer.decoder, decoders.ByteLevel)
    except (AttributeError, ImportError):
        return False


def _escape(text: str) -> tuple[str, bool]:
    """Printable characters as they are; everything else (and undecodable bytes) as <0xNN> escapes."""
    out, escaped = [], False
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not valid UTF-8 (surrogateescape)
            out.append(f"<0x{code - 0xDC00:02X}>")
            escaped = True
        elif ch.isprintable() and ch != "\ufffd":
            out.append(ch)
        else:
            out.append("".join(f"<0x{b:02X}>" for b in ch.encode("utf-8", errors="surrogatepass")))
            escaped = True
    return "".join(out), escaped


def token_display(tokenizer, ids: Sequence[int]) -> tuple[list[str], list[bool]]:
    """Each token id as display text, and whether it had to be escaped (see the module docstring)."""
    ids = [int(i) for i in ids]
    byte_level = _is_byte_level(tokenizer)
    byte_decoder = _byte_decoder() if byte_level else {}
    pieces = tokenizer.convert_ids_to_tokens(ids)
    texts, flags = [], []
    for token_id, piece in zip(ids, pieces):
        if piece is None or token_id < 0:
            texts.append(f"<id:{token_id}>")
            flags.append(True)
            continue
        if byte_level and all(ch in byte_decoder for ch in piece):
            raw = bytes(byte_decoder[ch] for ch in piece).decode("utf-8", errors="surrogateescape")
        else:
            raw = tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
        if raw == "":
            texts.append(f"<id:{token_id}>")
            flags.append(True)
            continue
        text, escaped = _escape(raw)
        texts.append(text)
        flags.append(escaped)
    return texts, flags


def model_tokenizer(model):
    """The model's tokenizer if it can name the model's tokens, else None (then only ids are stored).

    A tokenizer that knows fewer than half of the model's d_vocab ids is not the model's own: e.g. the
    placeholder (special tokens only) that TransformerLens 4 builds when the source had no tokenizer.
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return None
    try:
        known = len(tokenizer)
    except TypeError:
        return tokenizer
    if known < model.cfg.d_vocab // 2:
        log.warning(
            "the model's tokenizer knows %d ids but the model has d_vocab %d; storing token ids only",
            known, model.cfg.d_vocab,
        )  # fmt: skip
        return None
    return tokenizer


def _display_map(tokenizer, ids: np.ndarray) -> dict[int, tuple[str, bool]]:
    unique = np.unique(ids).tolist()
    texts, flags = token_display(tokenizer, unique)
    return dict(zip(unique, zip(texts, flags)))


# ---------------------------------------------------------------------------------------------
# The analysis


@register("svd_directions", needs="weights")
@torch.no_grad()
def svd_directions(model, *, config: SVDDirectionsConfig | None = None) -> Records:
    """Top tokens of the top singular directions of every OV circuit, MLP input and MLP output."""
    config = config or SVDDirectionsConfig()
    weights = _Weights.of(model)
    per_layer = _all_directions(weights, model.cfg.n_layers, config.n_directions)
    projected = []
    for matrices in per_layer:
        # One projection per layer: all heads and both MLP sides share the unembedding matmul.
        sides = project_directions(
            torch.cat([d.vectors for d in matrices]), weights.W_U, config.k_tokens, config.negative
        )
        per_side = {"top": (sides.top_ids, sides.top_logits), "bottom": (sides.bottom_ids, sides.bottom_logits)}
        projected.append({side: (i.cpu().numpy(), v.cpu()) for side, (i, v) in per_side.items() if i is not None})
    tokenizer = model_tokenizer(model)
    display = None
    if tokenizer is not None:
        ids = [i.ravel() for sides in projected for i, _ in sides.values()]
        display = _display_map(tokenizer, np.concatenate(ids))
    records = RecordBuilder()
    for layer, (matrices, per_side) in enumerate(zip(per_layer, projected)):
        start = 0
        for d in matrices:
            rows = slice(start, start + len(d.singular_values))
            start = rows.stop
            where = dict(layer=layer, head=d.head)
            records.scalar(d.component, "n_directions", len(d.singular_values), **where)
            records.scalar(d.component, "energy_fraction", d.energy_fraction, **where)
            records.array(d.component, "singular_values", d.singular_values, **where)
            for side, (ids, logits) in per_side.items():
                records.array(d.component, f"{side}_token_ids", ids[rows], **where)
                records.array(d.component, f"{side}_logits", logits[rows], **where)
                if display is not None:
                    shown = [[display[int(i)] for i in row] for row in ids[rows]]
                    text = np.array([[t for t, _ in row] for row in shown], dtype=object)
                    flags = np.array([[f for _, f in row] for row in shown], dtype=np.float64)
                    records.array(d.component, f"{side}_tokens", text, **where)
                    records.array(d.component, f"{side}_escaped", flags, **where)
    return records.build()


def _all_directions(weights: _Weights, n_layers: int, n: int) -> list[list[Directions]]:
    """Every layer's matrices in record order (OV heads, W_in, W_out, W_gate), each kind decomposed for all
    layers at once: on the CPU the MLPs' LAPACK work first, then torch's, so their thread pools do not alternate."""
    mlp = {
        "W_in": mlp_directions((weights.folded_W_in(layer) for layer in range(n_layers)), "input", n),
        "W_out": mlp_directions(weights.W_out, "output", n),
    }
    if weights.W_gate is not None:
        mlp["W_gate"] = mlp_directions((weights.folded_W_in(layer, gate=True) for layer in range(n_layers)), "input", n)
    W_V, W_O = (einops.rearrange(w, "layer head ... -> (layer head) ...") for w in (weights.W_V, weights.W_O))
    ov = [einops.rearrange(x, "(layer head) ... -> layer head ...", layer=n_layers) for x in ov_directions(W_V, W_O, n)]
    per_layer = []
    for layer in range(n_layers):
        s, vectors, total = (x[layer] for x in ov)
        matrices = [Directions("OV", layer, h, s[h], vectors[h], _fraction(s[h], total[h])) for h in range(len(s))]
        for component, (s, vectors, total) in mlp.items():
            s, vectors, total = s[layer], vectors[layer], total[layer]
            matrices.append(Directions(component, layer, None, s, vectors, _fraction(s, total)))
        per_layer.append(matrices)
    return per_layer


# ---------------------------------------------------------------------------------------------
# One matrix, for notebooks and the CLI


def _check_matrix(model, layer: int, kind: str, head: int | None) -> None:
    if kind not in KIND_COMPONENT:
        raise ValueError(f"kind must be one of {', '.join(get_args(Kind))}, got {kind!r}")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < n_layers:
        raise ValueError(f"layer must be between 0 and {n_layers - 1}, got {layer!r}")
    if kind == "ov":
        if head is None:
            raise ValueError(f"kind 'ov' needs a head (0 to {n_heads - 1}): the OV circuit is per head")
        if isinstance(head, bool) or not isinstance(head, (int, np.integer)) or not 0 <= head < n_heads:
            raise ValueError(f"head must be between 0 and {n_heads - 1}, got {head!r}")
    elif head is not None:
        raise ValueError(f"kind {kind!r} is one matrix per layer; leave head out (got head={head!r})")


STRING_COLUMNS = ["component", "layer", "head", "direction", "singular_value", "side", "rank",
                  "token_id", "token", "logit", "escaped"]  # fmt: skip


@torch.no_grad()
def svd_strings(
    model, layer: int, kind: Kind, head: int | None = None, k: int = 20, n: int = 30, negative: bool = True
) -> pd.DataFrame:
    """One matrix's top-n directions x top-k tokens as a tidy table, one row per (direction, side, rank).

    Columns: component, layer, head, direction (0 = largest singular value), singular_value, side
    ("top": largest logits first; "bottom": most negative first), rank, token_id, token (display text,
    <NA> without a tokenizer), logit, escaped. `directions_table` turns it into one row per direction.
    """
    config = SVDDirectionsConfig(n_directions=n, k_tokens=k, negative=negative)
    d = singular_directions(model, layer, kind, head, config.n_directions)
    sides = project_directions(d.vectors, model.W_U.detach(), config.k_tokens, config.negative)
    tokenizer = model_tokenizer(model)
    frames = []
    per_side = {"top": (sides.top_ids, sides.top_logits), "bottom": (sides.bottom_ids, sides.bottom_logits)}
    for side, (ids, logits) in per_side.items():
        if ids is None:
            continue
        ids, logits = ids.cpu().numpy(), logits.cpu().double().numpy()
        n_dir, n_tok = ids.shape
        frame = pd.DataFrame({
            "direction": np.repeat(np.arange(n_dir), n_tok), "side": side, "rank": np.tile(np.arange(n_tok), n_dir),
            "token_id": ids.ravel(), "logit": logits.ravel(),
        })  # fmt: skip
        frame["singular_value"] = d.singular_values.cpu().double().numpy()[frame["direction"]]
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True)
    df["component"], df["layer"], df["head"] = d.component, layer, head
    if tokenizer is not None:
        display = _display_map(tokenizer, df["token_id"].to_numpy())
        df["token"] = [display[int(i)][0] for i in df["token_id"]]
        df["escaped"] = [display[int(i)][1] for i in df["token_id"]]
    else:
        df["token"], df["escaped"] = pd.NA, pd.NA
    df = df.astype({"layer": "Int64", "head": "Int64", "token": "string", "escaped": "boolean"})
    df = df.sort_values(["direction", "side", "rank"], key=_side_first_top, kind="stable")
    return df[STRING_COLUMNS].reset_index(drop=True)


def _side_first_top(column: pd.Series) -> pd.Series:
    return column.map({"top": 0, "bottom": 1}) if column.name == "side" else column


def directions_table(strings: pd.DataFrame) -> pd.DataFrame:
    """One row per (direction, side): singular value and the tokens in rank order, quoted and joined.

    Takes `svd_strings` output (or `pythia_dynamics.svd_agreement.stored_strings` for one step and
    matrix); tokens are quoted ("' the'" shows a leading space), tokens without text shown as `#<id>`.
    """
    df = strings.copy()
    label = df["token"].astype(object).where(df["token"].notna(), "#" + df["token_id"].astype(int).astype(str))
    # Quotes show leading/trailing spaces; the text is already escaped, so no repr() double escaping.
    df["label"] = [f"'{t}'" if df_has_text else str(t) for t, df_has_text in zip(label, df["token"].notna())]
    keys = [c for c in ("step", "component", "layer", "head", "direction", "side") if c in df.columns]
    df = df.sort_values([*keys, "rank"], key=_side_first_top, kind="stable")
    table = (
        df.groupby(keys, sort=False, dropna=False)
        .agg(singular_value=("singular_value", "first"), tokens=("label", " ".join))
        .reset_index()
    )
    return table
