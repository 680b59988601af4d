"""How close each checkpoint's SVD direction strings are to the final checkpoint's, from the store alone.

Reads what the `svd_directions` analysis stored (token ids; see pythia_dynamics/analyses/svd_directions.py)
and compares every checkpoint of a model with that model's final checkpoint (the largest stored step,
or `final_step`), matrix by matrix: (component, layer, head) with component `OV` (per head), `W_in`,
`W_out`. For direction i of a checkpoint (top side: its k largest-logit tokens, in rank order):

- `exact`    = fraction of the k positions p where the checkpoint's token equals the final checkpoint's
               token at the same position of the same direction i (the study's "fraction identical to
               final SVD direction").
- `in_final` = fraction of the k tokens that occur anywhere among the final direction i's k top tokens
               (the study's "fraction in final SVD direction"). Always >= exact.
- `matched`  = the largest `in_final`-style overlap with any final direction j, on either side: the
               final top tokens of j, or its bottom tokens (the same direction with its sign flipped).
               Robust to a sign flip and to directions swapping rank between close singular values.
               Always >= in_final. `matched_direction` and `matched_sign` (+1 top, -1 bottom) say which
               final direction and side won; ties go to the same direction and sign, then to the lowest j.
               Without stored bottom tokens only the top sides are compared (order-robust only).

The stored sign is already fixed (each direction's largest-magnitude logit is positive), so plain
`exact`/`in_final` are not hurt by the SVD's arbitrary sign; `matched` also catches a flip of that
convention (when the two extreme logits are close) and reordering. Directions are compared up to the
smaller of the two checkpoints' n, and tokens up to the smaller k. Only matrices present in the final
checkpoint are compared.

Levels: `direction` (one row per direction), `head` (mean over a matrix's directions), `block` (mean
over all directions of a component in a layer: for `OV` all heads' directions together), `model`
(mean of the block means over layers, each block weighted equally). Every level carries `step`,
`final_step` and `fraction_of_training` = step / final_step, so several models or seeds overlay.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd
from jaxtyping import Int

from pythia_dynamics.store import MATRIX_COLUMNS, Store, read_arrays, row_to_numpy

__all__ = ["ANALYSIS", "LEVELS", "METRICS", "aggregate", "prefetch_agreement", "shared_agreement", "stored_strings",
           "svd_agreement"]

log = logging.getLogger(__name__)

ANALYSIS = "svd_directions"
METRICS = ("exact", "in_final", "matched")
Level = Literal["direction", "head", "block", "model"]
LEVELS = get_args(Level)
_MATRIX = list(MATRIX_COLUMNS)


def _read(source, model, names: list[str], steps=None, component=None, layer=None, head=None) -> pd.DataFrame:
    """The svd_directions arrays rows named `names` from a store, store paths, or an arrays DataFrame."""
    if isinstance(source, pd.DataFrame):
        df = source
        if "analysis" in df.columns:
            df = df[df["analysis"] == ANALYSIS]
        df = df[df["name"].isin(names)]
        for column, wanted in (("model", model), ("step", steps), ("component", component)):
            if wanted is not None:
                df = df[df[column].isin(_as_list(wanted))]
        for column, wanted in (("layer", layer), ("head", head)):
            if wanted is not None:
                df = df[df[column].isin([w for w in _as_list(wanted) if w is not None]).fillna(False)]
        return df
    if isinstance(source, (str, os.PathLike, Store)) or isinstance(source, Iterable):
        return read_arrays(source, analysis=ANALYSIS, name=names, model=model, steps=steps, component=component,
                           layer=layer, head=head, text=any(n.endswith("_tokens") for n in names))  # fmt: skip
    raise TypeError(
        f"source must be a Store, a store path, a list of them, or an arrays DataFrame; got {type(source).__name__}"
    )


def _as_list(value) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def _key(row) -> tuple:
    head = row["head"]
    return (row["component"], int(row["layer"]), None if pd.isna(head) else int(head))


@dataclass
class _Final:
    """The final checkpoint's directions of one matrix, ready to compare against."""

    top: np.ndarray  # [n, k] token ids
    bottom: np.ndarray | None
    vocab: np.ndarray  # sorted unique ids of both sides
    member: np.ndarray  # [len(vocab) + 1, columns] bool: id in column's token set; last row = "not in vocab"

    @classmethod
    def of(cls, top: np.ndarray, bottom: np.ndarray | None) -> _Final:
        sides = [top] if bottom is None else [top, bottom]
        vocab = np.unique(np.concatenate([s.ravel() for s in sides]))
        member = np.zeros((len(vocab) + 1, sum(s.shape[0] for s in sides)), dtype=bool)
        column = 0
        for side in sides:
            for row in side:
                member[np.searchsorted(vocab, row), column] = True
                column += 1
        return cls(top, bottom, vocab, member)

    def compare(self, ids: Int[np.ndarray, "*checkpoint n k"]) -> dict[str, np.ndarray]:
        """Metrics for checkpoints' top token ids [..., n, k] (see the module docstring): each [..., n].
        Leading axes are checkpoints compared at once (one matrix over training in one call)."""
        k = min(ids.shape[-1], self.top.shape[1])
        n_final = self.top.shape[0]
        ids = ids[..., :k]
        final_top = self.top[:, :k]
        if k == self.top.shape[1]:
            final = self
        else:
            final = _Final.of(final_top, None if self.bottom is None else self.bottom[:, :k])
        at = np.searchsorted(final.vocab, ids).clip(max=len(final.vocab) - 1)
        at[final.vocab[at] != ids] = len(final.vocab)  # the all-False row
        # [..., n, columns]: the fraction of a direction's k tokens in each final token set
        overlap = final.member[at].sum(axis=-2) / k
        n_rows = ids.shape[-2]
        n = min(n_rows, n_final)
        same = np.arange(n)
        exact = np.full(ids.shape[:-1], np.nan)
        in_final = np.full(ids.shape[:-1], np.nan)
        exact[..., :n] = (ids[..., :n, :] == final_top[:n]).mean(axis=-1)
        in_final[..., :n] = overlap[..., same, same]
        best = overlap.argmax(axis=-1)
        best_value = np.take_along_axis(overlap, best[..., None], axis=-1)[..., 0]
        keep_same = np.zeros(best.shape, dtype=bool)
        keep_same[..., :n] = overlap[..., same, same] >= best_value[..., :n]  # ties go to the same direction and sign
        best = np.where(keep_same, np.arange(n_rows), best)
        return {
            "exact": exact, "in_final": in_final, "matched": best_value,
            "matched_direction": best % n_final, "matched_sign": np.where(best < n_final, 1, -1),
        }  # fmt: skip


