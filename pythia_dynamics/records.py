"""What an analysis returns: tidy scalar rows and array rows, ready for the results store.

Scalars: one row per (component, layer, head, stat) with a float `value`; layer/head are None where
they do not apply. Arrays: histograms, spectra, token strings, one row each. The store adds the
model, step and analysis columns; called directly in a notebook, an analysis's `Records.scalars` is
already a tidy pandas DataFrame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from pythia_dynamics.store import ARRAY_COLUMNS as STORE_ARRAY_COLUMNS
from pythia_dynamics.store import IDENTITY_COLUMNS, array_record
from pythia_dynamics.store import SCALAR_COLUMNS as STORE_SCALAR_COLUMNS

__all__ = ["RecordBuilder", "Records"]

# The store's columns less the identity ones, which it fills in.
SCALAR_COLUMNS = list(STORE_SCALAR_COLUMNS[len(IDENTITY_COLUMNS) :])
ARRAY_COLUMNS = list(STORE_ARRAY_COLUMNS[len(IDENTITY_COLUMNS) :])


@dataclass
class Records:
    scalars: pd.DataFrame
    arrays: pd.DataFrame

    def _repr_html_(self) -> str:  # notebooks show the tidy table
        return self.scalars._repr_html_()


@dataclass
class RecordBuilder:
    _scalars: list[dict] = field(default_factory=list)
    _arrays: list[dict] = field(default_factory=list)

    def scalar(self, component: str, stat: str, value: Any, layer: int | None = None, head: int | None = None):
        self._scalars.append(
            {"component": component, "layer": layer, "head": head, "stat": stat, "value": float(value)}
        )

    def array(self, component: str, name: str, data: Any, layer: int | None = None, head: int | None = None):
        self._arrays.append(array_record(component, layer, head, name, data))

    def build(self) -> Records:
        scalars = pd.DataFrame(self._scalars, columns=SCALAR_COLUMNS).astype(
            {"layer": "Int64", "head": "Int64", "value": "float64"}
        )
        return Records(scalars, pd.DataFrame(self._arrays, columns=ARRAY_COLUMNS))
