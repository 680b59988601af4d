"""What each experiment measures, read from a store only (one number per model, i.e. per (level, seed) suite).

Every measure is a function `(store, model, total_steps) -> float` (NaN when the store lacks what it needs).
Definitions (steps are training steps; "final" is the last stored step; means are over the stored rows):

- `eval_loss_final`: `eval_loss` loss at the final step (nats/token, on the sweep's evaluation batch).
- `eval_loss_mean`: mean `eval_loss` over every stored step after 0, a discrete area under the loss curve:
  lower means the model learned faster.
- `eval_loss_early`: `eval_loss` at the stored step closest to 10% of training.
- `weight_kurtosis_final`: mean over weight matrices (W_Q, W_K, W_V, W_O, W_in, W_out per layer, W_E, W_U;
  W_QKV left out, it repeats W_Q/W_K/W_V) of `weight_distributions` excess_kurtosis at the final step
  (0 for a Gaussian; heavier tails give more).
- `student_t_nu_final`: median over the same matrices of the fitted Student-t nu at the final step (smaller
  is heavier-tailed; capped at 1000).
- `massive_ratio_final`: largest `massive_activations` top1_ratio (top |activation| / median |activation|) over
  the blocks' `hook_resid_post` at the final step.
- `outlier_ratio_final`: largest over blocks of `residual_outliers` hook_resid_post max_abs / mean_token_norm
  at the final step (the biggest single coordinate against a typical token vector's length).
- `outlier_crest_step`: the step at which max over blocks of hook_resid_post max_abs is largest.
- `matrix_norm_peak_step`, `matrix_norm_decline`: for M(step) = sqrt(sum over the weight matrices above of
  `weight_norms` frobenius_norm^2), the step of its maximum and (max - final) / max.
- `matrix_norm_growth`: M(final) / M(0).
- `ln_gain_growth`: mean `weight_norms` frobenius_norm of the layer-norm gains (ln1.w, ln2.w per layer,
  ln_final.w) at the final step over the same mean at step 0.
- `first_event_step`, `top_event_step`: the earliest event's step and the top-ranked event's step of
  `pythia_dynamics.timeline.events` on this model's scalar series (docs/events.md).
- `unembed_norm_decline`: for U(step) = `weight_norms` frobenius_norm of W_U, (max - final) / max over the
  stored steps: 0 when the unembedding's norm ends at its peak, 0.1 when it ends 10% below it.
- `outlier_peak_depth`: with peak(b) = the largest-ever `residual_outliers` max_abs of block b's
  hook_resid_post (max over every stored step), the block b* = argmax_b peak(b) (the first on a tie) as a
  fraction of depth, b* / (n_layers - 1): 0 for the first block, 1 for the last; strictly inside (0, 1) when
  the largest-ever outlier is in a middle block. NaN with fewer than 3 blocks (no middle).
- `outlier_mid_ratio`: max over the middle blocks (1 .. n_layers - 2) of peak(b) over max(peak(first),
  peak(last)): above 1 exactly when the largest-ever outlier peaks in a middle block (as in Pythia), below 1
  when an end block holds it; a continuous version of `outlier_peak_depth` that seed means can judge.
  NaN with fewer than 3 blocks.
- `svd_settle_step`: with A(step) = the mean over components (OV, W_in, W_out) of the model-level `matched`
  agreement of `pythia_dynamics.svd_agreement` (the fraction of a direction's top tokens found in its best-
  matching final direction, either sign; docs/svd-directions.md), the first stored step s from which
  A(t) >= `SVD_SETTLED` (0.5) at every stored step t >= s: the step after which the SVD directions stay at least
  half-way to their final tokens. At most the final step (where A = 1). NaN without `svd_directions` results.
- `induction_formation_step`: of `pythia_dynamics.circuits.formation` on the `head_scores` induction_score
  series of every head, the head with the largest final score; its `half_step` (the first stored step at which
  the score is at least half-way from its initial to its final value). NaN when that head's final score is
  below `INDUCTION_FORMED` (0.3: no induction head formed) or without `head_scores` results.
- `induction_formed`: 1 when that best head's final induction_score is at least `INDUCTION_FORMED`, else 0 (NaN
  without `head_scores` results): its seed mean is the share of seeds that formed a head, which a NaN
  `induction_formation_step` alone would hide.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from pythia_dynamics.store import Store

__all__ = ["MEASURES", "measure", "MATRICES", "LN_GAINS", "SVD_SETTLED", "INDUCTION_FORMED"]

MATRICES = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_E", "W_U")
LN_GAINS = ("ln1.w", "ln2.w", "ln_final.w")
NAN = float("nan")
SVD_SETTLED = 0.5  # mean `matched` agreement with the final checkpoint from which the directions count as settled
INDUCTION_FORMED = 0.3  # a head's final induction_score from which it counts as an induction head


def _rows(store: Store, model: str, analysis: str, stat: str, components=None) -> pd.DataFrame:
    table = store.scalars(model=model, analysis=analysis, stat=stat)
    if components is not None:
        table = table[table["component"].isin(components)]
    return table


def _final(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["step"] == table["step"].max()] if len(table) else table


def _per_step(table: pd.DataFrame, how: str) -> pd.Series:
    return table.groupby("step")["value"].agg(how).sort_index()


def eval_loss_final(store, model, total_steps):
    rows = _final(_rows(store, model, "eval_loss", "loss"))
    return float(rows["value"].mean()) if len(rows) else NAN


def eval_loss_mean(store, model, total_steps):
    rows = _rows(store, model, "eval_loss", "loss")
    rows = rows[rows["step"] > 0]
    return float(rows["value"].mean()) if len(rows) else NAN


def eval_loss_early(store, model, total_steps):
    curve = _per_step(_rows(store, model, "eval_loss", "loss"), "mean")
    if curve.empty:
        return NAN
    step = curve.index[np.argmin(np.abs(curve.index.to_numpy() - 0.1 * total_steps))]
    return float(curve[step])


def weight_kurtosis_final(store, model, total_steps):
    rows = _final(_rows(store, model, "weight_distributions", "excess_kurtosis", MATRICES))
    return float(rows["value"].mean()) if len(rows) else NAN


def student_t_nu_final(store, model, total_steps):
    rows = _final(_rows(store, model, "weight_distributions", "student_t_nu", MATRICES))
    return float(rows["value"].median()) if len(rows) else NAN


def massive_ratio_final(store, model, total_steps):
    rows = _final(_rows(store, model, "massive_activations", "top1_ratio", ["hook_resid_post"]))
    return float(rows["value"].max()) if len(rows) else NAN


def outlier_ratio_final(store, model, total_steps):
    table = store.scalars(model=model, analysis="residual_outliers", component="hook_resid_post",
                          stat=["max_abs", "mean_token_norm"])  # fmt: skip
    table = _final(table)
    if table.empty:
        return NAN
    wide = table.pivot_table(index="layer", columns="stat", values="value")
    return float((wide["max_abs"] / wide["mean_token_norm"]).max())


def outlier_crest_step(store, model, total_steps):
    curve = _per_step(_rows(store, model, "residual_outliers", "max_abs", ["hook_resid_post"]), "max")
    return float(curve.idxmax()) if len(curve) else NAN


def _matrix_norm(store, model) -> pd.Series:
    rows = _rows(store, model, "weight_norms", "frobenius_norm", MATRICES)
    return np.sqrt(rows.assign(value=rows["value"] ** 2).groupby("step")["value"].sum().sort_index())


def matrix_norm_peak_step(store, model, total_steps):
    curve = _matrix_norm(store, model)
    return float(curve.idxmax()) if len(curve) else NAN


def matrix_norm_decline(store, model, total_steps):
    curve = _matrix_norm(store, model)
    return float((curve.max() - curve.iloc[-1]) / curve.max()) if len(curve) else NAN


def matrix_norm_growth(store, model, total_steps):
    curve = _matrix_norm(store, model)
    return float(curve.iloc[-1] / curve.iloc[0]) if len(curve) and curve.index[0] == 0 else NAN


def ln_gain_growth(store, model, total_steps):
    curve = _per_step(_rows(store, model, "weight_norms", "frobenius_norm", LN_GAINS), "mean")
    return float(curve.iloc[-1] / curve.iloc[0]) if len(curve) and curve.index[0] == 0 else NAN


def unembed_norm_decline(store, model, total_steps):
    curve = _per_step(_rows(store, model, "weight_norms", "frobenius_norm", ["W_U"]), "mean")
    return float((curve.max() - curve.iloc[-1]) / curve.max()) if len(curve) else NAN


def _outlier_peaks(store, model) -> pd.Series:
    """peak(b): the largest-ever hook_resid_post max_abs of each block b, indexed by block."""
    rows = _rows(store, model, "residual_outliers", "max_abs", ["hook_resid_post"])
    return rows.groupby(rows["layer"].astype(int))["value"].max().sort_index()


def outlier_peak_depth(store, model, total_steps):
    peaks = _outlier_peaks(store, model)
    if len(peaks) < 3:
        return NAN
    return float(peaks.index.get_loc(peaks.idxmax()) / (len(peaks) - 1))


def outlier_mid_ratio(store, model, total_steps):
    peaks = _outlier_peaks(store, model)
    if len(peaks) < 3:
        return NAN
    return float(peaks.iloc[1:-1].max() / max(peaks.iloc[0], peaks.iloc[-1]))


def _events(store, model):
    from pythia_dynamics.timeline import events

    try:
        return events(store, model=model).events
    except ValueError:  # too few checkpoints or series for change points
        return pd.DataFrame(columns=["rank", "step"])


def first_event_step(store, model, total_steps):
    found = _events(store, model)
    return float(found["step"].min()) if len(found) else NAN


def top_event_step(store, model, total_steps):
    found = _events(store, model)
    return float(found.sort_values("rank")["step"].iloc[0]) if len(found) else NAN


def svd_settle_step(store, model, total_steps):
    from pythia_dynamics.svd_agreement import svd_agreement

    if "svd_directions" not in store.analyses(model=model):
        return NAN
    table = svd_agreement(store, model=model, level="model")
    agreement = table.groupby("step")["matched"].mean().sort_index()  # each component weighted equally
    if agreement.empty:
        return NAN
    below = np.flatnonzero(agreement.to_numpy() < SVD_SETTLED)  # settled after the last step still below
    return float(agreement.index[below[-1] + 1]) if len(below) else float(agreement.index[0])


def _best_induction_head(store, model) -> pd.Series | None:
    """The `circuits.formation` row of the head whose final induction_score is largest (None without any)."""
    from pythia_dynamics.circuits import formation

    scalars = store.scalars(model=model, analysis="head_scores", stat="induction_score")
    if scalars.empty:
        return None
    table = formation(scalars, {"head_scores": ("induction_score",)})
    return table.loc[table["final"].idxmax()]


def induction_formation_step(store, model, total_steps):
    best = _best_induction_head(store, model)
    if best is None or best["final"] < INDUCTION_FORMED or pd.isna(best["half_step"]):
        return NAN
    return float(best["half_step"])


def induction_formed(store, model, total_steps):
    best = _best_induction_head(store, model)
    return NAN if best is None else float(best["final"] >= INDUCTION_FORMED)


MEASURES: dict[str, Callable[[Store, str, int], float]] = {
    fn.__name__: fn
    for fn in (
        eval_loss_final, eval_loss_mean, eval_loss_early, weight_kurtosis_final, student_t_nu_final,
        massive_ratio_final, outlier_ratio_final, outlier_crest_step, matrix_norm_peak_step,
        matrix_norm_decline, matrix_norm_growth, ln_gain_growth, first_event_step, top_event_step,
        unembed_norm_decline, outlier_peak_depth, outlier_mid_ratio, svd_settle_step, induction_formation_step,
        induction_formed,
    )
}  # fmt: skip


def measure(store: Store, model: str, name: str, total_steps: int) -> float:
    """Measure `name` (a key of `MEASURES`) of `model` in `store`; NaN if the store lacks its inputs."""
    value = MEASURES[name](store, model, total_steps)
    return value if math.isfinite(value) else NAN