def svd_agreement(
    source,
    model: str | list[str] | None = None,
    *,
    level: Level = "block",
    final_step: int | Mapping[str, int] | None = None,
    components: str | list[str] | None = None,
) -> pd.DataFrame:
    """Agreement of every stored checkpoint's SVD direction strings with its model's final checkpoint.

    `source`: a Store, a store path, a list of them (several models overlay), or an arrays DataFrame
    already read (e.g. a report section's inputs). `model` restricts to some models; `final_step` (one
    step, or a {model: step} dict) overrides the largest stored step as the reference; `components`
    restricts to some of "OV", "W_in", "W_out". `level` is one of direction, head, block, model.
    Columns: model, step, final_step, fraction_of_training, component, layer, head (per level), then
    exact, in_final, matched (and per direction matched_direction, matched_sign; otherwise n_directions
    or n_blocks). Definitions in the module docstring.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    key = _shared_key(source, model, final_step, components)
    if key is not None and key in _SHARED[-1]:
        found = _SHARED[-1][key]
        return aggregate(found.result() if isinstance(found, Future) else found, level)  # a prefetch: wait for it
    directions = _directions(source, model, final_step, components)
    if key is not None:
        _SHARED[-1][key] = directions
    return aggregate(directions, level)


def _directions(source, model, final_step, components) -> pd.DataFrame:
    """Direction-level agreement of every model in `source` (not yet sorted: `aggregate` does that)."""
    arrays = _read(source, model, ["top_token_ids", "bottom_token_ids"], component=components)
    frames = []
    for name, rows in arrays.groupby("model", sort=True):
        reference = final_step.get(name) if isinstance(final_step, Mapping) else final_step
        frames.append(_model_agreement(str(name), rows, reference))
    if not frames:
        raise ValueError(
            "no svd_directions results found"
            + (f" for model {model!r}" if model is not None else "")
            + "; sweep with analyses='svd_directions' first"
        )
    return pd.concat(frames, ignore_index=True)


# Direction-level tables computed inside `shared_agreement()` blocks (innermost last), by `_shared_key`; a
# Future while `prefetch_agreement` computes one.
_SHARED: list[dict[tuple, pd.DataFrame | Future]] = []


@contextmanager
def shared_agreement():
    """Within this block, `svd_agreement` of the same stores (with the same model, final_step and
    components) is computed once and every level aggregated from that one direction table: the report's
    events section (the agreement series) and its svd_directions section (the figures) both draw it, and
    at Pythia's size (154 checkpoints x 24 layers x 16 heads) each computation reads a gigabyte of arrays.
    Arrays DataFrames passed as `source` are not cached. Leaving the block drops what it computed, so a
    later call reads the store as it is then."""
    _SHARED.append({})
    try:
        yield
    finally:
        for found in _SHARED.pop().values():
            if isinstance(found, Future):
                found.cancel()


def prefetch_agreement(stores) -> None:
    """Inside `shared_agreement()`: start computing the agreement of each of `stores` (Store objects, every
    model) in a background thread, so that reading every matrix's token ids (most of the cost: the reads
    release the GIL) overlaps the caller's own work. The first `svd_agreement` call for that store waits for
    it instead of computing it again, and raises what it raised."""
    if not _SHARED:
        raise RuntimeError("prefetch_agreement works inside a `with shared_agreement():` block")
    for store in stores:
        key = _shared_key(store, None, None, None)
        if key not in _SHARED[-1]:
            future: Future = Future()
            _SHARED[-1][key] = future
            threading.Thread(target=_fulfil, args=(future, store), name="svd-agreement-prefetch", daemon=True).start()


def _fulfil(future: Future, store) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(_directions(store, None, None, None))
    except BaseException as error:  # handed to whoever waits for it
        future.set_exception(error)


def _shared_key(source, model, final_step, components) -> tuple | None:
    """The cache key of a call on stores inside `shared_agreement()`; None outside one or for a DataFrame."""
    if not _SHARED or isinstance(source, pd.DataFrame):
        return None
    stores = [source] if isinstance(source, (str, os.PathLike, Store)) else list(source)
    locations = tuple(s.location if isinstance(s, Store) else Store(s).location for s in stores)

    def frozen(value):
        if isinstance(value, Mapping):
            return tuple(sorted((str(k), int(v)) for k, v in value.items()))
        return None if value is None else tuple(sorted(str(v) for v in _as_list(value)))

    return locations, frozen(model), frozen(final_step) if isinstance(final_step, Mapping) else final_step, frozen(components)


def _model_agreement(model: str, rows: pd.DataFrame, final_step: int | None) -> pd.DataFrame:
    steps = sorted(int(s) for s in rows["step"].unique())
    final = steps[-1] if final_step is None else int(final_step)
    if final not in steps:
        raise ValueError(f"final_step {final} has no svd_directions result for {model!r}; stored steps: {steps}")
    # Plain lists, not iterrows: a Pythia store has ~130k id arrays per model.
    columns = [rows[c].tolist() for c in ("step", "name", "component", "layer", "head", "shape", "values")]
    tops: dict[tuple, dict[tuple, list]] = {}  # matrix -> (n, k) -> [(step, ids)]: stacked, compared at once
    finals_bottom = {}
    for step, name, component, layer, head, shape, values in zip(*columns):
        matrix = (component, int(layer), None if pd.isna(head) else int(head))
        shape = tuple(int(n) for n in shape)
        if name == "top_token_ids":
            tops.setdefault(matrix, {}).setdefault(shape, []).append((int(step), values))
        elif int(step) == final:
            finals_bottom[matrix] = np.asarray(values).reshape(shape).astype(np.int64)
    found: dict[str, list] = {c: [] for c in ("step", "component", "layer", "head", "direction")}
    metrics: dict[str, list] = {}
    skipped = set()
    for matrix, by_shape in tops.items():
        top_final = next((v for runs in by_shape.values() for s, v in runs if s == final), None)
        if top_final is None:
            skipped.add(matrix)
            continue
        final_shape = next(shape for shape, runs in by_shape.items() if any(s == final for s, _ in runs))
        reference = _Final.of(np.asarray(top_final).reshape(final_shape).astype(np.int64), finals_bottom.get(matrix))
        for (n, k), runs in by_shape.items():
            ids = np.stack([np.asarray(v) for _, v in runs]).reshape(len(runs), n, k).astype(np.int64)
            for metric, values in reference.compare(ids).items():
                metrics.setdefault(metric, []).append(values.ravel())
            rows_here = len(runs) * n
            found["component"].append(np.full(rows_here, matrix[0], dtype=object))
            found["layer"].append(np.full(rows_here, matrix[1], dtype=np.int64))
            found["head"].append(np.full(rows_here, -1 if matrix[2] is None else matrix[2], dtype=np.int64))  # -1: none
            found["step"].append(np.repeat([s for s, _ in runs], n))
            found["direction"].append(np.tile(np.arange(n), len(runs)))
    if skipped:
        log.warning("%s: %d matrices are not in the final step %d and were not compared: %s",
                    model, len(skipped), final, sorted(skipped, key=str)[:5])  # fmt: skip
    df = pd.DataFrame({column: np.concatenate(parts) for column, parts in (found | metrics).items()})
    df["head"] = pd.arrays.IntegerArray(df["head"].to_numpy(), mask=df["head"].to_numpy() < 0)
    df["model"], df["final_step"] = model, final
    df["fraction_of_training"] = df["step"] / final if final > 0 else np.nan
    return df.dropna(subset=["exact"])


def aggregate(directions: pd.DataFrame, level: Level) -> pd.DataFrame:
    """`svd_agreement(..., level="direction")` output averaged to another level (see the module docstring)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    when = ["model", "step", "final_step", "fraction_of_training"]
    directions = directions.astype({"layer": "Int64", "head": "Int64"})
    if level == "direction":
        columns = [*when, *_MATRIX, "direction", *METRICS, "matched_direction", "matched_sign"]
        return directions[columns].sort_values([*when, *_MATRIX, "direction"]).reset_index(drop=True)
    keys = [*when, "component", "layer"] + (["head"] if level == "head" else [])
    grouped = directions.groupby(keys, dropna=False, sort=True)
    means = grouped[list(METRICS)].mean()
    means["n_directions"] = grouped.size()
    means = means.reset_index()
    if level in ("head", "block"):
        return means
    per_model = means.groupby([*when, "component"], sort=True)
    out = per_model[list(METRICS)].mean()
    out["n_blocks"] = per_model.size()
    return out.reset_index()


