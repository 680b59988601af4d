"""A results store of planted series whose change points are known, for tests, benchmarks and checking.

`write_planted_store` writes, for one model, `n_series` scalar series spread over four analyses of different
groups (weights, activations, gradients, loss), each a smooth trend that is steady on the log(1 + step) axis
plus Gaussian noise; at each planted event a chosen share of each group's series jumps between two
checkpoints (a sharp sigmoid). What was planted comes back as a dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pythia_dynamics.store import Store

__all__ = ["PlantedEvent", "write_planted_store"]

# analysis -> (component, stat) used for its series; layers and heads make up the count.
_ANALYSES = {
    "weight_norms": ("W_out", "frobenius_norm"),
    "residual_outliers": ("resid_post", "max_abs"),
    "gradients": ("W_in", "grad_norm"),
    "eval_loss": ("model", "loss"),
}


@dataclass(frozen=True)
class PlantedEvent:
    """A jump of size `size` (in noise sds) between checkpoints `index` and `index + 1` in a `share` of the
    series of each analysis in `analyses` (all four by default)."""

    index: int
    share: float = 0.5
    size: float = 20.0
    analyses: tuple[str, ...] = field(default_factory=lambda: tuple(_ANALYSES))


def write_planted_store(path, steps, events=(), n_series: int = 400, model: str = "planted", noise: float = 1.0,
                        seed: int = 0) -> dict:  # fmt: skip
    """Write the store (module docstring) and return {"steps", "events": [(index, step, analysis,
    series keys)], "rows"}. Series are split evenly over the analyses; each has (layer, head) keys."""
    rng = np.random.default_rng(seed)
    steps = np.asarray(steps, dtype=np.int64)
    u = np.log1p(steps.astype(np.float64))
    per_analysis = n_series // len(_ANALYSES)
    blocks = {}
    truth = []
    for analysis, (component, stat) in _ANALYSES.items():
        n = per_analysis if analysis != "eval_loss" else max(1, per_analysis)
        slope = rng.normal(0, 2, size=(n, 1))
        values = 10.0 + slope * u + rng.normal(0, noise, size=(n, len(steps)))
        for event in events:
            if analysis not in event.analyses:
                continue
            chosen = rng.choice(n, size=int(round(event.share * n)), replace=False)
            middle = (u[event.index] + u[event.index + 1]) / 2
            width = (u[event.index + 1] - u[event.index]) / 20
            jump = event.size * noise * 0.5 * (1 + np.tanh((u - middle) / (2 * width)))  # a sigmoid, without overflow
            values[chosen] += np.sign(rng.normal(size=(len(chosen), 1))) * jump
            truth.append((event.index, int(steps[event.index]), analysis, sorted(int(c) for c in chosen)))
        layer, head = np.divmod(np.arange(n), 8)
        blocks[analysis] = (component, stat, layer, head, values)
    store = Store.create(path, fsync=False)
    rows = 0
    for j, step in enumerate(steps):
        for analysis, (component, stat, layer, head, values) in blocks.items():
            scalars = pd.DataFrame({"component": component, "layer": layer, "head": head, "stat": stat,
                                    "value": values[:, j]})  # fmt: skip
            store.write_result(model, int(step), analysis, scalars)
            rows += len(scalars)
    return {"steps": steps, "events": truth, "rows": rows, "model": model}
