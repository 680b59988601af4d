"""Every scalar series of one or more stores, as one matrix per model (series x checkpoints).

A *series* is one (model, analysis, component, layer, head, stat) over the model's checkpoints. Each series
belongs to a *group* of the study's kinds of quantity, from its analysis (`GROUPS`; an analysis not listed
goes by what it needs: weights -> weights, forward -> activations, backward -> gradients). The SVD
directions' agreement with the final checkpoint (`pythia_dynamics.svd_agreement`, model level: one series
per component and metric) is added as analysis `svd_agreement`, group `svd agreement`, when the store holds
`svd_directions` results. The integrity audit's rows (verdicts about checkpoints) are not series.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pythia_dynamics.store import AUDIT_ANALYSIS, Store

__all__ = ["GROUPS", "KEY", "ModelSeries", "group_of", "read_series"]

log = logging.getLogger(__name__)

KEY = ["analysis", "component", "layer", "head", "stat"]

GROUPS = {
    "eval_loss": "loss",
    "in_context_learning": "loss",
    "weight_norms": "weights",
    "weight_distances": "weights",
    "weight_distributions": "weights",
    "spectra": "weights",
    "embeddings": "weights",
    "residual_outliers": "activations",
    "residual_distributions": "activations",
    "massive_activations": "activations",
    "gradients": "gradients",
    "svd_agreement": "svd agreement",
    "head_scores": "circuits",
}
_BY_NEEDS = {"weights": "weights", "forward": "activations", "backward": "gradients"}


def group_of(analysis: str) -> str:
    if analysis in GROUPS:
        return GROUPS[analysis]
    from pythia_dynamics.analyses.registry import analysis_infos  # reads decorators with ast: no torch

    needs = {info.name: info.needs for info in analysis_infos()}
    return _BY_NEEDS.get(needs.get(analysis, ""), "other")


@dataclass
class ModelSeries:
    """One model's series: `keys` (one row per series: analysis, component, layer, head, stat, group) and
    `values[series, checkpoint]` at `steps` (NaN where a series has no value at a checkpoint)."""

    model: str
    steps: np.ndarray
    keys: pd.DataFrame
    values: np.ndarray

    @property
    def final_step(self) -> int:
        return int(self.steps[-1])

    def label(self, i: int) -> str:
        """'weight_norms W_out L3 frobenius_norm' (layer and head shown where set)."""
        row = self.keys.iloc[i]
        where = "".join(f" {p}{int(v)}" for p, v in (("L", row["layer"]), ("H", row["head"])) if not pd.isna(v))
        return f"{row['analysis']} {row['component']}{where} {row['stat']}"


def read_series(stores, model=None, svd_agreement: bool = True) -> list[ModelSeries]:
    """Every scalar series of `stores` (a Store, a path, or a list of them), one `ModelSeries` per model.

    A model name found in more than one store (two seeds of a suite swept into two stores) is read per
    store and named "<model> @ <store folder name>", so that its runs stay apart."""
    opened = [s if isinstance(s, Store) else Store(s) for s in _as_list(stores)]
    names = [set(store.models()) for store in opened]
    out = []
    for store, present in zip(opened, names):
        scalars = store.scalars(model=model)
        scalars = scalars[scalars["analysis"] != AUDIT_ANALYSIS]  # verdicts about checkpoints, not quantities that train
        if scalars.empty:
            continue
        if svd_agreement and "svd_directions" in set(scalars["analysis"]):
            scalars = pd.concat([scalars, _svd_agreement_scalars(store, model)], ignore_index=True)
        for name, rows in scalars.groupby("model", sort=True):
            shared = sum(name in other for other in names) > 1
            out.append(_matrix(f"{name} @ {store.name}" if shared else str(name), rows))
    if not out:
        where = f" for model {model!r}" if model is not None else ""
        raise ValueError(f"no scalar results in {', '.join(s.location for s in opened)}{where}; "
                         "sweep analyses into the store first")  # fmt: skip
    return out


def _as_list(stores) -> list:
    if isinstance(stores, (str, os.PathLike, Store)):
        return [stores]
    stores = list(stores)
    if not stores:
        raise ValueError("no stores given; pass a store path or a list of them")
    return stores


def _matrix(model: str, rows: pd.DataFrame) -> ModelSeries:
    # Codes instead of a pivot: a Pythia store has hundreds of thousands of rows.
    step_codes, steps = pd.factorize(rows["step"], sort=True)
    key_frame = rows[KEY].astype(object).where(rows[KEY].notna(), None)
    series_codes, uniques = pd.factorize(pd.MultiIndex.from_frame(key_frame), sort=True)
    values = np.full((len(uniques), len(steps)), np.nan)
    values[series_codes, step_codes] = rows["value"].to_numpy(dtype=np.float64)
    keys = uniques.to_frame(index=False)
    keys.columns = KEY
    keys["layer"] = pd.array(keys["layer"], dtype="Int64")
    keys["head"] = pd.array(keys["head"], dtype="Int64")
    groups = {a: group_of(a) for a in keys["analysis"].unique()}
    keys["group"] = keys["analysis"].map(groups)
    return ModelSeries(model, np.asarray(steps, dtype=np.int64), keys, values)


def _svd_agreement_scalars(stores, model) -> pd.DataFrame:
    from pythia_dynamics.svd_agreement import METRICS, svd_agreement

    try:
        table = svd_agreement(stores, model=model, level="model")
    except ValueError as error:  # svd_directions scalars without token arrays
        log.warning("no SVD agreement series: %s", error)
        return pd.DataFrame()
    long = table.melt(id_vars=["model", "step", "component"], value_vars=list(METRICS), var_name="stat")
    long["analysis"], long["layer"], long["head"] = "svd_agreement", pd.NA, pd.NA
    return long[["model", "step", *KEY, "value"]]