# ---------------------------------------------------------------------------------------------
# Stored strings back as a tidy table (the shape of analyses.svd_directions.svd_strings)


def stored_strings(
    source,
    model: str | None = None,
    *,
    steps: int | list[int] | None = None,
    component: str | list[str] | None = None,
    layer: int | list[int] | None = None,
    head: int | list[int] | None = None,
) -> pd.DataFrame:
    """The stored directions as one row per (model, step, matrix, direction, side, rank).

    Columns as `svd_strings` plus model and step: component, layer, head, direction, singular_value,
    side, rank, token_id, token (<NA> if no tokenizer was stored), logit, escaped.
    """
    names = ["singular_values", *(f"{side}_{what}" for side in ("top", "bottom")
                                  for what in ("token_ids", "logits", "tokens", "escaped"))]  # fmt: skip
    steps = None if steps is None else _as_list(steps)
    arrays = _read(source, model, names, steps=steps, component=component, layer=layer, head=head)
    grouped: dict[tuple, dict[str, np.ndarray]] = {}
    for _, row in arrays.iterrows():
        grouped.setdefault((row["model"], int(row["step"]), _key(row)), {})[row["name"]] = row_to_numpy(row)
    frames = []
    for (name, step, (comp, lay, hd)), found in grouped.items():
        for side in ("top", "bottom"):
            if f"{side}_token_ids" not in found:
                continue
            ids = found[f"{side}_token_ids"].astype(np.int64)
            n, k = ids.shape
            frame = pd.DataFrame({
                "direction": np.repeat(np.arange(n), k), "side": side, "rank": np.tile(np.arange(k), n),
                "token_id": ids.ravel(), "logit": found[f"{side}_logits"].ravel(),
            })  # fmt: skip
            frame["singular_value"] = found["singular_values"][frame["direction"]]
            frame["token"] = found[f"{side}_tokens"].ravel() if f"{side}_tokens" in found else pd.NA
            frame["escaped"] = found[f"{side}_escaped"].ravel() > 0 if f"{side}_escaped" in found else pd.NA
            frame["model"], frame["step"], frame["component"], frame["layer"], frame["head"] = name, step, comp, lay, hd
            frames.append(frame)
    columns = ["model", "step", "component", "layer", "head", "direction", "singular_value", "side", "rank",
               "token_id", "token", "logit", "escaped"]  # fmt: skip
    if not frames:
        return pd.DataFrame(columns=columns)
    df = pd.concat(frames, ignore_index=True)[columns]
    df = df.astype({"layer": "Int64", "head": "Int64", "token": "string", "escaped": "boolean", "step": np.int64})
    side_order = df["side"].map({"top": 0, "bottom": 1})
    order = ["model", "step", "component", "layer", "head", "direction", "_side", "rank"]
    df = df.assign(_side=side_order).sort_values(order)
    return df.drop(columns="_side").reset_index(drop=True)
